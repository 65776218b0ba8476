"""Runs `hessians_in_chunks` in a fresh process, for the tests that need one (`test_batched`, `test_distribute`).

    python tests/chunked_script.py killable OUT STOP    # blocks for good after STOP points, to be killed
    python tests/chunked_script.py killed_mid_write OUT WHAT WHERE   # SIGKILLs itself writing the third chunk
    python tests/chunked_script.py mirrored             # two logical CPUs: MirroredStrategy vs one device
    python tests/chunked_script.py multiworker OUT      # one worker of a MultiWorkerMirroredStrategy (TF_CONFIG)
    python tests/chunked_script.py memory OUT           # peak memory of a default-size chunk of a 4-layer MAF

The last two print one JSON line with what they compared; every comparison is asserted here as well.
TensorFlow fixes its devices and cluster when first used, which is why these run in their own process.
"""

import json
import os
import pathlib
import signal
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # pylint: disable=wrong-import-position
import tensorflow as tf  # pylint: disable=wrong-import-position

NUM_POINTS = 11
CHUNK = 4  # per replica
WHATS = ("hessian", "derivatives", "spectrum")
RTOL = 1e-12


def flow_and_points(num_points=NUM_POINTS):
  """The flow and points every test of chunking uses (the test module builds the same ones)."""
  import cases  # pylint: disable=import-outside-toplevel
  return cases.flow_and_points(cases.BIJECTORS["Chain"], np.float64, seed=3, num_points=num_points, edges=False)


class ReaderFailed(OSError):
  """What `failing_reader` raises: tests match its name in the error TensorFlow wraps it in."""


def failing_reader(z, fail_after):
  """A dataset of the rows of `z` whose reader fails after `fail_after` rows: a run stops mid-way, for real."""

  def rows():
    for row, point in enumerate(z):
      if row == fail_after:
        raise ReaderFailed(f"reader failed at row {row}")
      yield point

  dataset = tf.data.Dataset.from_generator(rows, output_signature=tf.TensorSpec(z.shape[1:], z.dtype))
  return dataset.apply(tf.data.experimental.assert_cardinality(len(z)))


def killable(out, stop):
  """Computes the Hessians of `flow_and_points()` into `out` from a dataset that never yields past `stop`."""
  import tfp_hessian  # pylint: disable=import-outside-toplevel
  flow, z = flow_and_points()
  z = z.numpy()

  def rows():
    yield from z[:stop]
    while True:  # a reader that hangs: the run can only end by being killed
      time.sleep(1)

  dataset = tf.data.Dataset.from_generator(rows, output_signature=tf.TensorSpec([z.shape[1]], tf.float64))
  dataset = dataset.apply(tf.data.experimental.assert_cardinality(len(z)))
  tfp_hessian.hessians_in_chunks(flow, dataset, chunk_size=CHUNK, out=out, progress=False)


def killed_mid_write(out, what, where):
  """Computes `what` of `flow_and_points()` into `out` in chunks of `CHUNK`, and SIGKILLs itself while writing
  the third chunk: `where` is "rows" (half its rows in the first file, flushed), "files" (the first file's rows
  written and flushed, not the next file's) or "record" (every row written, the new record in its temporary file,
  not yet replacing the old one). No cleanup of any kind runs: the directory is as a crash leaves it.
  """
  import tfp_hessian  # pylint: disable=import-outside-toplevel
  from tfp_hessian import results_directory  # pylint: disable=import-outside-toplevel
  flow, z = flow_and_points()
  third = 2 * CHUNK
  kill = lambda: os.kill(os.getpid(), signal.SIGKILL)
  write_rows = results_directory.ResultsDirectory._write_rows  # pylint: disable=protected-access

  def write_rows_then_die(self, index, begin, rows):
    if begin == third and where == "rows":
      write_rows(self, index, begin, rows[:len(rows) // 2])
      kill()
    if begin == third and where == "files" and index == 1:
      kill()
    write_rows(self, index, begin, rows)

  replace = os.replace

  def replace_then_die(source, destination):
    if where == "record" and json.loads(pathlib.Path(source).read_text())["points_done"] > third:
      kill()
    replace(source, destination)

  results_directory.ResultsDirectory._write_rows = write_rows_then_die  # pylint: disable=protected-access
  os.replace = replace_then_die
  tfp_hessian.hessians_in_chunks(flow, z, what=what, chunk_size=CHUNK, out=out, progress=False)
  raise SystemExit("the run finished: it was not killed")


def _worst(actual, expected):
  """The largest difference relative to the largest entry of each point's quantity (as `cases.assert_close`)."""
  import cases  # pylint: disable=import-outside-toplevel
  actual, expected = np.asarray(actual), np.asarray(expected)
  if actual.dtype == bool:
    assert np.array_equal(actual, expected)
    return 0.
  event_ndims = actual.ndim - 1
  cases.assert_close(actual, expected, RTOL, event_ndims=event_ndims)
  axes = tuple(range(1, actual.ndim))
  scale = np.max(np.abs(expected), axis=axes, keepdims=True) if axes else np.abs(expected)
  return float(np.max(np.abs(actual - expected) / scale))


def _fields(result):
  return [result] if isinstance(result, np.ndarray) else list(result)


def _compare(strategy, replicas, out=None, dataset_whats=WHATS):
  """Every `what` from an array, and `dataset_whats` from a dataset, under `strategy` against one device.

  The array's results are kept in memory; the dataset's go to files under `out` if it is given.
  """
  import tfp_hessian  # pylint: disable=import-outside-toplevel
  flow, z = flow_and_points()
  report = {}
  for what in WHATS:
    single = tfp_hessian.hessians_in_chunks(flow, z, what=what, chunk_size=CHUNK, progress=False)
    inputs = {"array": z, "dataset": tf.data.Dataset.from_tensor_slices(z).batch(3)}
    for kind, points in inputs.items():
      if kind == "dataset" and what not in dataset_whats:
        continue
      target = None if out is None or kind == "array" else os.path.join(out, what)
      spread = tfp_hessian.hessians_in_chunks(flow, points, what=what, chunk_size=CHUNK * replicas, out=target,
                                              progress=False, strategy=strategy)
      if spread is None:  # a worker other than the chief, with `out`: it writes nothing
        report[f"{what}/{kind}"] = None
        continue
      fields = _fields(spread)
      worst = [_worst(a, b) for a, b in zip(fields, _fields(single))]
      bitwise = all(np.array_equal(a, b, equal_nan=True) for a, b in zip(fields, _fields(single)))
      report[f"{what}/{kind}"] = {"worst": max(worst), "bitwise": bitwise,
                                  "memmap": all(isinstance(a, np.memmap) for a in fields)}
  return report


def mirrored():
  cpu = tf.config.list_physical_devices("CPU")[0]
  tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
  strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
  report = _compare(strategy, 2, dataset_whats=("spectrum",))
  import tfp_hessian  # pylint: disable=import-outside-toplevel
  flow, z = flow_and_points()
  single = tfp_hessian.hessians_in_chunks(flow, z, chunk_size=CHUNK, progress=False)
  with strategy.scope():  # no `strategy=`: the one in scope
    in_scope = tfp_hessian.hessians_in_chunks(flow, z, chunk_size=2 * CHUNK, progress=False)
  report["hessian/scope"] = {"worst": _worst(in_scope, single), "bitwise": bool(np.array_equal(in_scope, single)),
                             "memmap": False}
  try:
    tfp_hessian.hessians_in_chunks(flow, z, chunk_size=5, progress=False, strategy=strategy)
    odd_chunk = None
  except ValueError as error:
    odd_chunk = str(error)
  print(json.dumps({"replicas": strategy.num_replicas_in_sync, "devices": list(strategy.extended.worker_devices),
                    "results": report, "odd_chunk_error": odd_chunk}))


def multiworker(out):
  strategy = tf.distribute.MultiWorkerMirroredStrategy()
  report = _compare(strategy, strategy.num_replicas_in_sync, out=out)
  resolver = strategy.cluster_resolver
  print(json.dumps({"replicas": strategy.num_replicas_in_sync, "task": [resolver.task_type, resolver.task_id],
                    "chief": bool(strategy.extended.should_checkpoint), "results": report}))


def memory(out):
  """Growth of the peak resident memory from an 8-point run to two default-size chunks (D = 128 MAF, float32)."""
  import resource  # pylint: disable=import-outside-toplevel
  import tensorflow_probability as tfp  # pylint: disable=import-outside-toplevel
  import tf_keras  # pylint: disable=import-outside-toplevel
  import tfp_hessian  # pylint: disable=import-outside-toplevel
  tfb, tfd = tfp.bijectors, tfp.distributions
  size, dtype, rng = 128, tf.float32, np.random.default_rng(0)
  tf_keras.backend.set_floatx(dtype.name)
  layers = []
  for _ in range(4):
    made = tfb.AutoregressiveNetwork(params=2, event_shape=[size], hidden_units=[64, 64], dtype=dtype)
    layers += [tfb.MaskedAutoregressiveFlow(made), tfb.Permute(rng.permutation(size))]
  flow = tfd.TransformedDistribution(tfd.MultivariateNormalDiag(tf.zeros(size, dtype)), tfb.Chain(layers))
  tfp_hessian.hessians_in_chunks(flow, flow.sample(8, seed=(1, 2)), chunk_size=8, progress=False)
  before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # kB on Linux
  chunk = tfp_hessian.default_chunk_size(size, dtype)
  result = tfp_hessian.hessians_in_chunks(flow, flow.sample(2 * chunk, seed=(1, 3)), out=out, progress=False)
  after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
  assert np.all(np.isfinite(result))
  print(json.dumps({"chunk": chunk, "points": len(result), "growth": after - before}))


if __name__ == "__main__":
  sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
  mode = sys.argv[1]
  if mode == "killable":
    killable(sys.argv[2], int(sys.argv[3]))
  elif mode == "killed_mid_write":
    killed_mid_write(*sys.argv[2:5])
  elif mode == "mirrored":
    mirrored()
  elif mode == "multiworker":
    multiworker(sys.argv[2])
  elif mode == "memory":
    memory(sys.argv[2])
  else:
    raise SystemExit(f"unknown mode {mode!r}")
