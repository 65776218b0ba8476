"""Which direction the autodiff fallback should differentiate a user-written bijector in, measured.

    python benchmarks/fallback_direction.py [--dims 4 8 16 32] [--points 16 1024] [--dtype float32]

The fallback serves a bijector of vector events without a rule by nested tapes on one layer. It can take them on
the inverse at `y` (the default) or on the forward map at `x = inverse(y)`, the result then run backwards by the
second-order inverse-function theorem (three solves with the `[D, D]` Jacobian per point). It takes the forward map
where the inverse's graph loops, or has `INVERSE_COST_RATIO` times the forward's ops
(`tfp_hessian.bijectors.autodiff.forward_is_cheaper`). This script times both directions, forced, against the
default call in one process, on flows whose fallback layers are `examples.Shear` (a loop over the coordinates to
invert, ~14 ops per coordinate with the log-det; its forward map is a matvec and a tanh, ~37 ops):

- `research_flow`: 3 MAF stages with a `Shear` each, BatchNormalization, a box map (`tfp_hessian.examples`);
- `shears`: 4 `Shear`s with a `Permute` between each (all fallback: in the inverse direction one tape serves the
  whole chain, in the forward direction each layer is inverted alone).

Printed per flow, D and N: the op counts (inverse and forward, log-dets included) of one `Shear`, the median time of
each direction and of the default call inside `tf.function` and of TF's own `log_prob`, each direction's first call
(trace included), and how far the two directions' Hessians are apart. Medians of interleaved rounds, one call each
per round.
"""

import argparse
import statistics
import time

import numpy as np
import tensorflow as tf
import tensorflow_probability as tfp

import tfp_hessian
from tfp_hessian import examples
from tfp_hessian.bijectors import autodiff

from real_flows import shears  # benchmarks/, beside this script: its "shears" flow

tfb, tfd = tfp.bijectors, tfp.distributions


FLOWS = {"research_flow": lambda dim, dtype: examples.research_flow(dim=dim, dtype=dtype),
         "shears": lambda dim, dtype: shears(dim, dtype)}


def _op_counts(flow, z):
  """`(inverse ops, forward ops)` of the flow's first `Shear`, log-dets included, as the fallback counts them."""
  shear = next(b for b in flow.bijector.bijectors if isinstance(b, examples.Shear))
  inverse = autodiff._graph_cost(  # pylint: disable=protected-access
      lambda y: (shear.inverse(y), shear.inverse_log_det_jacobian(y, event_ndims=1)), z)
  forward = autodiff._graph_cost(  # pylint: disable=protected-access
      lambda x: (shear.forward(x), shear.forward_log_det_jacobian(x, event_ndims=1)), z)
  return inverse[0], forward[0]


def _direction_forced(choice):
  """A `tf.function` of the default call with the fallback's direction for `Shear`s forced (None: the library's
  choice); other fallback layers (the box map) keep the library's choice."""
  chosen = autodiff.forward_is_cheaper

  def forced(bijector, *args):
    return choice if isinstance(bijector, examples.Shear) else chosen(bijector, *args)

  def call(flow, z):
    autodiff.forward_is_cheaper = chosen if choice is None else forced
    try:
      return tfp_hessian.log_prob_hessian(flow, z)
    finally:
      autodiff.forward_is_cheaper = chosen

  return tf.function(call)


def measure(name, dim, num_points, dtype, rounds):
  flow = FLOWS[name](dim, dtype)
  z = tf.constant(flow.sample(num_points, seed=(0, 7)).numpy())
  methods = {"inverse": _direction_forced(False), "forward": _direction_forced(True),
             "default": _direction_forced(None), "log_prob": tf.function(lambda flow, z: flow.log_prob(z))}
  first = {}
  for method, fn in methods.items():
    start = time.perf_counter()
    tf.nest.map_structure(lambda t: t.numpy(), fn(flow, z))
    first[method] = time.perf_counter() - start
  scale = np.max(np.abs(methods["inverse"](flow, z).numpy()))
  difference = np.max(np.abs(methods["forward"](flow, z).numpy() - methods["inverse"](flow, z).numpy())) / scale
  times = {method: [] for method in methods}
  for _ in range(rounds):
    for method, fn in methods.items():
      start = time.perf_counter()
      tf.nest.map_structure(lambda t: t.numpy(), fn(flow, z))
      times[method].append(time.perf_counter() - start)
  median = {method: statistics.median(values) * 1e3 for method, values in times.items()}
  inverse_ops, forward_ops = _op_counts(flow, z)
  print(f"| {name} | {dim} | {num_points} | {inverse_ops} / {forward_ops} | {median['inverse']:.2f} | "
        f"{median['forward']:.2f} | {median['inverse'] / median['forward']:.2f}× | {median['default']:.2f} | "
        f"{median['log_prob']:.2f} | {first['inverse']:.1f} / {first['forward']:.1f} s | {difference:.1e} |",
        flush=True)


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--flows", nargs="+", default=list(FLOWS), choices=list(FLOWS))
  parser.add_argument("--dims", nargs="+", type=int, default=[4, 8, 16, 32])
  parser.add_argument("--points", nargs="+", type=int, default=[16, 1024])
  parser.add_argument("--dtype", default="float32", choices=["float32", "float64"])
  parser.add_argument("--rounds", type=int, default=15)
  args = parser.parse_args()
  print(f"INVERSE_COST_RATIO = {autodiff.INVERSE_COST_RATIO}, {args.dtype}")
  print("| flow | D | N | Shear ops inverse / forward | inverse ms | forward ms | inverse / forward | default ms | "
        "log_prob ms | first call inverse / forward | max |forward − inverse| / max |H| |")
  print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|")
  for name in args.flows:
    for dim in args.dims:
      for num_points in args.points:
        measure(name, dim, num_points, tf.as_dtype(args.dtype), args.rounds)


if __name__ == "__main__":
  main()
