"""Memory kept by the process for every new flow whose Hessians were taken, against TF's own `tf.function`.

Builds `--flows` fresh 4-layer flows one after the other (Softplus, Shift, SoftClip, ScaleMatvecTriL over a
diagonal normal, D = 4, float64), drops each and collects garbage, and prints the resident memory every
`--every` flows and the growth per flow, for one of:

- `first`: the package's first eager call on each flow (op by op, nothing traced);
- `ours`: the first and second eager calls (the second traces and runs the compiled function, `compiled.py`,
  whose table drops it with the distribution);
- `log_prob`: TFP's own `log_prob` in a new `tf.function` per flow, TensorFlow's baseline.

    python benchmarks/memory_per_flow.py first; python benchmarks/memory_per_flow.py ours;
    python benchmarks/memory_per_flow.py log_prob
"""

import argparse
import gc
import os

import numpy as np


def _resident_megabytes():
  with open("/proc/self/statm", encoding="ascii") as statm:
    return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 1e6


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
  parser.add_argument("mode", choices=["first", "ours", "log_prob"])
  parser.add_argument("--flows", type=int, default=60)
  parser.add_argument("--every", type=int, default=20)
  args = parser.parse_args(argv)
  import tensorflow as tf  # pylint: disable=import-outside-toplevel
  import tensorflow_probability as tfp  # pylint: disable=import-outside-toplevel

  import tfp_hessian  # pylint: disable=import-outside-toplevel
  tfb, tfd = tfp.bijectors, tfp.distributions
  dim = 4

  def make_flow(seed):
    rng = np.random.default_rng(seed)
    scale = tf.constant(np.tril(rng.normal(size=(dim, dim))) + 3 * np.eye(dim))
    bijector = tfb.Chain([tfb.Softplus(), tfb.Shift(tf.constant(rng.normal(size=dim))),
                          tfb.SoftClip(tf.constant(-5., tf.float64), tf.constant(5., tf.float64)),
                          tfb.ScaleMatvecTriL(scale)])
    return tfd.TransformedDistribution(tfd.MultivariateNormalDiag(tf.zeros(dim, tf.float64)), bijector)

  z = tf.constant(np.random.default_rng(0).uniform(0.5, 1., size=(3, dim)))
  start = None
  for k in range(args.flows + 1):
    flow = make_flow(k)
    if args.mode == "log_prob":
      tf.function(lambda z, flow=flow: flow.log_prob(z))(z)
    else:
      for _ in range(1 if args.mode == "first" else 2):
        tfp_hessian.log_prob_and_derivatives(flow, z)
    del flow
    gc.collect()
    if k == 0:
      start = _resident_megabytes()  # after the first flow: imports and one-time caches are in
    if k % args.every == 0:
      print(f"{args.mode}: {k} flows, {_resident_megabytes():.0f} MB", flush=True)
  growth = (_resident_megabytes() - start) / args.flows
  print(f"{args.mode}: {growth:.2f} MB per flow kept (flows 1 to {args.flows}, after the first)")


if __name__ == "__main__":
  main()
