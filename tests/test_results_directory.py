"""`tfp_hessian.results_directory`: a resumable run's files are checked before they are trusted.

Every file of a run (each result file and `progress.json`) is truncated, zeroed, bit-flipped or deleted, in its
header, at a chunk boundary and inside a chunk, for each `what`, in an interrupted run (8 of 11 points done, in
chunks of 4) and a finished one. Each case ends in a clear error naming the file (and then, for a result file,
`keep_verified_chunks` and the same call give the results of the direct call) or, where the damage touched
nothing that the record claims, in the results of the direct call: never in other numbers. The direct call is
`hessians_in_chunks` with the same chunks in memory, so results are compared bitwise.
"""

import functools
import json
import os
import pathlib
import re
import shutil
import zlib

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_probability as tfp

import tfp_hessian
from tfp_hessian import chunked, results_directory

import cases
import chunked_script

tfb, tfd = tfp.bijectors, tfp.distributions

CHUNK = chunked_script.CHUNK  # 4 points: chunks end at 4, 8 and 11
N = chunked_script.NUM_POINTS
INTERRUPTED_AT = 9  # the reader fails at this point: two chunks (8 points) are done
WHATS = ("hessian", "derivatives", "spectrum")
KINDS = ("truncate", "zero", "bitflip", "delete")
# Where the damage starts, in rows of a result file (None: in the header, at byte 10).
FILE_POSITIONS = {"header": None, "chunk boundary": 4, "inside a chunk": 5.5, "not yet done": 9}
RECORD_POSITIONS = ("line start", "mid-line")  # a record has no chunks: the line at half its length


@functools.lru_cache(maxsize=None)
def _flow_and_points():
  """One flow for the whole module: its per-chunk function is traced once per `what`, not once per case."""
  return chunked_script.flow_and_points()


def _run(out, what="hessian", points=None, **kwargs):
  flow, z = _flow_and_points()
  return tfp_hessian.hessians_in_chunks(flow, z if points is None else points, what=what, chunk_size=CHUNK, out=out,
                                        progress=False, **kwargs)


def _fields(result):
  return list(result) if isinstance(result, tuple) else [result]


def _assert_equal(result, expected):
  for actual, wanted in zip(_fields(result), _fields(expected)):
    assert isinstance(actual, np.memmap)
    np.testing.assert_array_equal(actual, wanted)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
  """Per `what`: the direct call's results, and an interrupted and a finished run's directories, never changed."""
  flow, z = _flow_and_points()
  made = {}
  for what in WHATS:
    root = tmp_path_factory.mktemp(what)
    expected = tfp_hessian.hessians_in_chunks(flow, z, what=what, chunk_size=CHUNK, progress=False)
    with pytest.raises(tf.errors.UnknownError, match=f"reader failed at row {INTERRUPTED_AT}"):
      _run(root / "interrupted", what, points=chunked_script.failing_reader(z.numpy(), INTERRUPTED_AT))
    _run(root / "finished", what)
    made[what] = expected, root
  return made


def _snapshot(directory):
  return {path.name: path.read_bytes() for path in sorted(directory.iterdir())}


def _position(path, position):
  """The byte where damage at `position` (a name, or a row) starts in the file at `path`."""
  if path.name == results_directory.PROGRESS_FILE:
    text = path.read_bytes()
    line = text.rindex(b"\n", 0, len(text) // 2) + 1
    return line if position == "line start" else line + 3
  rows = FILE_POSITIONS.get(position, position)
  if rows is None:
    return 10
  array = np.load(path, mmap_mode="r")
  return array.offset + int(rows * array[:1].nbytes)


def _damage(path, kind, position):
  if kind == "delete":
    path.unlink()
    return
  start = _position(path, position)
  if kind == "truncate":
    os.truncate(path, start)
    return
  # In place, as another process would: rewriting the whole file would empty it for a moment, and a run writing
  # through its memory map in that moment dies of SIGBUS (a page wholly past the end of the file).
  with open(path, "r+b") as file:
    file.seek(start)
    data = bytearray(file.read(8))
    if kind == "zero":
      data = bytes(len(data))
    else:
      data[0] ^= 0x01  # the lowest bit: in a float64's first byte, one ulp
      data = data[:1]
    file.seek(start)
    file.write(data)


# The error's naming of what is wrong, per kind of damage and where it is.
_MESSAGES = {
    ("truncate", "header"): r"does not start with a readable \.npy header",
    ("zero", "header"): r"does not start with a readable \.npy header|has a header of .* but the one written",
    ("bitflip", "header"): r"does not start with a readable \.npy header|has a header of .* but the one written",
    "truncate": r"has \d+ bytes, but should have \d+.* It was cut short",
    "zero": r"holds rows \d+ to \d+ with crc32 0x[0-9a-f]{8}, but 0x[0-9a-f]{8} was recorded",
    "bitflip": r"holds rows \d+ to \d+ with crc32 0x[0-9a-f]{8}, but 0x[0-9a-f]{8} was recorded",
    "delete": r"is missing, but the record counts \d+ points done in it",
}


def _cases():
  for what in WHATS:
    fields = chunked._FIELDS[what]  # pylint: disable=protected-access
    for target in [f"{field}.npy" for field in fields] + [results_directory.PROGRESS_FILE]:
      positions = RECORD_POSITIONS if target == results_directory.PROGRESS_FILE else list(FILE_POSITIONS)
      for state in ("interrupted", "finished"):
        for kind in KINDS:
          for position in positions if kind != "delete" else ["-"]:
            if position == "not yet done" and state == "finished":
              continue
            yield pytest.param(what, state, target, kind, position, id=f"{what}-{state}-{target}-{kind}-{position}")


@pytest.mark.parametrize("what, state, target, kind, position", list(_cases()))
def test_damage_is_refused_or_harmless(runs, tmp_path, what, state, target, kind, position):
  expected, root = runs[what]
  out = tmp_path / "run"
  shutil.copytree(root / state, out)
  path = out / target
  _damage(path, kind, position)
  damaged = _snapshot(out)
  is_record = target == results_directory.PROGRESS_FILE
  # Harmless only where the record claims nothing: the rows after an interrupted run's last chunk, in place.
  harmless = position == "not yet done" and kind in ("zero", "bitflip")
  if harmless:
    _assert_equal(_run(out, what), expected)
    return
  with pytest.raises(ValueError) as raised:
    _run(out, what)
  message = str(raised.value)
  assert str(path) in message, message
  assert _snapshot(out) == damaged, "a refusal changed the directory"
  if is_record:
    # Without its record nothing can be verified: the way on is to start over, and nothing is kept.
    assert re.search(r"start over|another `out` directory", message), message
    with pytest.raises(ValueError):
      tfp_hessian.keep_verified_chunks(out)
    return
  pattern = _MESSAGES.get((kind, position), _MESSAGES[kind])
  assert re.search(pattern, message), message
  assert f"tfp_hessian.keep_verified_chunks({str(out)!r})" in message and "to start over, remove" in message
  kept = tfp_hessian.keep_verified_chunks(out)
  assert kept == (0 if kind == "delete" or position == "header" else 8 if position == "not yet done" else 4)
  _assert_equal(_run(out, what), expected)
  for field, array in zip(chunked._FIELDS[what], _fields(expected)):  # pylint: disable=protected-access
    np.testing.assert_array_equal(np.load(out / f"{field}.npy"), array)


def test_the_issue_case_a_truncated_file_of_a_finished_run(tmp_path):
  """1,000 points of a D = 4 flow in chunks of 100, `hessian.npy` cut to 200 bytes: once returned as zeros."""
  flow = tfd.TransformedDistribution(tfd.MultivariateNormalDiag(tf.zeros(4, tf.float64)),
                                     tfb.Chain([tfb.Softplus(), tfb.Shift(tf.constant(1., tf.float64))]))
  z = flow.sample(1000, seed=(1, 2))
  run = lambda: tfp_hessian.hessians_in_chunks(flow, z, chunk_size=100, out=tmp_path, progress=False)
  direct = tfp_hessian.log_prob_hessian(flow, z)
  cases.assert_close(run(), direct, 1e-12)
  os.truncate(tmp_path / "hessian.npy", 200)
  for _ in range(2):  # and the refusal changed nothing: refused again
    with pytest.raises(ValueError, match=r"hessian\.npy' has 200 bytes, but should have 128128.* cut short: only 0 "
                                         r"whole rows of the 1000 recorded done"):
      run()
  assert os.path.getsize(tmp_path / "hessian.npy") == 200
  assert tfp_hessian.keep_verified_chunks(tmp_path) == 0
  cases.assert_close(run(), direct, 1e-12)


@pytest.mark.parametrize("kind, message", [
    ("zero", r"hessian\.npy' holds rows 0 to 3 with crc32"),
    ("truncate", r"hessian\.npy' has 528 bytes, but should have 2328.* cut short: only 2 whole rows of the 11"),
])
def test_damage_during_a_run_is_caught_before_results_are_returned(tmp_path, kind, message):
  """The points' reader damages rows already written (as another process might): the run finishes, and its
  results are refused when they are read back."""
  flow, z = _flow_and_points()
  z = z.numpy()

  def rows():
    for row, point in enumerate(z):
      if row == 9:
        _damage(tmp_path / "hessian.npy", kind, 2)
      yield point

  dataset = tf.data.Dataset.from_generator(rows, output_signature=tf.TensorSpec([5], tf.float64))
  dataset = dataset.apply(tf.data.experimental.assert_cardinality(N))
  with pytest.raises(ValueError, match=r"Cannot return the results in .*" + message):
    _run(tmp_path, points=dataset)
  assert tfp_hessian.keep_verified_chunks(tmp_path) == 0
  cases.assert_close(_run(tmp_path), tfp_hessian.log_prob_hessian(flow, z), 1e-12)


def test_every_bit_of_the_record_and_of_a_header_is_checked(runs, tmp_path):
  """One bit flipped in any byte of `progress.json` is refused (or, in JSON whitespace, reads as the same record);
  one flipped in any byte of a result file's header is found."""
  _, root = runs["spectrum"]
  record_path = root / "interrupted" / results_directory.PROGRESS_FILE
  record = results_directory._read_record(record_path)  # pylint: disable=protected-access
  text = record_path.read_bytes()
  path = tmp_path / results_directory.PROGRESS_FILE
  refused = 0
  for index in range(len(text)):
    path.write_bytes(text[:index] + bytes([text[index] ^ 0x01]) + text[index + 1:])
    try:
      assert results_directory._read_record(path) == record, index  # pylint: disable=protected-access
    except ValueError as error:
      assert str(path) in str(error)
      refused += 1
  assert refused == len(text)  # no whitespace byte flips into whitespace
  info = record["files"]["eigenvectors.npy"]
  data = (root / "interrupted" / "eigenvectors.npy").read_bytes()
  path = tmp_path / "eigenvectors.npy"
  for index in range(info["header_bytes"]):
    path.write_bytes(data[:index] + bytes([data[index] ^ 0x01]) + data[index + 1:])
    assert results_directory._file_problem(path, info, 8) is not None, index  # pylint: disable=protected-access


def _rewrite_record(out, **changes):
  """The record with `changes` (None: the key removed), its own crc32 made to match: damage no checksum sees."""
  path = out / results_directory.PROGRESS_FILE
  record = json.loads(path.read_text())
  record.update(changes)
  record = {key: value for key, value in record.items() if value is not None}
  record["record_crc32"] = results_directory._record_crc32(record)  # pylint: disable=protected-access
  path.write_text(json.dumps(record))


@pytest.mark.parametrize("changes, message", [
    (dict(points_done=4000), r"contradicts itself: it counts points_done=4000 of num_points=11, more points done "
                             r"than there are"),
    (dict(points_done=5), r"contradicts itself: it counts points_done=5 in regions of 4 points, which is 2 regions, "
                          r"but records 2|contradicts itself: region 1 is not recorded as ending at point 5"),
    (dict(points_done=-1), r"contradicts itself: points_done=-1 is not an integer >= 0"),
    (dict(region_points=3), r"contradicts itself: it counts points_done=8 in regions of 3 points, which is 3 regions"),
    (dict(regions=[]), r"contradicts itself: it counts points_done=8 in regions of 4 points, which is 2 regions, but "
                       r"records 0"),
    (dict(files={}), r"contradicts itself: it counts points_done=8 but records no files"),
    (dict(points_done=None), r"is incomplete: it lacks 'points_done'"),
    (dict(regions=None, what=None), r"is incomplete: it lacks 'what', 'regions'"),
    (dict(format="tfp_hessian.hessians_in_chunks/3"), r"has format 'tfp_hessian.hessians_in_chunks/3', which this "
                                                      r"version of tfp_hessian does not read .* to start over"),
    (dict(format="tfp_hessian.hessians_in_chunks/1"), r"was written by an older tfp_hessian .* without the checksums "
                                                      r".* to start over"),
    (dict(format="something else"), r"is not a progress file of hessians_in_chunks"),
])
def test_a_record_that_contradicts_itself_is_refused(runs, tmp_path, changes, message):
  _, root = runs["hessian"]
  out = tmp_path / "run"
  shutil.copytree(root / "interrupted", out)
  _rewrite_record(out, **changes)
  for call in (lambda: _run(out), lambda: tfp_hessian.keep_verified_chunks(out)):
    with pytest.raises(ValueError, match=message) as raised:
      call()
    assert str(out / results_directory.PROGRESS_FILE) in str(raised.value)


def test_an_old_record_of_format_1_is_refused(tmp_path):
  """Format 1 (before checksums) as its writer left it: refused, saying to start over."""
  tmp_path.joinpath("progress.json").write_text(json.dumps(dict(
      format="tfp_hessian.hessians_in_chunks/1", what="hessian", event_size=5, dtype="float64", num_points=N,
      points_done=8, points_sha256="0" * 64, flow_sha256="0" * 64)))
  np.lib.format.open_memmap(tmp_path / "hessian.npy", mode="w+", dtype=np.float64, shape=(N, 5, 5))
  with pytest.raises(ValueError, match=r"progress\.json' was written by an older tfp_hessian \(format "
                                       r"'tfp_hessian.hessians_in_chunks/1'\), without the checksums.*Remove .* to "
                                       r"start over"):
    _run(tmp_path)


def test_a_resume_in_other_chunks_keeps_the_regions(runs, tmp_path):
  """Checksums are per region of the first call's chunk size, so a resumed run in chunks of 3 records the same
  regions, and a flipped bit in what it wrote is found."""
  expected, root = runs["hessian"]
  out = tmp_path / "run"
  shutil.copytree(root / "interrupted", out)
  flow, z = _flow_and_points()
  resumed = tfp_hessian.hessians_in_chunks(flow, z, chunk_size=3, out=out, progress=False)
  cases.assert_close(resumed, expected, 1e-12)
  record = json.loads((out / "progress.json").read_text())
  assert [region["end"] for region in record["regions"]] == [4, 8, 11] and record["region_points"] == 4
  _damage(out / "hessian.npy", "bitflip", "not yet done")
  with pytest.raises(ValueError, match=r"hessian\.npy' holds rows 8 to 10 .* \(the first 8 points verify in every "
                                       r"file\)"):
    tfp_hessian.hessians_in_chunks(flow, z, chunk_size=3, out=out, progress=False)


def test_regions_keep_the_record_small(tmp_path):
  """At most 256 regions: chunks of 1 over 100,000 points are checksummed 391 points at a time."""
  request = dict(what="hessian", event_size=1, dtype="float64", num_points=100_000)
  results_directory.ResultsDirectory(tmp_path, ["hessian"], request, [(100_000, 1, 1)], [np.float64], chunk_size=1)
  record = json.loads((tmp_path / "progress.json").read_text())
  assert record["region_points"] == 391 == -(-100_000 // 256)
  assert record["files"]["hessian.npy"]["header_bytes"] == np.load(tmp_path / "hessian.npy", mmap_mode="r").offset
  assert record["record_crc32"] == zlib.crc32(json.dumps(
      {key: value for key, value in record.items() if key != "record_crc32"}, sort_keys=True,
      separators=(",", ":")).encode())


def test_an_intact_run_is_kept_whole(runs, tmp_path):
  _, root = runs["derivatives"]
  for state, done in (("interrupted", 8), ("finished", N)):
    shutil.copytree(root / state, tmp_path / state)
    before = _snapshot(tmp_path / state)
    assert tfp_hessian.keep_verified_chunks(tmp_path / state) == done
    assert _snapshot(tmp_path / state) == before
  with pytest.raises(ValueError, match=r"progress\.json' does not exist"):
    tfp_hessian.keep_verified_chunks(tmp_path / "nothing")


def test_keep_verified_chunks_gives_a_cut_file_its_size_back(runs, tmp_path):
  """Cut inside the second chunk: the first chunk is kept, the file grown back to its size, the rest recomputed."""
  expected, root = runs["spectrum"]
  out = pathlib.Path(tmp_path / "run")
  shutil.copytree(root / "finished", out)
  _damage(out / "eigenvalues.npy", "truncate", "inside a chunk")
  assert tfp_hessian.keep_verified_chunks(out) == 4
  assert os.path.getsize(out / "eigenvalues.npy") == os.path.getsize(root / "finished" / "eigenvalues.npy")
  assert json.loads((out / "progress.json").read_text())["points_done"] == 4
  _assert_equal(_run(out, "spectrum"), expected)
