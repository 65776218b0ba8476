"""`tfp_hessian.hessians_in_chunks`: equal to the sweep on all points, files that resume, and refusals.

Each chunk is the sweep itself inside one `tf.function`, so results are compared two ways: bitwise with
`tf.function(log_prob_and_derivatives)` (and `spectrum`) run on the same padded chunks, the same computation;
and with `log_prob_and_derivatives` run eagerly on all the points at once, where graph-versus-eager rounding
differs by a few ulps (about 1e-15 relative in float64, 1e-6 in float32, seen): rtol 1e-12 and 1e-5.
Two chunked runs of the same chunk size are compared bitwise.
"""

import gc
import json
import os
import pathlib
import re
import signal
import subprocess
import sys
import time
import weakref

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_probability as tfp

import tfp_hessian
from tfp_hessian import chunk_step, chunked, flow_digest

import cases
import chunked_script
import test_flows

tfb, tfd = tfp.bijectors, tfp.distributions

ROOT = pathlib.Path(__file__).resolve().parent.parent
SCRIPT = pathlib.Path(chunked_script.__file__).resolve()
RTOL = {np.float64: 1e-12, np.float32: 1e-5}
N, CHUNK = 11, 4  # N is not a multiple of the chunk size: the last chunk is padded


def _reference(flow, z, what, compute=tfp_hessian.log_prob_and_derivatives):
  derivatives = compute(flow, z)
  if what == "hessian":
    return derivatives.hessian
  if what == "derivatives":
    return derivatives
  return tfp_hessian.spectrum(derivatives.hessian)


def _fields(result):
  return list(result) if isinstance(result, tuple) else [result]


def _per_chunk(flow, z, what, chunk_size):
  """The sweep in one `tf.function`, on the chunks of `z` padded as `hessians_in_chunks` pads them."""
  compute = tf.function(lambda z: _reference(flow, z, what), autograph=False)
  z, parts = np.asarray(z), []
  for begin in range(0, len(z), chunk_size):
    chunk = z[begin:begin + chunk_size]
    padded = np.concatenate([chunk, np.repeat(chunk[-1:], chunk_size - len(chunk), axis=0)])
    parts.append([np.asarray(field)[:len(chunk)] for field in _fields(compute(padded))])
  return [np.concatenate(field) for field in zip(*parts)]


def _assert_equal_to_sweep(result, flow, z, what, chunk_size):
  expected = _reference(flow, z, what)
  if what == "hessian":
    assert isinstance(result, np.ndarray)
  else:
    assert type(result) is type(expected)  # pylint: disable=unidiomatic-typecheck
  for name, actual, same, wanted in zip(getattr(expected, "_fields", ["hessian"]), _fields(result),
                                        _per_chunk(flow, z, what, chunk_size), _fields(expected)):
    assert isinstance(actual, np.ndarray), name
    assert actual.dtype == wanted.dtype, name
    np.testing.assert_array_equal(actual, same, err_msg=f"{name}: not bitwise the sweep's on the same chunks")
    if actual.dtype == bool:
      np.testing.assert_array_equal(actual, wanted, err_msg=name)
    elif name == "eigenvectors":
      # Eigenvectors of nearly equal eigenvalues move with the Hessian's last-ulp rounding, which differs between
      # the chunked graph and one eager call on all points (float32: 3e-5 seen for a gap of 1e-2 against entries
      # of 1e6; float64: 1e-10): compared through the Hessian they rebuild instead. (Bitwise equality with the
      # sweep on the same chunks is asserted above.)
      values = np.asarray(result.eigenvalues, np.float64)
      vectors = actual.astype(np.float64)
      rebuilt = vectors @ (values[..., :, None] * np.swapaxes(vectors, -1, -2))
      cases.assert_close(rebuilt, _reference(flow, z, "hessian"), RTOL[actual.dtype.type], what="V diag(λ) Vᵀ")
    elif name == "log_prob":
      # A log density is a sum of terms (base log density, log-determinants) that can cancel to near zero at one
      # point: its rounding follows the terms, not the sum (float32: 5e-7 off a sum of -0.029 whose terms are
      # about 8, seen). Compared relative to the largest log density over the points instead.
      cases.assert_close(actual, wanted, RTOL[actual.dtype.type], event_ndims=1, what=name)
    else:
      cases.assert_close(actual, wanted, RTOL[actual.dtype.type], event_ndims=actual.ndim - 1, what=name)


def _inputs(z):
  """The same points as every input kind `hessians_in_chunks` takes."""
  array = np.asarray(z)
  return {
      "numpy": array,
      "tensor": tf.constant(array),
      "dataset[D]": tf.data.Dataset.from_tensor_slices(array),
      "dataset[b,D]": tf.data.Dataset.from_tensor_slices(array).batch(3),
      # Unknown cardinality: counted first when writing files.
      "generator": tf.data.Dataset.from_generator(lambda: iter(array),
                                                  output_signature=tf.TensorSpec(array.shape[1:], array.dtype)),
  }


@pytest.mark.parametrize("name", ["RealNVP", "MAF(MADE tanh)", "Softplus"])  # Chain: below
def test_flows_equal_the_sweep(name):
  flow, z = cases.flow_and_points(cases.BIJECTORS[name], np.float64, seed=1, num_points=N)
  result = tfp_hessian.hessians_in_chunks(flow, z, chunk_size=CHUNK, progress=False)
  assert result.shape == (len(z), cases.DIM, cases.DIM)
  _assert_equal_to_sweep(result, flow, z, "hessian", CHUNK)


@pytest.mark.parametrize("what", ["hessian", "derivatives", "spectrum"])
@pytest.mark.parametrize("dtype", cases.DTYPES, ids=lambda d: np.dtype(d).name)
def test_every_what_equals_the_sweep(what, dtype):
  flow, z = cases.flow_and_points(cases.BIJECTORS["Chain"], dtype, seed=2, num_points=N, edges=False)
  result = tfp_hessian.hessians_in_chunks(flow, z, what=what, chunk_size=CHUNK, progress=False)
  _assert_equal_to_sweep(result, flow, z, what, CHUNK)


def test_every_input_kind_gives_the_same_result():
  flow, z = chunked_script.flow_and_points()
  results = {kind: tfp_hessian.hessians_in_chunks(flow, points, what="derivatives", chunk_size=CHUNK, progress=False)
             for kind, points in _inputs(z).items()}
  _assert_equal_to_sweep(results["numpy"], flow, z, "derivatives", CHUNK)
  for kind, result in results.items():
    for name, actual, wanted in zip(result._fields, result, results["numpy"]):
      np.testing.assert_array_equal(actual, wanted, err_msg=f"{kind}: {name}")


def test_default_chunk_size_follows_the_documented_formula():
  for size, dtype, what, copies in [(100, tf.float64, "hessian", 48), (100, tf.float32, "derivatives", 48),
                                    (300, tf.float64, "spectrum", 56), (37, np.float32, "spectrum", 56)]:
    expected = min(4096, max(1, chunked.MEMORY_BUDGET // (copies * size**2 * tf.as_dtype(dtype).size)))
    assert tfp_hessian.default_chunk_size(size, dtype, what) == expected
  assert tfp_hessian.default_chunk_size(100, tf.float64) == 69
  assert tfp_hessian.default_chunk_size(2, tf.float32) == 4096  # capped
  assert tfp_hessian.default_chunk_size(5000, tf.float64, "spectrum") == 1  # one point never fits: still 1
  with pytest.raises(ValueError, match="`what` must be one of"):
    tfp_hessian.default_chunk_size(10, tf.float64, "gradient")


@pytest.mark.slow
def test_default_chunk_fits_a_few_hundred_megabytes(tmp_path):
  """Two default-size chunks of a 4-layer MAF (D = 128, float32) grow peak resident memory by < 1.5 budgets.

  Measured in a fresh process against an 8-point run of the same flow, so imports and TF's own pools are not
  counted; the growth includes the new trace and what the allocator keeps (251 MB seen for a 256 MiB budget).
  """
  completed = subprocess.run([sys.executable, str(SCRIPT), "memory", str(tmp_path / "out")], env=_subprocess_env(),
                             capture_output=True, text=True, timeout=300, check=False)
  assert completed.returncode == 0, completed.stderr[-5000:]
  report = json.loads(completed.stdout.strip().splitlines()[-1])
  assert report["chunk"] == tfp_hessian.default_chunk_size(128, tf.float32) == 85
  assert report["points"] == 2 * report["chunk"]
  assert report["growth"] <= 1.5 * chunked.MEMORY_BUDGET, f"{report['growth'] / 2**20:.0f} MiB"


def test_default_chunk_size_is_used():
  size = 64
  flow = tfd.TransformedDistribution(tfd.MultivariateNormalDiag(tf.zeros(size, tf.float64)), tfb.Softplus())
  z = flow.sample(400, seed=(2, 3))
  chunk = tfp_hessian.default_chunk_size(size, tf.float64)
  assert chunk == 170
  result = tfp_hessian.hessians_in_chunks(flow, z, progress=False)  # chunks of 170, 170 and 60 (padded to 170)
  _assert_equal_to_sweep(result, flow, z, "hessian", chunk)
  # Fewer points than a chunk: one chunk of just those.
  result = tfp_hessian.hessians_in_chunks(flow, z[:N], progress=False)
  _assert_equal_to_sweep(result, flow, z[:N], "hessian", N)


class _CountingSoftplus(tfb.Softplus):
  """A stock Softplus that counts how often its inverse is traced (a Python side effect runs at trace time)."""

  traces = 0

  def _inverse(self, y):
    _CountingSoftplus.traces += 1
    return super()._inverse(y)


def _traces(flow, points, **kwargs):
  """How often `hessians_in_chunks(flow, points, chunk_size=4, ...)` traces its step, and its result."""
  before = _CountingSoftplus.traces
  result = tfp_hessian.hessians_in_chunks(flow, points, chunk_size=4, progress=False, **kwargs)
  return _CountingSoftplus.traces - before, result


def test_one_trace_for_every_chunk_and_every_call_on_the_same_flow(tmp_path):
  """Counted where tracing runs Python: the step traces once for the first call on a flow, whatever the number of
  chunks, and never again for calls of the same chunk shape and `what`, whatever the input kind, with files or
  without (tf.function's retracing warning came from a new function per call)."""
  base = tfd.MultivariateNormalDiag(tf.zeros(3, tf.float64))
  flow = tfd.TransformedDistribution(base, _CountingSoftplus())
  z = flow.sample(11, seed=(1, 2))
  calls = {"1 chunk": z[:4], "3 chunks, the last short": z, "dataset": tf.data.Dataset.from_tensor_slices(z).batch(5),
           "numpy": z.numpy(), "again": z}
  traces = {}
  for name, points in calls.items():
    traces[name], result = _traces(flow, points)
    cases.assert_close(result, tfp_hessian.log_prob_hessian(flow, z[:len(result)]), 1e-12)
  traces["files"], result = _traces(flow, z, out=tmp_path / "run")
  cases.assert_close(result, tfp_hessian.log_prob_hessian(flow, z), 1e-12)
  assert traces.pop("1 chunk") > 0
  assert set(traces.values()) == {0}, f"retraced: {traces}"
  # Another `what` is another function: traced once, then reused.
  assert [_traces(flow, z, what="spectrum")[0] > 0 for _ in range(3)] == [True, False, False]


def test_a_kept_trace_computes_with_the_flow_and_kwargs_of_the_call():
  """A kept trace reads the flow's variables when it runs and takes the shared kwargs as arguments: a trained
  flow and another condition give their own results without a retrace. A tensor replaced inside the flow (here
  in a conditioner's closure) is baked into a trace, so it is traced anew."""
  flow, z, kwargs = test_flows.make_flow("conditional MAF, one [C] condition", np.float64)
  compiled = tf.function(tfp_hessian.log_prob_hessian, autograph=False)  # the reference: a trace of its own
  first = tfp_hessian.hessians_in_chunks(flow, z, chunk_size=4, progress=False, **kwargs)
  cases.assert_close(first, compiled(flow, z, **kwargs), 1e-12)
  step = next(iter(next(iter(chunk_step._STEPS[flow].values())).values()))[1]  # pylint: disable=protected-access
  weight = flow.bijector.parameters["shift_and_log_scale_fn"].trainable_weights[0]
  weight.assign_add(tf.fill(weight.shape, tf.constant(0.1, weight.dtype)))
  other = tf.nest.map_structure(lambda condition: condition + 1., kwargs)
  trained = tfp_hessian.hessians_in_chunks(flow, z, chunk_size=4, progress=False, **other)
  cases.assert_close(trained, compiled(flow, z, **other), 1e-12)
  assert np.max(np.abs(trained - first)) > 1e-3 * np.max(np.abs(first))
  assert step.experimental_get_tracing_count() == 1

  flow, z = cases.flow_and_points(cases.BIJECTORS["RealNVP"], np.float64, seed=1, num_points=N, edges=False)
  before = tfp_hessian.hessians_in_chunks(flow, z, chunk_size=4, progress=False)
  _nudge_conditioner(flow, 0.1)  # a new tensor in the closure of a plain-function conditioner
  after = tfp_hessian.hessians_in_chunks(flow, z, chunk_size=4, progress=False)
  cases.assert_close(after, tfp_hessian.log_prob_hessian(flow, z), 1e-12)
  assert np.max(np.abs(after - before)) > 1e-3 * np.max(np.abs(before))


def test_a_kept_trace_does_not_keep_its_flow_alive():
  flow, z = cases.flow_and_points(cases.BIJECTORS["RealNVP(DenseShiftAndLogScale)"], np.float64, seed=1,
                                  num_points=N, edges=False)
  tfp_hessian.hessians_in_chunks(flow, z, chunk_size=4, progress=False)
  assert flow in chunk_step._STEPS  # pylint: disable=protected-access
  alive = weakref.ref(flow)
  del flow
  gc.collect()
  assert alive() is None


# Files.

@pytest.mark.parametrize("what", ["hessian", "derivatives", "spectrum"])
def test_memory_mapped_files(tmp_path, what):
  flow, z = chunked_script.flow_and_points()
  out = tmp_path / "run"
  result = tfp_hessian.hessians_in_chunks(flow, tf.data.Dataset.from_tensor_slices(z).batch(3), what=what,
                                          chunk_size=CHUNK, out=out, progress=False)
  fields = chunked._FIELDS[what]  # pylint: disable=protected-access
  assert sorted(os.listdir(out)) == sorted([f"{field}.npy" for field in fields] + ["progress.json"])
  _assert_equal_to_sweep(result, flow, z, what, CHUNK)
  for field, array in zip(fields, _fields(result)):
    assert isinstance(array, np.memmap) and not array.flags.writeable, field
    assert os.path.samefile(array.filename, out / f"{field}.npy"), field
    np.testing.assert_array_equal(np.load(out / f"{field}.npy"), array, err_msg=field)
  progress = json.loads((out / "progress.json").read_text())
  assert progress["points_done"] == progress["num_points"] == len(z)
  assert (progress["what"], progress["event_size"], progress["dtype"]) == (what, cases.DIM, "float64")


def test_interrupted_run_resumes_and_gives_the_same_file(tmp_path, capfd):
  flow, z = chunked_script.flow_and_points()
  z = z.numpy()
  whole = tfp_hessian.hessians_in_chunks(flow, z, what="spectrum", chunk_size=CHUNK, out=tmp_path / "whole",
                                         progress=False)
  out = tmp_path / "interrupted"
  # tf.data reports the generator's exception as an UnknownError naming it.
  with pytest.raises(tf.errors.UnknownError, match="ReaderFailed: reader failed at row 9"):
    tfp_hessian.hessians_in_chunks(flow, chunked_script.failing_reader(z, 9), what="spectrum", chunk_size=CHUNK,
                                   out=out, progress=False)
  assert json.loads((out / "progress.json").read_text())["points_done"] == 8  # two chunks finished
  np.testing.assert_array_equal(np.load(out / "eigenvalues.npy")[:8], whole.eigenvalues[:8])
  capfd.readouterr()
  # Resumed from an array, with the same points: only the last chunk is computed.
  resumed = tfp_hessian.hessians_in_chunks(flow, z, what="spectrum", chunk_size=CHUNK, out=out, progress=True)
  assert re.search(r"\b8/11\b", capfd.readouterr().err), "the progress bar does not start at the 8 points done"
  for field in tfp_hessian.Spectrum._fields:
    np.testing.assert_array_equal(np.load(out / f"{field}.npy"), np.load(tmp_path / "whole" / f"{field}.npy"))
    np.testing.assert_array_equal(getattr(resumed, field), getattr(whole, field))
  # A finished run is returned as it is.
  again = tfp_hessian.hessians_in_chunks(flow, z, what="spectrum", chunk_size=CHUNK, out=out, progress=False)
  np.testing.assert_array_equal(again.eigenvectors, whole.eigenvectors)


def _subprocess_env():
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
  env["PYTHONPATH"] = os.pathsep.join([str(ROOT)] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
  return env


@pytest.mark.slow
def test_killed_run_resumes_and_gives_the_same_file(tmp_path):
  """SIGKILL after two chunks (no cleanup of any kind), then the same call in this process."""
  flow, z = chunked_script.flow_and_points()
  out = tmp_path / "killed"
  process = subprocess.Popen([sys.executable, str(SCRIPT), "killable", str(out), "9"], env=_subprocess_env(),
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE)
  progress, deadline = out / "progress.json", time.monotonic() + 120
  try:
    while not (progress.exists() and json.loads(progress.read_text())["points_done"] == 8):
      assert process.poll() is None, f"the run ended by itself: {process.communicate()}"
      assert time.monotonic() < deadline, "the run did not finish two chunks in 120 s"
      time.sleep(0.2)
  finally:
    process.send_signal(signal.SIGKILL)
    process.communicate()
  assert process.returncode == -signal.SIGKILL
  resumed = tfp_hessian.hessians_in_chunks(flow, z, chunk_size=CHUNK, out=out, progress=False)
  whole = tfp_hessian.hessians_in_chunks(flow, z, chunk_size=CHUNK, progress=False)
  np.testing.assert_array_equal(resumed, whole)
  np.testing.assert_array_equal(np.load(out / "hessian.npy"), whole)


@pytest.mark.slow
@pytest.mark.parametrize("what, where", [("hessian", "rows"), ("derivatives", "files"), ("spectrum", "record")])
def test_run_killed_while_writing_a_chunk_resumes_to_the_direct_results(tmp_path, what, where):
  """SIGKILL in the middle of the third chunk's write: half its rows in a file, one file of several written, or
  every row written and the new record not yet in place. The record still counts two chunks, and the same call
  resumes from there to the direct call's results."""
  out = tmp_path / "killed"
  completed = subprocess.run([sys.executable, str(SCRIPT), "killed_mid_write", str(out), what, where],
                             env=_subprocess_env(), capture_output=True, text=True, timeout=300, check=False)
  assert completed.returncode == -signal.SIGKILL, completed.stderr[-5000:]
  assert json.loads((out / "progress.json").read_text())["points_done"] == 2 * CHUNK
  if where == "rows":
    # Rows past the record's count were written: not trusted, and not kept.
    assert np.any(np.load(out / "hessian.npy")[2 * CHUNK] != 0)
  flow, z = chunked_script.flow_and_points()
  resumed = tfp_hessian.hessians_in_chunks(flow, z, what=what, chunk_size=CHUNK, out=out, progress=False)
  direct = tfp_hessian.hessians_in_chunks(flow, z, what=what, chunk_size=CHUNK, progress=False)
  fields = chunked._FIELDS[what]  # pylint: disable=protected-access
  for field, actual, wanted in zip(fields, _fields(resumed), _fields(direct)):
    np.testing.assert_array_equal(actual, wanted, err_msg=field)
    np.testing.assert_array_equal(np.load(out / f"{field}.npy"), wanted, err_msg=field)
  _assert_equal_to_sweep(resumed, flow, z, what, CHUNK)


def _run(tmp_path, what="hessian", flow_and_points=None, **kwargs):
  flow, z = flow_and_points or chunked_script.flow_and_points()
  return tfp_hessian.hessians_in_chunks(flow, z, what=what, chunk_size=CHUNK, out=tmp_path, progress=False,
                                        **kwargs)


def _interrupted_run(out):
  flow, z = chunked_script.flow_and_points()
  with pytest.raises(tf.errors.UnknownError, match="ReaderFailed: reader failed at row 5"):
    tfp_hessian.hessians_in_chunks(flow, chunked_script.failing_reader(z.numpy(), 5), chunk_size=CHUNK, out=out,
                                   progress=False)


@pytest.mark.parametrize("change, message", [
    ("what", r"what='hessian' there but 'spectrum' here"),
    ("dtype", r"dtype='float64' there but 'float32' here"),
    ("size", r"event_size=5 there but 3 here"),
    ("count", r"num_points=11 there but 10 here"),
])
def test_resume_with_another_request_is_refused(tmp_path, change, message):
  _interrupted_run(tmp_path)
  flow, z = chunked_script.flow_and_points()
  if change == "dtype":
    flow, z = cases.flow_and_points(cases.BIJECTORS["Chain"], np.float32, seed=3, num_points=N, edges=False)
  elif change == "size":
    base = tfd.MultivariateNormalDiag(tf.zeros(3, tf.float64))
    flow = tfd.TransformedDistribution(base, tfb.Softplus())
    z = flow.sample(N, seed=(0, 1))
  elif change == "count":
    z = z[:10]
  with pytest.raises(ValueError, match=message) as raised:
    _run(tmp_path, what="spectrum" if change == "what" else "hessian", flow_and_points=(flow, z))
  assert str(tmp_path / "progress.json") in str(raised.value)
  assert json.loads((tmp_path / "progress.json").read_text())["points_done"] == 4  # untouched


def test_resume_with_other_points_is_refused(tmp_path):
  _interrupted_run(tmp_path)
  flow, z = chunked_script.flow_and_points()
  moved = tf.tensor_scatter_nd_add(z, [[2, 1]], tf.constant([1e-9], tf.float64))
  with pytest.raises(ValueError, match=r"the first 4 points differ from those .*progress\.json"):
    _run(tmp_path, flow_and_points=(flow, moved))
  # The points after the ones done may change: they have not been computed yet.
  changed_later = tf.tensor_scatter_nd_add(z, [[9, 1]], tf.constant([1e-3], tf.float64))
  result = _run(tmp_path, flow_and_points=(flow, changed_later))
  cases.assert_close(result, tfp_hessian.log_prob_hessian(flow, changed_later), 1e-12)


def test_resume_with_another_flow_is_refused(tmp_path):
  _interrupted_run(tmp_path)
  _, z = chunked_script.flow_and_points()
  other, _ = cases.flow_and_points(cases.BIJECTORS["Chain"], np.float64, seed=4, num_points=N, edges=False)
  with pytest.raises(ValueError, match=r"computed with another flow"):
    _run(tmp_path, flow_and_points=(other, z))
  assert json.loads((tmp_path / "progress.json").read_text())["points_done"] == 4
  # The same flow rebuilt from scratch is the same flow.
  result = _run(tmp_path, flow_and_points=chunked_script.flow_and_points())
  cases.assert_close(result, tfp_hessian.log_prob_hessian(*chunked_script.flow_and_points()), 1e-12)


def _nudge_conditioner(flow, amount=1e-9):
  """Moves one weight of the flow's conditioner by `amount`: a Keras layer's variable, or a tensor a function holds
  (replaced by a new one)."""
  conditioner = flow.bijector.parameters["shift_and_log_scale_fn"]
  if isinstance(conditioner, tf.Module):
    weight = conditioner.trainable_weights[0]
    weight.assign_add(tf.fill(weight.shape, tf.constant(amount, weight.dtype)))
    return
  layers = next(cell.cell_contents for cell in conditioner.__closure__ if isinstance(cell.cell_contents, dict))
  key = next(iter(layers))
  (kernel, bias), *rest = layers[key]
  layers[key] = [(kernel + amount, bias), *rest]


@pytest.mark.parametrize("name", ["RealNVP(DenseShiftAndLogScale)", "MAF(MADE tanh)", "RealNVP"])
def test_flow_fingerprint_sees_layers_and_closures(name):
  """The same flow built twice has one fingerprint; one conditioner weight moved by 1e-9 changes it."""
  digests = []
  for nudge in (False, False, True):
    flow, z = cases.flow_and_points(cases.BIJECTORS[name], np.float64, seed=1, num_points=2, edges=False)
    if nudge:
      _nudge_conditioner(flow)
    digests.append(flow_digest.flow_digest(flow))
  assert digests[0] == digests[1] != digests[2]


def test_resume_refuses_a_damaged_directory(tmp_path):
  _interrupted_run(tmp_path)
  np.save(tmp_path / "hessian.npy", np.zeros([11, 5, 4]))
  with pytest.raises(ValueError, match=r"hessian\.npy.* has shape \(11, 5, 4\)"):
    _run(tmp_path)
  (tmp_path / "progress.json").write_text("{")
  with pytest.raises(ValueError, match=r"progress\.json.* is not valid JSON"):
    _run(tmp_path)
  (tmp_path / "progress.json").unlink()
  with pytest.raises(ValueError, match=r"hessian\.npy.* exists but .*progress\.json.* does not"):
    _run(tmp_path)
  (tmp_path / "file").write_text("")
  with pytest.raises(ValueError, match=r"`out` must be a directory; .*file.* is a file"):
    _run(tmp_path / "file")


# Progress bar.

def test_progress_bar_shows_points_per_second(capfd):
  flow, z = chunked_script.flow_and_points()
  tfp_hessian.hessians_in_chunks(flow, z, chunk_size=CHUNK, progress=True)
  err = capfd.readouterr().err
  assert "11/11" in err and "points/s" in err


def test_progress_off_writes_nothing(capfd, tmp_path):
  flow, z = chunked_script.flow_and_points()
  capfd.readouterr()
  tfp_hessian.hessians_in_chunks(flow, z, chunk_size=CHUNK, progress=False)
  tfp_hessian.hessians_in_chunks(flow, tf.data.Dataset.from_tensor_slices(z), what="spectrum", chunk_size=CHUNK,
                                 out=tmp_path, progress=False)
  captured = capfd.readouterr()
  assert captured.out == "" and captured.err == ""


# Bad input: every one is refused before any computation, and before `out` is created.

def _bad_inputs():
  flow, z = chunked_script.flow_and_points()
  array = z.numpy()
  batched = tfd.TransformedDistribution(tfd.MultivariateNormalDiag(tf.zeros([2, 5], tf.float64)), tfb.Softplus())
  dataset = tf.data.Dataset.from_tensor_slices
  return {
      "what": (ValueError, r"`what` must be one of \['derivatives', 'hessian', 'spectrum'\]; got 'hessians'",
               dict(what="hessians")),
      "chunk_size=0": (ValueError, r"`chunk_size` must be a positive integer; got 0", dict(chunk_size=0)),
      "chunk_size=-3": (ValueError, r"`chunk_size` must be a positive integer; got -3", dict(chunk_size=-3)),
      "chunk_size=2.5": (ValueError, r"`chunk_size` must be a positive integer; got 2.5", dict(chunk_size=2.5)),
      "chunk_size=True": (ValueError, r"`chunk_size` must be a positive integer; got True", dict(chunk_size=True)),
      "event size": (ValueError, r"`points` must have shape \[N, D\] with D = 5 .*; got shape \(11, 4\)",
                     dict(points=array[:, :4])),
      "rank 1": (ValueError, r"`points` must have shape \[N, D\] with D = 5 .*; got shape \(5,\)",
                 dict(points=array[0])),
      "rank 3": (ValueError, r"`points` must have shape \[N, D\] with D = 5 .*; got shape \(1, 11, 5\)",
                 dict(points=array[None])),
      "float32": (TypeError, r"`z` has dtype float32 but the distribution has dtype float64",
                  dict(points=array.astype(np.float32))),
      "int": (TypeError, r"must be a floating-point tensor of dtype float64; got dtype int64",
              dict(points=array.astype(np.int64))),
      "empty": (ValueError, r"`points` holds no points", dict(points=array[:0])),
      "dataset dtype": (TypeError, r"dataset yields dtype float32 but the distribution has dtype float64",
                        dict(points=dataset(array.astype(np.float32)))),
      "dataset shape": (ValueError, r"elements of shape \[D\] or \[b, D\] with D = 5; its elements have shape "
                                    r"\(4,\)", dict(points=dataset(array[:, :4]))),
      "dataset rank": (ValueError, r"its elements have shape \(\)", dict(points=dataset(array[:, 0]))),
      "dataset tuple": (TypeError, r"must yield single tensors", dict(points=dataset((array, array)))),
      "dataset infinite": (ValueError, r"dataset is infinite", dict(points=dataset(array).repeat())),
      "dataset empty": (ValueError, r"`points` holds no points", dict(points=dataset(array[:0]))),
      "distribution": (TypeError, r"must be a tfp.distributions.Distribution.*; got Softplus",
                       dict(distribution=tfb.Softplus())),
      "batch shape": (ValueError, r"batch shape \[\]; .* has batch shape \(2,\)", dict(distribution=batched)),
      "strategy": (TypeError, r"`strategy` must be a tf.distribute.Strategy or None; got str",
                   dict(strategy="mirrored")),
      "out": (ValueError, r"`out` must be a directory path or None; got int", dict(out=3)),
  }, flow, array


@pytest.mark.parametrize("case", list(_bad_inputs()[0]))
def test_bad_input_is_refused_before_any_work(case, tmp_path):
  bad, flow, array = _bad_inputs()
  error, message, changes = bad[case]
  arguments = dict(distribution=flow, points=array, out=tmp_path / "out", progress=False)
  arguments.update(changes)
  with pytest.raises(error, match=message):
    tfp_hessian.hessians_in_chunks(arguments.pop("distribution"), arguments.pop("points"), **arguments)
  assert not (tmp_path / "out").exists()


def test_refused_inside_tf_function():
  flow, z = chunked_script.flow_and_points()

  @tf.function(autograph=False)
  def inside(z):
    return tfp_hessian.hessians_in_chunks(flow, z, progress=False)

  with pytest.raises(RuntimeError, match="call it eagerly, not inside tf.function"):
    inside(z)


def test_readme_example_runs(tmp_path, monkeypatch):
  readme = (ROOT / "docs" / "usage.md").read_text(encoding="utf-8")  # the README's section, moved to docs/
  section = readme.split("## Many points and many devices", 1)[1].split("\n## ", 1)[0]
  example = re.search(r"^```python\n(.*?)^```$", section, re.M | re.S).group(1)
  monkeypatch.chdir(tmp_path)
  namespace = {}
  exec(compile(example, "docs/usage.md many-points example", "exec"), namespace)  # pylint: disable=exec-used
  flow, z = namespace["flow"], namespace["z"]
  cases.assert_close(namespace["hessian"], tfp_hessian.log_prob_hessian(flow, z), 1e-12)
  spectra = tfp_hessian.spectrum(tfp_hessian.log_prob_hessian(flow, z))
  cases.assert_close(namespace["spectra"].eigenvalues, spectra.eigenvalues, 1e-12, event_ndims=1)
  assert isinstance(namespace["spectra"].eigenvalues, np.memmap)
