"""Where a call's time goes, by TensorFlow op type: the default call on a bench flow, under TF's profiler.

    python benchmarks/op_profile.py maf 128 1024 [--dtype float32] [--calls 3] [--top 25]

Prints the share of host self-time per op type (BatchMatMulV2, Mul, Transpose, ...) and the slowest single ops,
over `--calls` calls after two warm-up calls of `log_prob_hessian` in a `tf.function`. Self-times are summed over
TF's threads, so read the shares, not the totals.
"""

import argparse
import collections
import glob
import json
import tempfile

import tensorflow as tf
from tensorflow.python.profiler.internal import _pywrap_profiler_plugin as profiler_plugin

import tfp_hessian

import harness  # benchmarks/harness/, beside this script


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("flow", choices=sorted(harness.FLOWS))
  parser.add_argument("dim", type=int)
  parser.add_argument("num_points", type=int)
  parser.add_argument("--dtype", default="float32", choices=["float32", "float64"])
  parser.add_argument("--calls", type=int, default=3)
  parser.add_argument("--top", type=int, default=25)
  args = parser.parse_args()
  flow = harness.build_flow(args.flow, args.dim, tf.as_dtype(args.dtype))
  z, kwargs = harness.sample_points(flow, args.num_points)
  call = tf.function(lambda z: tfp_hessian.log_prob_hessian(flow.distribution, z, **kwargs), autograph=False)
  call(z).numpy()
  call(z).numpy()
  logdir = tempfile.mkdtemp()
  tf.profiler.experimental.start(logdir)
  for _ in range(args.calls):
    call(z).numpy()
  tf.profiler.experimental.stop()
  planes = glob.glob(logdir + "/**/*.xplane.pb", recursive=True)
  data, _ = profiler_plugin.xspace_to_tools_data(planes, "framework_op_stats", {})
  table = json.loads(data)[0]
  columns = [column["id"] for column in table["cols"]]
  rows = [dict(zip(columns, [cell.get("v") if cell else None for cell in row["c"]])) for row in table["rows"]]
  rows = [row for row in rows if row["host_or_device"] == "Host" and row["type"] != "IDLE"]
  by_type, count = collections.defaultdict(float), collections.Counter()
  for row in rows:
    by_type[row["type"]] += row["total_self_time"]
    count[row["type"]] += int(row["occurrences"]) // args.calls
  total = sum(by_type.values())
  print(f"{args.flow}, D = {args.dim}, {args.num_points} points, {args.dtype}: share of op self-time by type")
  for kind, seconds in sorted(by_type.items(), key=lambda item: -item[1])[:args.top]:
    print(f"  {kind:24s} {100 * seconds / total:5.1f} %   {count[kind]:4d} ops per call")
  print("slowest ops (ms of self-time per call):")
  for row in sorted(rows, key=lambda row: -row["total_self_time"])[:args.top]:
    print(f"  {row['total_self_time'] / args.calls / 1e3:8.1f}  {row['type']:16s} {row['operation'][-80:]}")


if __name__ == "__main__":
  main()
