"""Runs a benchmark script's worker in a fresh process, so each measurement starts from a clean TensorFlow.

The script runs itself with `--worker <argv>`; the worker prints one line `RESULT <json>` last.
"""

import json
import os
import subprocess
import sys
import time


def run_worker(script, argv, timeout):
  """The worker's report (its last `RESULT` line, as a dict) with `wall_s`, its wall time; raises if it failed."""
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
  start = time.perf_counter()
  process = subprocess.run([sys.executable, script, "--worker", *argv], capture_output=True, text=True, env=env,
                           timeout=timeout, check=False)
  lines = [line for line in process.stdout.splitlines() if line.startswith("RESULT ")]
  if process.returncode or not lines:
    raise RuntimeError(f"worker {argv} failed ({process.returncode}):\n{process.stderr[-3000:]}")
  report = json.loads(lines[-1][len("RESULT "):])
  report["wall_s"] = time.perf_counter() - start
  return report
