"""Where XLA pays: the sweep compiled against the sweep as traced, by flow, D and number of points N.

    python benchmarks/execution_choice.py                       # the table behind execution._MAX_ELEMENTS
    python benchmarks/execution_choice.py --flows maf --dims 64 --points 16 1024 --rounds 9

Each cell times three `tf.function`s of `log_prob_hessian` on the same points, interleaved round-robin:
the graph as traced (`execution.forced(False)`), the sweep XLA-compiled (`execution.forced(True)`), and the
default call (whatever `execution.plan` chose, printed). Medians of `--rounds` calls after two warm-up calls;
the first call (tracing and compiling) is reported apart. Writes JSON with `--json`.
"""

import argparse
import json
import platform
import shlex
import sys
import time

import numpy as np
import tensorflow as tf

import tfp_hessian

import harness  # benchmarks/harness/, beside this script


def _cell(name, dim, points, dtype, rounds):
  made = harness.build_flow(name, dim, dtype)
  flow = made.distribution
  z = tf.constant(flow.sample(points, seed=(1, 2)).numpy())
  functions = {"graph": harness.ours(flow, xla=False), "xla": harness.ours(flow, xla=True),
               "default": harness.ours(flow)}
  first, hessians = harness.first_calls(functions, z)
  scale = np.max(np.abs(hessians["graph"]))
  difference = max(float(np.max(np.abs(h - hessians["graph"])) / scale) for h in hessians.values())
  seconds = {label: [] for label in functions}
  for _ in range(rounds):
    for label, function in functions.items():
      start = time.perf_counter()
      function(z).numpy()
      seconds[label].append(time.perf_counter() - start)
  medians = {label: float(np.median(values)) for label, values in seconds.items()}
  return {"flow": name, "dim": dim, "points": points, "dtype": dtype.name,
          "plan": tfp_hessian.execution_plan(flow, z)._asdict(), "median_ms": {k: v * 1e3 for k, v in medians.items()},
          "first_call_s": first, "graph_over_xla": float(medians["graph"] / medians["xla"]),
          "max_relative_difference": difference}


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--flows", nargs="+", default=["realnvp", "maf", "elementwise_affine"])
  parser.add_argument("--dims", nargs="+", type=int, default=[16, 64, 128])
  parser.add_argument("--points", nargs="+", type=int, default=[16, 64, 256, 1024])
  parser.add_argument("--dtypes", nargs="+", default=["float32"])
  parser.add_argument("--rounds", type=int, default=7)
  parser.add_argument("--json", default=None)
  args = parser.parse_args(argv)
  command = "python benchmarks/execution_choice.py " + shlex.join(sys.argv[1:] if argv is None else argv)
  print(f"# {command}\n# {platform.node()}, load average {' '.join(f'{x:.1f}' for x in __import__('os').getloadavg())}")
  print("| flow | D | N | dtype | N·D² | graph ms | XLA ms | graph / XLA | default chose | first call graph / XLA s |")
  print("|---|---:|---:|---|---:|---:|---:|---:|---|---|")
  cells = []
  for dtype in args.dtypes:
    for name in args.flows:
      for dim in args.dims:
        for points in args.points:
          cell = _cell(name, dim, points, tf.as_dtype(dtype), args.rounds)
          cells.append(cell)
          ms = cell["median_ms"]
          print(f"| {name} | {dim} | {points} | {dtype} | {points * dim * dim} | {ms['graph']:.2f} | {ms['xla']:.2f} | "
                f"{cell['graph_over_xla']:.2f} | {'XLA' if cell['plan']['xla'] else 'graph'} | "
                f"{cell['first_call_s']['graph']:.1f} / {cell['first_call_s']['xla']:.1f} |", flush=True)
  if args.json:
    with open(args.json, "w") as file:
      json.dump({"command": command, "load_average": __import__("os").getloadavg(), "cells": cells}, file, indent=1)


if __name__ == "__main__":
  main()
