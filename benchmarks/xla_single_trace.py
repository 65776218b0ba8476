"""First compiled call: the sweep's traced graph compiled by XLA (what `execution.run` does) against tracing the
sweep a second time under `jit_compile=True` (what it did before session 24).

    python benchmarks/xla_single_trace.py                    # MAF, D = 16, 16 points, 3 rounds
    python benchmarks/xla_single_trace.py --flow realnvp --dim 64 --rounds 2

Each measurement is a fresh process (the first call includes tracing and compiling), the two variants
alternating; it prints the first call of `tf.function(log_prob_hessian)` and the median of 30 calls after it.
"""

import argparse
import subprocess
import sys

_CHILD = r"""
import sys, time
import numpy as np, tensorflow as tf
sys.path.insert(0, {bench!r})
import harness, tfp_hessian
from tfp_hessian import execution

def retrace(sweep, z, num_points, size, splittable=False):
  if tf.executing_eagerly():
    return sweep(z)
  traced = tf.function(sweep, autograph=False).get_concrete_function(z)
  if execution.plan(traced.graph, num_points, size).xla:
    return tf.function(sweep, autograph=False, jit_compile=True)(z)
  return traced(z)

if {variant!r} == "retrace":
  execution.run = retrace
flow = harness.build_flow({flow!r}, {dim}, tf.float32).distribution
z = tf.constant(flow.sample({points}, seed=(1, 2)).numpy())
f = tf.function(lambda z: tfp_hessian.log_prob_hessian(flow, z), autograph=False)
start = time.perf_counter(); f(z).numpy(); first = time.perf_counter() - start
times = []
for _ in range(30):
  start = time.perf_counter(); f(z).numpy(); times.append(time.perf_counter() - start)
print(f"{{first:.2f}} {{1e3 * np.median(times):.2f}}")
"""


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--flow", default="maf")
  parser.add_argument("--dim", type=int, default=16)
  parser.add_argument("--points", type=int, default=16)
  parser.add_argument("--rounds", type=int, default=3)
  args = parser.parse_args()
  bench = str(__import__("pathlib").Path(__file__).resolve().parent)
  print(f"# {' '.join(sys.argv)}\n| variant | first call s | median ms |\n|---|---:|---:|")
  for _ in range(args.rounds):
    for variant in ("traced graph compiled", "retrace"):
      code = _CHILD.format(bench=bench, variant=variant, flow=args.flow, dim=args.dim, points=args.points)
      out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                           env={**__import__("os").environ, "TF_CPP_MIN_LOG_LEVEL": "3"}).stdout.split()
      print(f"| {variant} | {out[-2]} | {out[-1]} |", flush=True)


if __name__ == "__main__":
  main()
