"""Where a call's time goes, by TensorFlow op type: the default call on a bench flow, under TF's profiler.

    python benchmarks/op_profile.py maf 128 1024 [--dtype float32] [--calls 3] [--top 25]
    python benchmarks/op_profile.py maf 128 1024 --hlo

Prints the share of host self-time per op type (BatchMatMulV2, Mul, Transpose, ...) and the slowest single ops,
over `--calls` calls after two warm-up calls of `log_prob_hessian` in a `tf.function`. Self-times are summed over
TF's threads, so read the shares, not the totals.

A sweep the default call compiles with XLA is one op to TensorFlow: `--hlo` times its HLO instructions instead
(XLA's CPU runtime traces each when `--xla_cpu_enable_xprof_traceme=true` is in `XLA_FLAGS`, which `--hlo` sets
before TensorFlow starts), summed per instruction (`copy_gather_fusion.1`, `MatMul_5.2`, ...) and per kind of
instruction (dots; fusions by their name), in ms of thread time per call. The instruction names are those of the
HLO after optimisation (`XLA_FLAGS=--xla_dump_to=DIR --xla_dump_hlo_as_text` writes it, to see what each is).
"""

import argparse
import collections
import glob
import json
import os
import re
import sys
import tempfile

if "--hlo" in sys.argv:  # read when XLA starts, so before TensorFlow is imported
  os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_cpu_enable_xprof_traceme=true").strip()

import tensorflow as tf  # pylint: disable=g-import-not-at-top,wrong-import-position
from tensorflow.tsl.profiler.protobuf import xplane_pb2  # pylint: disable=g-import-not-at-top
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
  parser.add_argument("--hlo", action="store_true", help="time the HLO instructions of an XLA-compiled sweep")
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
  if args.hlo:
    _print_hlo(planes, args)
    return
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


# Events of TF's executor and XLA's runtime around the instructions, not instructions themselves.
_RUNTIME = re.compile(r"Executor|CpuExecutable|BlockUntilReady|ThunkExecutor|ThreadPool|Await")


def _print_hlo(planes, args):
  by_instruction = collections.defaultdict(float)
  for path in planes:
    space = xplane_pb2.XSpace()
    with open(path, "rb") as f:
      space.ParseFromString(f.read())
    for plane in space.planes:
      names = {key: value.name for key, value in plane.event_metadata.items()}
      for line in plane.lines:
        if not line.name.startswith(("tf_numa", "tf_Compute")):  # the threads that run compiled code
          continue
        for event in line.events:
          name = names.get(event.metadata_id, "")
          if name and not _RUNTIME.search(name):
            by_instruction[name] += event.duration_ps / 1e9 / args.calls  # ms per call
  if not by_instruction:
    print("no HLO instructions traced: is the sweep compiled (tfp_hessian.execution_plan)?")
    return
  by_kind = collections.defaultdict(float)
  for name, ms in by_instruction.items():
    kind = re.sub(r"[._]\d.*$", "", name)
    by_kind["dot (MatMul)" if kind.startswith(("MatMul", "dot")) else kind] += ms
  total = sum(by_kind.values())
  print(f"{args.flow}, D = {args.dim}, {args.num_points} points, {args.dtype}: XLA-compiled sweep, thread time "
        f"per call {total:.1f} ms (summed over threads)")
  for kind, ms in sorted(by_kind.items(), key=lambda item: -item[1])[:args.top]:
    print(f"  {kind:28s} {ms:9.1f} ms {100 * ms / total:5.1f} %")
  print("slowest instructions (ms per call):")
  for name, ms in sorted(by_instruction.items(), key=lambda item: -item[1])[:args.top]:
    print(f"  {ms:9.1f}  {name}")


if __name__ == "__main__":
  main()
