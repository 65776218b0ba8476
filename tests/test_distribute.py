"""`hessians_in_chunks` under tf.distribute equals the single-device results.

TensorFlow fixes its logical devices and its cluster when it is first used, and this process has long used it,
so each check runs `chunked_script.py` in a fresh process (this repository first on its PYTHONPATH) and asserts
on what it reports. The script compares every `what` from an array (results in memory) and from a dataset
(every `what` under MultiWorkerMirroredStrategy, written to files; the spectrum under MirroredStrategy) with
the single-device run of the same points in the same process, at rtol 1e-12 (asserted there) and
bitwise (reported, asserted here).
"""

import json
import os
import pathlib
import socket
import subprocess
import sys

import numpy as np
import pytest

import chunked_script

ROOT = pathlib.Path(__file__).resolve().parent.parent
SCRIPT = pathlib.Path(chunked_script.__file__).resolve()
TIMEOUT = 300


def _env(**extra):
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", **extra)
  env["PYTHONPATH"] = os.pathsep.join([str(ROOT)] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
  return env


def _report(stdout, stderr):
  lines = [line for line in stdout.splitlines() if line.startswith("{")]
  assert len(lines) == 1, f"no report from the script:\nstdout:\n{stdout}\nstderr:\n{stderr[-5000:]}"
  return json.loads(lines[0])


def _assert_equal_to_single_device(results, expected_keys):
  assert sorted(results) == sorted(expected_keys)
  for key, result in results.items():
    assert result["worst"] <= chunked_script.RTOL, key
    assert result["bitwise"], f"{key}: not bitwise equal to the single-device result"


KEYS = [f"{what}/{kind}" for what in chunked_script.WHATS for kind in ("array", "dataset")]


def test_mirrored_strategy_on_two_logical_cpus_equals_one_device():
  completed = subprocess.run([sys.executable, str(SCRIPT), "mirrored"], env=_env(), capture_output=True, text=True,
                             timeout=TIMEOUT, check=False)
  assert completed.returncode == 0, completed.stderr[-5000:]
  report = _report(completed.stdout, completed.stderr)
  assert report["replicas"] == 2
  assert [device.rsplit("/", 1)[-1] for device in report["devices"]] == ["device:CPU:0", "device:CPU:1"]
  # "hessian/scope": inside `strategy.scope()` without `strategy=`.
  _assert_equal_to_single_device(report["results"],
                                 [key for key in KEYS if "array" in key] + ["spectrum/dataset", "hessian/scope"])
  assert report["odd_chunk_error"] == "`chunk_size` must be a multiple of the strategy's 2 replicas; got 5."


def _free_ports(count):
  sockets = [socket.socket() for _ in range(count)]
  try:
    for sock in sockets:
      sock.bind(("localhost", 0))
    return [sock.getsockname()[1] for sock in sockets]
  finally:
    for sock in sockets:
      sock.close()


@pytest.mark.slow
def test_multi_worker_mirrored_strategy_on_two_local_workers(tmp_path):
  """Two worker processes on localhost ports (TF_CONFIG), one CPU replica each: a real two-worker cluster."""
  ports = _free_ports(2)
  cluster = {"worker": [f"localhost:{port}" for port in ports]}
  out = tmp_path / "out"
  workers = []
  for index in range(2):
    config = json.dumps({"cluster": cluster, "task": {"type": "worker", "index": index}})
    workers.append(subprocess.Popen([sys.executable, str(SCRIPT), "multiworker", str(out)],
                                    env=_env(TF_CONFIG=config), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                    text=True))
  outputs = []
  try:
    for worker in workers:
      outputs.append(worker.communicate(timeout=TIMEOUT))
  finally:
    for worker in workers:
      if worker.poll() is None:
        worker.kill()
        worker.communicate()
  for worker, (stdout, stderr) in zip(workers, outputs):
    assert worker.returncode == 0, stderr[-5000:]
  chief, other = (_report(*output) for output in outputs)
  assert chief["task"] == ["worker", 0] and chief["chief"]
  assert other["task"] == ["worker", 1] and not other["chief"]
  assert chief["replicas"] == other["replicas"] == 2
  # Both workers hold every point's results in memory; only the chief writes files.
  _assert_equal_to_single_device(chief["results"], KEYS)
  for key in KEYS:
    assert chief["results"][key]["memmap"] == key.endswith("dataset"), key
  _assert_equal_to_single_device({key: other["results"][key] for key in KEYS if key.endswith("array")},
                                 [key for key in KEYS if key.endswith("array")])
  assert all(other["results"][key] is None for key in KEYS if key.endswith("dataset"))
  for what in chunked_script.WHATS:
    progress = json.loads((out / what / "progress.json").read_text())
    assert progress["points_done"] == progress["num_points"] == chunked_script.NUM_POINTS
  # The chief's files hold the single-device results (the script compared the memory maps it returned).
  assert np.load(out / "hessian" / "hessian.npy").shape == (chunked_script.NUM_POINTS, 5, 5)
