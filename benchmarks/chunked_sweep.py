"""Chunks of points: a compiled sweep called on chunks of the points, side by side, against one call on all.

    python benchmarks/chunked_sweep.py                                   # the table behind execution.chunk_count
    python benchmarks/chunked_sweep.py --flows maf --dims 64 --points 1024 --chunks 1 16 32 --sequential
    python benchmarks/chunked_sweep.py --flows elementwise_affine --dims 64 --points 1024 --chunks 8 16 32 --split-calls

Each cell times `tf.function`s of `log_prob_hessian` on the same points, interleaved round-robin (`harness`): the
sweep compiled whole and forced into each of `--chunks` chunk counts (`execution.forced(True, chunks=k)`, as
`execution.run` issues them: TensorFlow's executor runs the chunks' calls side by side), and the default call (the
plan's choice, printed). With `--sequential`, also each count as calls of the sweep compiled for one chunk made to
run one after another (every call waits for the one before), which separates the cores' parallelism from the
cache's share of the gain. With `--split-calls`, also each count as that many default calls on slices of the points
(`split=k`, side by side; each slice's own plan): chunks where the plan leaves the sweep as traced, which
`execution.run` does not make. Medians of `--rounds` calls after two warm-up calls, and the first call (tracing and
compiling) apart. Writes JSON with `--json`.
"""

import argparse
import json
import platform
import shlex
import sys

import numpy as np
import tensorflow as tf

import tfp_hessian
from tfp_hessian import execution

import harness  # benchmarks/harness/, beside this script


def _sliced(flow, kwargs, chunks, one_after_another):
  """`chunks` calls of `log_prob_hessian` on slices of the points (per-point kwargs sliced alike): of the sweep
  compiled for one chunk, made to run one after another, or (not `one_after_another`) of the default call, side by
  side."""

  def call(z):
    size = -(-z.shape[0] // chunks)
    results = []
    for start in range(0, z.shape[0], size):
      part = z[start:start + size]
      part_kwargs = tf.nest.map_structure(
          lambda c, start=start: c[start:start + size] if c.shape.rank == 2 else c, kwargs)
      if not one_after_another:
        results.append(tfp_hessian.log_prob_hessian(flow, part, **part_kwargs))
        continue
      if results:
        with tf.control_dependencies([results[-1]]):
          part = tf.identity(part)
      with execution.forced(True, chunks=1):
        results.append(tfp_hessian.log_prob_hessian(flow, part, **part_kwargs))
    return tf.concat(results, 0)

  return tf.function(call, autograph=False)


def _cell(name, dim, points, dtype, counts, sequential, split_calls, rounds):
  made = harness.build_flow(name, dim, dtype)
  flow = made.distribution
  z, kwargs = harness.sample_points(made, points)
  functions = {f"chunks={k}": harness.ours(flow, kwargs, xla=True, chunks=k) for k in counts}
  if sequential:
    functions.update({f"sequential={k}": _sliced(flow, kwargs, k, True) for k in counts if k > 1})
  if split_calls:
    functions.update({f"split={k}": _sliced(flow, kwargs, k, False) for k in counts if k > 1})
  functions["default"] = tf.function(lambda z: tfp_hessian.log_prob_hessian(flow, z, **kwargs), autograph=False)
  plan = tfp_hessian.execution_plan(flow, z, **kwargs)
  first, hessians = harness.first_calls(functions, z)
  whole = hessians[f"chunks={counts[0]}"]
  difference = max(float(np.max(np.abs(h - whole)) / np.max(np.abs(whole))) for h in hessians.values())
  medians = harness.interleaved_medians(functions, z, rounds, np.random.default_rng(0))
  return {"flow": name, "dim": dim, "points": points, "dtype": dtype.name, "plan": plan.reason,
          "default_chunks": plan.chunks, "median_ms": {k: 1e3 * v for k, v in medians.items()},
          "first_call_s": first, "max_rel_difference": difference}


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--flows", nargs="+", default=["maf", "realnvp", "conditional_maf"])
  parser.add_argument("--dims", nargs="+", type=int, default=[16, 64, 128])
  parser.add_argument("--points", nargs="+", type=int, default=[64, 256, 1024])
  parser.add_argument("--chunks", nargs="+", type=int, default=[1, 2, 4, 8, 16, 32, 64])
  parser.add_argument("--dtype", default="float32", choices=["float32", "float64"])
  parser.add_argument("--sequential", action="store_true", help="also time the chunks one after another")
  parser.add_argument("--split-calls", action="store_true", help="also time default calls on slices, side by side")
  parser.add_argument("--rounds", type=int, default=9)
  parser.add_argument("--json")
  args = parser.parse_args()
  cells = []
  for name in args.flows:
    for dim in args.dims:
      for points in args.points:
        counts = [k for k in args.chunks if k <= points]
        cell = _cell(name, dim, points, tf.as_dtype(args.dtype), counts, args.sequential, args.split_calls,
                     args.rounds)
        cells.append(cell)
        best = min(cell["median_ms"], key=cell["median_ms"].get)
        whole = cell["median_ms"][f"chunks={counts[0]}"]
        times = "  ".join(f"{k} {v:.3g}" for k, v in cell["median_ms"].items())
        print(f"{name} D={dim} N={points}: {times} ms | best {best}, default {cell['default_chunks']} chunks "
              f"{whole / cell['median_ms']['default']:.2f}x whole | diff {cell['max_rel_difference']:.1e}",
              flush=True)
  if args.json:
    with open(args.json, "w") as f:
      json.dump({"command": "python " + " ".join(shlex.quote(a) for a in sys.argv), "machine": platform.node(),
                 "tensorflow": tf.__version__, "cells": cells}, f, indent=1)


if __name__ == "__main__":
  main()
