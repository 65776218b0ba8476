"""What verifying a resumable run's files costs, against computing them: 10⁵ points at D = 32, float64 by default.

The result files are written by the library's own writer (`results_directory.ResultsDirectory.write`, the one
`hessians_in_chunks(out=...)` uses), chunk by chunk in the default chunk size, with random stand-ins for the
results: the record's checksums are the real ones, without computing 10⁵ Hessians. Then, timed:

- *resume check*: what a resumed (or finished) call does before it trusts the files: opening the directory (the
  record's checks, each file's header and size, every region read back through a read-only memory map and its
  crc32 compared) and the points already done hashed and compared. Warm: the files' pages still cached, as just
  written; cold: their pages dropped first (`posix_fadvise(DONTNEED)`, after an fsync), so they are read from
  disk;
- *result check*: `result()` after a call that wrote every chunk itself, which reads back what it wrote;
- *checksums while writing*: the crc32 of each chunk's results in memory, what `write` adds per chunk;
- *computing*: `hessians_in_chunks` (in memory) over `--compute-points` points of each benchmark flow
  (`harness`: elementwise_affine, realnvp, maf; 4 layers) in the default chunk size, after one call
  that traces, extrapolated linearly to `--num-points`.

    python benchmarks/verify_cost.py [--num-points 100000] [--dim 32] [--what hessian] [--json PATH]
"""

import argparse
import json
import os
import pathlib
import platform
import tempfile
import time
import zlib

import numpy as np
import tensorflow as tf

import tfp_hessian
from tfp_hessian import chunked, results_directory

import harness  # benchmarks/harness/, beside this script


def _write_fake_run(directory, what, dim, num_points, chunk_size, rng):
  """A finished run of random stand-in results, written by the library's writer.

  Returns:
    `(points, seconds of result(), seconds of the results' crc32 in memory, the spec to open it again)`: the
    crc32 is what checksumming adds to each chunk's write, timed apart from the write itself.
  """
  request = {"what": what, "event_size": dim, "dtype": "float64", "num_points": num_points}
  fields = chunked._FIELDS[what]  # pylint: disable=protected-access
  shapes = chunked._shapes(what, dim, num_points)  # pylint: disable=protected-access
  dtypes = chunked._dtypes(what, tf.float64)  # pylint: disable=protected-access
  output = results_directory.ResultsDirectory(directory, fields, request, shapes, dtypes, chunk_size)
  output.check_flow("0" * 64)
  points = rng.standard_normal((num_points, dim))
  crc_seconds = 0.
  for begin in range(0, num_points, chunk_size):
    rows = min(chunk_size, num_points - begin)
    results = [rng.standard_normal((rows,) + tuple(shape[1:])).astype(dtype) for shape, dtype in zip(shapes, dtypes)]
    started = time.perf_counter()
    for result in results:
      zlib.crc32(result)
    crc_seconds += time.perf_counter() - started
    output.write(begin, results, points[begin:begin + rows])
  started = time.perf_counter()
  output.result()
  return points, time.perf_counter() - started, crc_seconds, (fields, request, shapes, dtypes)


def _drop_cached_pages(directory):
  for path in directory.iterdir():
    with open(path, "rb") as file:
      os.fsync(file.fileno())
      os.posix_fadvise(file.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)


def _resume_check(directory, points, spec, chunk_size):
  """Seconds for what a resumed call checks before it trusts the directory."""
  started = time.perf_counter()
  output = results_directory.ResultsDirectory(directory, *spec, chunk_size)
  for begin in range(0, len(points), 4096):
    output.consume_points_done(points[begin:begin + 4096])
  output.check_points()
  return time.perf_counter() - started


def _compute_seconds(name, dim, num_points, chunk_size):
  flow = harness.build_flow(name, dim, tf.float64).distribution
  z = flow.sample(num_points, seed=(1, 2)).numpy()
  tfp_hessian.hessians_in_chunks(flow, z[:chunk_size], chunk_size=chunk_size, progress=False)  # traces
  started = time.perf_counter()
  tfp_hessian.hessians_in_chunks(flow, z, chunk_size=chunk_size, progress=False)
  return time.perf_counter() - started


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--num-points", type=int, default=100_000)
  parser.add_argument("--dim", type=int, default=32)
  parser.add_argument("--what", default="hessian", choices=sorted(chunked._FIELDS))  # pylint: disable=protected-access
  parser.add_argument("--compute-points", type=int, default=2 * 682, help="points computed per flow (2 chunks)")
  parser.add_argument("--repeats", type=int, default=3, help="resume checks timed, warm and cold each")
  parser.add_argument("--json", help="write the numbers here")
  args = parser.parse_args()
  chunk_size = tfp_hessian.default_chunk_size(args.dim, tf.float64, args.what)
  rng = np.random.default_rng(0)
  report = {"num_points": args.num_points, "dim": args.dim, "what": args.what, "chunk_size": chunk_size,
            "load_average": os.getloadavg(), "machine": platform.platform(), "numpy": np.__version__,
            "tensorflow": tf.__version__}
  with tempfile.TemporaryDirectory(prefix="verify_cost_") as temporary:
    directory = pathlib.Path(temporary) / "run"
    started = time.perf_counter()
    points, result_check, crc_seconds, spec = _write_fake_run(directory, args.what, args.dim, args.num_points,
                                                              chunk_size, rng)
    report["write_seconds"] = time.perf_counter() - started
    report["result_check_seconds"], report["write_crc32_seconds"] = result_check, crc_seconds
    report["bytes"] = sum(path.stat().st_size for path in directory.iterdir() if path.suffix == ".npy")
    record = json.loads((directory / results_directory.PROGRESS_FILE).read_text())
    report["regions"], report["record_bytes"] = len(record["regions"]), (directory / "progress.json").stat().st_size
    warm, cold = [], []
    for _ in range(args.repeats):
      warm.append(_resume_check(directory, points, spec, chunk_size))
      _drop_cached_pages(directory)
      cold.append(_resume_check(directory, points, spec, chunk_size))
    report["resume_check_warm_seconds"], report["resume_check_cold_seconds"] = warm, cold
  report["compute_seconds"] = {}
  for name in ("elementwise_affine", "realnvp", "maf"):
    seconds = _compute_seconds(name, args.dim, args.compute_points, chunk_size)
    report["compute_seconds"][name] = {"measured": seconds, "points": args.compute_points,
                                       "extrapolated": seconds * args.num_points / args.compute_points}
  fastest = min(entry["extrapolated"] for entry in report["compute_seconds"].values())
  print(f"{args.num_points} points, D = {args.dim}, {args.what}, float64: {report['bytes'] / 1e6:.0f} MB in "
        f"{report['regions']} regions of {chunk_size} points (record {report['record_bytes'] / 1e3:.0f} kB)")
  print(f"  written in {report['write_seconds']:.2f} s (drawing the random stand-ins, msync per chunk), of which the "
        f"checksums of the results in memory: {crc_seconds:.2f} s")
  print(f"  resume check: warm {np.median(warm):.2f} s, cold {np.median(cold):.2f} s (median of {args.repeats}); "
        f"result check after writing: {result_check:.2f} s")
  for name, entry in report["compute_seconds"].items():
    print(f"  computing, {name}: {entry['measured']:.2f} s for {entry['points']} points -> "
          f"{entry['extrapolated']:.0f} s for {args.num_points}")
  print(f"  resume check / fastest computation: warm {np.median(warm) / fastest:.2%}, "
        f"cold {np.median(cold) / fastest:.2%}")
  if args.json:
    pathlib.Path(args.json).write_text(json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
  main()
