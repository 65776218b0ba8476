"""An IAF's pullback by triangular solves against general ones: the default call, old and new, in one process.

    python benchmarks/iaf_solves.py [--dims 16 64] [--points 16 1024] [--calls 21]

The flow is the bench's 4-layer MAF (`harness.build_flow("maf", D)`) with every `MaskedAutoregressiveFlow` inverted:
an IAF, whose pullback is the MAF layer's run backwards (`ConditionedAffinePullback.invert`), three solves with
the layer's `[D, D]` Jacobian per point. The network's masks make that Jacobian triangular (TFP's default
`input_order="left-to-right"`), so the solves are triangular ("new"); "old" traces the same call with the
triangle unknown (`autoregressive._jacobian_triangle` giving None: general solves, as before session 36). Beside
them TF's own `log_prob`; calls interleaved, medians in ms, and how far the two Hessians are apart.
"""

import argparse

import numpy as np
import tensorflow as tf
import tensorflow_probability as tfp

from tfp_hessian.bijectors import autoregressive

import harness  # benchmarks/harness/, beside this script

tfb, tfd = tfp.bijectors, tfp.distributions


def iaf(dim, dtype=tf.float32):
  """The bench's MAF over `R^dim` with each `MaskedAutoregressiveFlow` inverted (the same networks and weights)."""
  maf = harness.build_flow("maf", dim, dtype).distribution
  layers = [tfb.Invert(b) if isinstance(b, tfb.MaskedAutoregressiveFlow) else b for b in maf.bijector.bijectors]
  return tfd.TransformedDistribution(maf.distribution, tfb.Chain(layers))


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--dims", nargs="+", type=int, default=[16, 64])
  parser.add_argument("--points", nargs="+", type=int, default=[16, 1024])
  parser.add_argument("--calls", type=int, default=21)
  args = parser.parse_args()
  rng = np.random.default_rng(0)
  for dim in args.dims:
    flow = iaf(dim)
    for num_points in args.points:
      z = tf.constant(flow.sample(num_points, seed=(1, 2)).numpy())
      triangle = autoregressive._jacobian_triangle  # pylint: disable=protected-access
      autoregressive._jacobian_triangle = lambda network, size: None  # pylint: disable=protected-access
      try:
        old = harness.ours(flow)
        old(z)  # traced now, with the triangle unknown
      finally:
        autoregressive._jacobian_triangle = triangle  # pylint: disable=protected-access
      functions = {"log_prob": harness.METHODS["log_prob"].make(flow, {}), "old": old, "new": harness.ours(flow)}
      first, outputs = harness.first_calls(functions, z)
      ms = {key: 1e3 * value for key, value in harness.interleaved_medians(functions, z, args.calls, rng).items()}
      apart = np.max(np.abs(outputs["new"] - outputs["old"])) / np.max(np.abs(outputs["old"]))
      print(f"IAF D={dim} N={num_points}: " + ", ".join(f"{key} {value:.2f} ms" for key, value in ms.items())
            + f"; old/new {ms['old'] / ms['new']:.2f}x; first call new {first['new']:.1f} s; "
            f"max |new - old| / max |old| {apart:.1e}", flush=True)


if __name__ == "__main__":
  main()
