"""The autodiff fallback's forward direction: solves that see a triangular Jacobian at run time, against general ones.

    python benchmarks/fallback_solves.py [--flows research_flow reversed_shear rotated_shear] [--dims 16]
        [--points 16 1024] [--calls 21] [--alternatives tapes_xla fwd_rev_xla log_prob]

Where a user-written layer's inverse loops over the coordinates (`examples.Shear`) the fallback differentiates its
forward map and runs the result backwards, three solves with the `[D, D]` Jacobian per point
(`AutodiffPullback.invert`). Nothing declares that Jacobian's structure, but a layer whose inverse is a loop is
mostly autoregressive, so triangular; the solves see it at run time from the Jacobians' exact zeros
(`pullback._adjoint_solver(..., triangle="check")`) and take triangular solves where they are all lower or upper
triangular. "new" is the default call; "old" the same call traced with general solves (as before session 37). Flows:

- `research_flow`: `tfp_hessian.examples.research_flow` (3 `Shear`s, lower triangular);
- `reversed_shear`: `examples.ReversedShear`, a `Shear` on the coordinates reversed (upper triangular);
- `rotated_shear`: `examples.RotatedShear`, a rotation after a `Shear`: a dense Jacobian, where the check costs and
  gains nothing.

Calls interleaved round-robin (`harness`), medians in ms, old/new, and how far the two Hessians are apart;
`--alternatives` adds methods of the bench (`harness.METHODS`).
"""

import argparse

import numpy as np
import tensorflow as tf
import tensorflow_probability as tfp

from tfp_hessian import examples, pullback

import harness  # benchmarks/harness/, beside this script

tfd = tfp.distributions


def _over_gaussian(bijector, dim):
  return tfd.TransformedDistribution(tfd.MultivariateNormalDiag(tf.zeros(dim)), bijector)


def _weights(rng, dim):
  return tf.constant(rng.normal(size=(dim, dim)) * 0.3, tf.float32)


FLOWS = {
    "research_flow": lambda dim, rng: examples.research_flow(dim=dim),
    "reversed_shear": lambda dim, rng: _over_gaussian(examples.ReversedShear(_weights(rng, dim)), dim),
    "rotated_shear": lambda dim, rng: _over_gaussian(examples.RotatedShear(_weights(rng, dim), tf.constant(
        np.linalg.qr(rng.normal(size=(dim, dim)))[0], tf.float32)), dim),
}


def _general_solves(pull_forward):
  def general(*args, triangle=None, **kwargs):
    return pull_forward(*args, triangle=None if triangle == "check" else triangle, **kwargs)
  return general


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--flows", nargs="+", default=list(FLOWS), choices=list(FLOWS))
  parser.add_argument("--dims", nargs="+", type=int, default=[16])
  parser.add_argument("--points", nargs="+", type=int, default=[16, 1024])
  parser.add_argument("--calls", type=int, default=21)
  parser.add_argument("--alternatives", nargs="*", default=[], choices=sorted(harness.METHODS))
  args = parser.parse_args()
  rng = np.random.default_rng(0)
  for name in args.flows:
    for dim in args.dims:
      flow = FLOWS[name](dim, np.random.default_rng(1))
      for num_points in args.points:
        z = tf.constant(flow.sample(num_points, seed=(1, 2)).numpy())
        pull_forward = pullback._pull_forward  # pylint: disable=protected-access
        pullback._pull_forward = _general_solves(pull_forward)  # pylint: disable=protected-access
        try:
          old = harness.ours(flow)
          old(z)  # traced now, with general solves
        finally:
          pullback._pull_forward = pull_forward  # pylint: disable=protected-access
        functions = {"old": old, "new": harness.ours(flow)}
        functions.update({method: harness.METHODS[method].make(flow, {}) for method in args.alternatives})
        first, outputs = harness.first_calls(functions, z)
        ms = {key: 1e3 * value for key, value in harness.interleaved_medians(functions, z, args.calls, rng).items()}
        apart = np.max(np.abs(outputs["new"] - outputs["old"])) / np.max(np.abs(outputs["old"]))
        times = ", ".join(f"{key} {value:.2f} ms" for key, value in ms.items())
        print(f"{name} D={dim} N={num_points}: {times}; old/new {ms['old'] / ms['new']:.2f}x; first call new "
              f"{first['new']:.1f} s; max |new - old| / max |old| {apart:.1e}", flush=True)


if __name__ == "__main__":
  main()
