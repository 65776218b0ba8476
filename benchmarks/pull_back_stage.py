"""The pull-back compiled alone (`execution.pull_back`) against the graph and the whole sweep compiled.

    python benchmarks/pull_back_stage.py --flow elementwise_affine --dims 2 16 32 64 128 --points 16 64 256 1024

For flows whose sweep is not compiled whole (the elementwise + affine flow: TFP's triangular solves), four
`tf.function`s of `log_prob_hessian` on the same points, timed interleaved round-robin (medians of `--rounds`
rounds, each of enough calls to last ~0.1 s): the graph as traced (`execution.forced(False)`), the pull-back
alone compiled (`forced(False, pull_back_xla=True)`), the default call, and the whole sweep compiled
(`forced(True)`). Ratios are the graph's time over each; `diff` is the largest difference from the graph's
Hessian relative to its largest entry; `first` is the first call (tracing and compiling).
"""

import argparse
import statistics
import time

import numpy as np
import tensorflow as tf

import tfp_hessian

import harness  # benchmarks/harness/, beside this script

# `execution.forced`'s arguments per variant (none: the default call).
MODES = {"graph": dict(xla=False, pull_back_xla=False), "pull-back": dict(xla=False, pull_back_xla=True), "default": {},
         "whole": dict(xla=True, pull_back_xla=True)}


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--flow", default="elementwise_affine", choices=sorted(harness.FLOWS))
  parser.add_argument("--dims", nargs="+", type=int, default=[2, 16, 32, 64, 128])
  parser.add_argument("--points", nargs="+", type=int, default=[16, 64, 256, 1024])
  parser.add_argument("--dtype", default="float32")
  parser.add_argument("--rounds", type=int, default=7)
  args = parser.parse_args()
  dtype = tf.as_dtype(args.dtype)
  for dim in args.dims:
    for points in args.points:
      flow = harness.build_flow(args.flow, dim, dtype).distribution
      z = tf.constant(flow.sample(points, seed=(1, 2)).numpy())
      functions, first, hessians = {}, {}, {}
      for mode in MODES:
        functions[mode] = harness.ours(flow, **MODES[mode])
        start = time.perf_counter()
        hessians[mode] = functions[mode](z).numpy()
        first[mode] = time.perf_counter() - start
      calls = min(100, max(2, int(4000 / (points * dim * dim / 64))))
      seconds = {mode: [] for mode in MODES}
      for _ in range(args.rounds):
        for mode, function in functions.items():
          start = time.perf_counter()
          for _ in range(calls):
            result = function(z)
          result.numpy()
          seconds[mode].append((time.perf_counter() - start) / calls)
      median = {mode: statistics.median(values) for mode, values in seconds.items()}
      scale = np.max(np.abs(hessians["graph"]))
      print(f"{args.flow} {dtype.name} D={dim} N={points} default: {tfp_hessian.execution_plan(flow, z).reason}")
      print("  " + "  ".join(
          f"{mode} {median[mode] * 1e3:.2f} ms ({median['graph'] / median[mode]:.2f}x, first {first[mode]:.1f} s, "
          f"diff {np.max(np.abs(hessians[mode] - hessians['graph'])) / scale:.0e})" for mode in MODES), flush=True)


if __name__ == "__main__":
  main()
