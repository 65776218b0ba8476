"""Permutations as a frame (`Pullback.in_frame`) against applying each where it occurs: the default call, A/B.

    python benchmarks/permutation_frames.py maf 128 1024 [--calls 3] [--dtype float32]

Traces the default call `log_prob_hessian` in a `tf.function` twice on the same bench flow and points: "new" as
the package sweeps (frames), "old" with `pull_back` applying every layer's pullback, a `Permute`'s gathers
included, in order. Calls interleaved; medians in ms, and the largest difference of the Hessians relative to
their largest entry.
"""

import argparse
import time

import numpy as np
import tensorflow as tf

import tfp_hessian
from tfp_hessian import pullback, sweep

import harness  # benchmarks/harness/, beside this script


def _pull_back_in_order(layers, grad, hess):
  for layer in reversed(layers):
    grad, hess = layer(grad, hess)
  return grad, hess


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("flow", choices=sorted(harness.FLOWS))
  parser.add_argument("dim", type=int)
  parser.add_argument("num_points", type=int)
  parser.add_argument("--dtype", default="float32", choices=["float32", "float64"])
  parser.add_argument("--calls", type=int, default=3)
  args = parser.parse_args()
  flow = harness.build_flow(args.flow, args.dim, tf.as_dtype(args.dtype))
  z, kwargs = harness.sample_points(flow, args.num_points)
  distribution = flow.distribution
  frames = pullback.pull_back
  functions = {}
  for label, pull_back in (("old", _pull_back_in_order), ("new", frames)):
    pullback.pull_back = sweep.pull_back = pull_back  # read when the sweep is traced
    function = tf.function(lambda z: tfp_hessian.log_prob_hessian(distribution, z, **kwargs), autograph=False)
    start = time.perf_counter()
    function(z).numpy()
    print(f"{label}: first call {time.perf_counter() - start:.1f} s", flush=True)
    functions[label] = function
  pullback.pull_back = sweep.pull_back = frames
  old, new = functions["old"](z).numpy(), functions["new"](z).numpy()
  medians = harness.interleaved_medians(functions, z, args.calls, np.random.default_rng(0))
  ms = {label: 1e3 * seconds for label, seconds in medians.items()}
  print(f"{args.flow} D={args.dim} N={args.num_points} {args.dtype}: old {ms['old']:.1f} ms, new {ms['new']:.1f} ms, "
        f"old/new {ms['old'] / ms['new']:.2f}x; max |new - old| / max |old| "
        f"{np.max(np.abs(new - old)) / np.max(np.abs(old)):.1e}")


if __name__ == "__main__":
  main()
