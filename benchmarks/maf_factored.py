"""The MAF pullback with its Jacobian factored through the read-out layer, against the dense one, side by side.

`ConditionedAffinePullback` keeps an autoregressive layer's Jacobian factored (`O(D²H)` per point) when the
MADE's last hidden layer is narrower than D, and forms it densely (`O(D³)`) otherwise. This script traces the
benchmark's 4-layer MAF (hidden layers of 64) three ways, each its own `tf.function`, and times them
interleaved call by call, with nested tapes beside them:

- `dense`: the dense pullback forced (`_readout` answers None while tracing);
- `factored`: the factored pullback forced, whatever H and D;
- `auto`: what `log_prob_hessian` does (factored only where H < D).

    python benchmarks/maf_factored.py [--dim 64 128] [--dtype float32] [--rounds 40]
"""

import argparse
import time

import numpy as np
import tensorflow as tf

from tfp_hessian import log_prob_hessian
from tfp_hessian.pullback import ConditionedAffinePullback

import harness  # benchmarks/harness/, beside this script


def _forced_factored(pullback):
  if pullback._outputs.source is not None:  # pylint: disable=protected-access
    return None
  return getattr(pullback._conditioner, "linear_readout", None)  # pylint: disable=protected-access


def _traced(distribution, z, readout):
  """`log_prob_hessian` as a `tf.function`, traced (once, now) with `readout` as the pullback's choice."""
  original = ConditionedAffinePullback._readout  # pylint: disable=protected-access
  ConditionedAffinePullback._readout = readout if readout is not None else original
  try:
    function = tf.function(lambda points: log_prob_hessian(distribution, points), autograph=False)
    function.get_concrete_function(z)
  finally:
    ConditionedAffinePullback._readout = original
  return function


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--dim", type=int, nargs="+", default=[64, 128])
  parser.add_argument("--dtype", default="float32", choices=["float32", "float64"])
  parser.add_argument("--num-points", type=int, default=16)
  parser.add_argument("--rounds", type=int, default=40)
  args = parser.parse_args()
  for dim in args.dim:
    flow = harness.build_flow("maf", dim, tf.as_dtype(args.dtype))
    z = flow.distribution.sample(args.num_points, seed=1)
    calls = {
        "dense": _traced(flow.distribution, z, lambda pullback: None),
        "factored": _traced(flow.distribution, z, _forced_factored),
        "auto": _traced(flow.distribution, z, None),
        "tapes": harness.METHODS["tapes"].make(flow.distribution, {}),
    }
    results = {name: call(z).numpy() for name, call in calls.items()}
    scale = np.max(np.abs(results["tapes"]))
    for _ in range(3):
      for call in calls.values():
        call(z)
    times = {name: [] for name in calls}
    rng = np.random.default_rng(0)
    for _ in range(args.rounds):
      for name in rng.permutation(list(calls)):
        start = time.perf_counter()
        calls[name](z)
        times[name].append(time.perf_counter() - start)
    median = {name: 1e3 * np.median(values) for name, values in times.items()}
    disagreement = max(np.max(np.abs(results[name] - results["tapes"])) / scale for name in calls)
    print(f"MAF D = {dim}, H = {harness.flows.HIDDEN_UNITS[-1]}, N = {args.num_points}, {args.dtype}: "
          + ", ".join(f"{name} {median[name]:.2f} ms" for name in calls)
          + f"; dense / factored = {median['dense'] / median['factored']:.2f}"
          + f"; worst disagreement with tapes {disagreement:.1e} of the largest entry")


if __name__ == "__main__":
  main()
