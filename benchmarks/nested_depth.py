"""Nested `TransformedDistribution`s: TFP's `batch_shape` against the sweep's, and the first calls, by depth.

Builds `depth` distributions, each over the last, one `Shift`, `Scale` or `SinhArcsinh` layer each (as the
deeply nested flow of `tests/test_flows.py`, without its batch), over a diagonal normal at D = 5, float64, and
times once each: TFP's `flow.batch_shape` (its cache never hits, so every access infers it anew),
`sweep.batch_shape`, the first eager `log_prob_and_derivatives` (op by op), the second (traced and compiled), and
nested tapes' Hessian; with `--sample`, TFP's `flow.sample` too.

    python benchmarks/nested_depth.py --depths 4 8 12
"""

import argparse
import time

import numpy as np


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
  parser.add_argument("--depths", type=int, nargs="+", default=[4, 8, 12])
  parser.add_argument("--sample", action="store_true")
  args = parser.parse_args(argv)
  import tensorflow as tf  # pylint: disable=import-outside-toplevel
  import tensorflow_probability as tfp  # pylint: disable=import-outside-toplevel

  import tfp_hessian  # pylint: disable=import-outside-toplevel
  from tfp_hessian import reference, sweep  # pylint: disable=import-outside-toplevel
  tfb, tfd = tfp.bijectors, tfp.distributions
  dim = 5

  def timed(function):
    start = time.perf_counter()
    function()
    return time.perf_counter() - start

  for depth in args.depths:
    rng = np.random.default_rng(depth)
    vector = lambda low, high: tf.constant(rng.uniform(low, high, dim))  # noqa: E731
    layers = [lambda: tfb.Shift(vector(-1., 1.)), lambda: tfb.Scale(vector(0.7, 1.3)),
              lambda: tfb.SinhArcsinh(vector(-.5, .5), vector(.8, 1.2))]
    base = tfd.MultivariateNormalDiag(tf.zeros(dim, tf.float64))
    flow, z = base, base.sample(3, seed=(1, 2))
    for level in range(depth):
      bijector = layers[level % 3]()
      flow, z = tfd.TransformedDistribution(flow, bijector), bijector.forward(z)
    z = tf.constant(z.numpy())
    row = {"TFP batch_shape": timed(lambda: flow.batch_shape),
           "sweep.batch_shape": timed(lambda: sweep.batch_shape(flow)),
           "ours, first call": timed(lambda: tfp_hessian.log_prob_and_derivatives(flow, z)),
           "ours, second call (traced)": timed(lambda: tfp_hessian.log_prob_and_derivatives(flow, z)),
           "nested tapes": timed(lambda: reference.tape_hessian(flow, z))}
    if args.sample:
      row["TFP sample"] = timed(lambda: flow.sample(3, seed=(1, 2)))
    print(f"depth {depth}: " + ", ".join(f"{name} {seconds:.3g} s" for name, seconds in row.items()), flush=True)


if __name__ == "__main__":
  main()
