"""Peak memory and first call of the default call in chunks of points against one call on all of them, each in a
fresh process.

    python benchmarks/chunked_memory.py                                    # MAF, D = 128, 1024 points, float32
    python benchmarks/chunked_memory.py --flow realnvp --dim 64 --points 1024 --dtype float64

A child process per variant builds the bench flow and its points, makes one warm-up call of TFP's `log_prob` (so
that building the flow's layers is not counted), times the first call of `tf.function(log_prob_hessian)` (tracing,
compiling and running), then calls it three times more; it prints that first call and how much the process's peak
resident set (`ru_maxrss`) grew over the four calls: what tracing, compiling and the calls' working set took beyond
the flow and TFP's `log_prob`. `--repeats` alternates the variants that many times. `one call` runs with
`execution._CHUNK_BYTES` raised so that no chunks are made; `chunks` is the default call.
"""

import argparse
import pathlib
import subprocess
import sys

_CHILD = r"""
import resource, sys, time
sys.path.insert(0, {bench!r})
import tensorflow as tf
import harness, tfp_hessian
from tfp_hessian import execution
if {whole!r}:
  execution._CHUNK_BYTES = 2 ** 62
made = harness.build_flow({flow!r}, {dim}, tf.as_dtype({dtype!r}))
z, kwargs = harness.sample_points(made, {points})
made.distribution.log_prob(z, **kwargs).numpy()
f = tf.function(lambda z: tfp_hessian.log_prob_hessian(made.distribution, z, **kwargs), autograph=False)
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
start = time.perf_counter()
f(z).numpy()
first = time.perf_counter() - start
chunks = tfp_hessian.execution_plan(made.distribution, z, **kwargs).chunks
for _ in range(3):
  f(z).numpy()
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(chunks, first, (after - before) / 1024, after / 1024)
"""


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--flow", default="maf")
  parser.add_argument("--dim", type=int, default=128)
  parser.add_argument("--points", type=int, default=1024)
  parser.add_argument("--dtype", default="float32", choices=["float32", "float64"])
  parser.add_argument("--repeats", type=int, default=1)
  args = parser.parse_args()
  bench = str(pathlib.Path(__file__).resolve().parent)
  for _ in range(args.repeats):
    for label, whole in (("one call", True), ("chunks", False)):
      child = _CHILD.format(bench=bench, whole=whole, flow=args.flow, dim=args.dim, dtype=args.dtype,
                            points=args.points)
      output = subprocess.run([sys.executable, "-c", child], capture_output=True, text=True, check=True).stdout
      chunks, first, grew, peak = output.split()[-4:]
      print(f"{args.flow} D={args.dim} N={args.points} {args.dtype} {label} ({chunks} calls): first call "
            f"{float(first):.2f} s; peak RSS grew {float(grew):.0f} MiB over 4 calls, to {float(peak):.0f} MiB")


if __name__ == "__main__":
  main()
