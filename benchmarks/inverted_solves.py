"""Inverted MAF (IAF) and RealNVP layers, as the default call takes them against older ways: old and new in one process.

    python benchmarks/inverted_solves.py [--flows maf realnvp] [--dims 16 64] [--points 16 1024] [--calls 21]
    python benchmarks/inverted_solves.py --flows realnvp --old run-backwards --alternatives tapes tapes_xla
    python benchmarks/inverted_solves.py --solves-alone [--dims 16 64] [--points 1024 256]

A flow is the bench's 4-layer MAF or RealNVP (`harness.build_flow(name, D)`) with each `MaskedAutoregressiveFlow`
or `RealNVP` inverted. An IAF's pullback is its MAF layer's run backwards (`ConditionedAffinePullback.invert`),
three solves with the layer's `[D, D]` Jacobian per point, triangular where the MADE is autoregressive in the
coordinates' order (TFP's default `input_order="left-to-right"`). An inverted RealNVP layer is a coupling layer
itself and has a block form of its own (`InvertedCouplingPullback`, session 37), with no solve. "new" is the
default call; "old" traces the same call as an earlier session did (`--old`):

- `general-solves` (default): every layer run backwards, every solve a general one (`pullback._pull_forward`
  without its `triangle`), as before session 36;
- `run-backwards`: an inverted RealNVP layer run backwards by its triangular solves, as in session 36 (an IAF is
  then the same either way).

Beside them TF's own `log_prob`; calls interleaved, medians in ms, the first call of "new", and how far the two
Hessians are apart. `--alternatives` adds methods of the bench (`harness.METHODS`: `tapes`, `tapes_xla`, ...).

With `--solves-alone`, the inversion itself instead (`pullback._pull_forward`, its three solves and nothing else:
zero curvature), on random upper triangular `[D, D]` matrices, one per point, with and without its `triangle`, each
D paired with the number of points in the same place of `--points`.
"""

import argparse

import numpy as np
import tensorflow as tf
import tensorflow_probability as tfp

from tfp_hessian import pullback

import harness  # benchmarks/harness/, beside this script

tfb, tfd = tfp.bijectors, tfp.distributions


def inverted(name, dim, dtype=tf.float32):
  """The bench's flow `name` ("maf" or "realnvp") over `R^dim` with each of its MAF or RealNVP layers inverted (the
  same networks and weights)."""
  flow = harness.build_flow(name, dim, dtype).distribution
  layers = [tfb.Invert(b) if isinstance(b, (tfb.MaskedAutoregressiveFlow, tfb.RealNVP)) else b
            for b in flow.bijector.bijectors]
  return tfd.TransformedDistribution(flow.distribution, tfb.Chain(layers))


def _general_solves(pull_forward):
  def general(*args, triangle=None, **kwargs):
    del triangle
    return pull_forward(*args, **kwargs)
  return general


def _solves_alone(dims, points, calls, rng):
  for dim, num_points in zip(dims, points):
    matrix = tf.constant(np.triu(np.eye(dim) + 0.3 * rng.standard_normal((num_points, dim, dim))), tf.float32)
    grad = tf.constant(rng.standard_normal((num_points, dim)), tf.float32)
    hess = tf.constant(rng.standard_normal((num_points, dim, dim)), tf.float32)
    functions = {
        triangle: tf.function(lambda g, triangle=triangle: pullback._pull_forward(  # pylint: disable=protected-access
            matrix, g, hess, lambda _: tf.zeros_like(hess), transposed=True, triangle=triangle), autograph=False)
        for triangle in (None, "upper")}
    ms = {key: 1e3 * value for key, value in harness.interleaved_medians(functions, grad, calls, rng).items()}
    print(f"three solves, D={dim} N={num_points}: general {ms[None]:.2f} ms, triangular {ms['upper']:.2f} ms; "
          f"{ms[None] / ms['upper']:.2f}x", flush=True)


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--flows", nargs="+", default=["maf", "realnvp"], choices=["maf", "realnvp"])
  parser.add_argument("--dims", nargs="+", type=int, default=[16, 64])
  parser.add_argument("--points", nargs="+", type=int, default=[16, 1024])
  parser.add_argument("--calls", type=int, default=21)
  parser.add_argument("--old", default="general-solves", choices=["general-solves", "run-backwards"],
                      help="what the new call is measured against (module docstring)")
  parser.add_argument("--alternatives", nargs="*", default=[], choices=sorted(harness.METHODS))
  parser.add_argument("--solves-alone", action="store_true", help="the three solves alone (module docstring)")
  args = parser.parse_args()
  rng = np.random.default_rng(0)
  if args.solves_alone:
    _solves_alone(args.dims, args.points, args.calls, rng)
    return
  for name in args.flows:
    for dim in args.dims:
      flow = inverted(name, dim)
      for num_points in args.points:
        z = tf.constant(flow.sample(num_points, seed=(1, 2)).numpy())
        pull_forward = pullback._pull_forward  # pylint: disable=protected-access
        block_form = pullback.CouplingPullback.inverted
        pullback.CouplingPullback.inverted = pullback.Pullback.inverted  # run backwards
        if args.old == "general-solves":
          pullback._pull_forward = _general_solves(pull_forward)  # pylint: disable=protected-access
        try:
          old = harness.ours(flow)
          old(z)  # traced now, the old way
        finally:
          pullback._pull_forward = pull_forward  # pylint: disable=protected-access
          pullback.CouplingPullback.inverted = block_form
        functions = {"log_prob": harness.METHODS["log_prob"].make(flow, {}), "old": old, "new": harness.ours(flow)}
        functions.update({method: harness.METHODS[method].make(flow, {}) for method in args.alternatives})
        first, outputs = harness.first_calls(functions, z)
        ms = {key: 1e3 * value for key, value in harness.interleaved_medians(functions, z, args.calls, rng).items()}
        apart = np.max(np.abs(outputs["new"] - outputs["old"])) / np.max(np.abs(outputs["old"]))
        times = ", ".join(f"{key} {value:.2f} ms" for key, value in ms.items())
        print(f"Invert({name}) D={dim} N={num_points}: {times}; old/new {ms['old'] / ms['new']:.2f}x; first call new "
              f"{first['new']:.1f} s; max |new - old| / max |old| {apart:.1e}", flush=True)


if __name__ == "__main__":
  main()
