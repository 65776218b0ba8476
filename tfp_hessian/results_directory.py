"""The directory of a resumable `hessians_in_chunks` run: result files that are checked before they are trusted.

`out` holds one `<field>.npy` per result field (`hessian.npy`; `log_prob.npy`, `gradient.npy`, ...), created at
full size and written in place through memory maps, chunk by chunk, and `progress.json`, the record of what is
done. Files get damaged behind a run's back (cut short by a partial copy or a full disk, zeroed, a bit flipped,
deleted), and damage is never passed on as results:

- the record holds the request, the points done and, per file, its shape, dtype, and the length and crc32 of
  its `.npy` header; per *region* of `region_points` consecutive points (the first call's chunk size, larger if
  needed to keep a run to at most 256 regions, so the record stays small), the sha256 of the points and the crc32
  of each file's rows; and a crc32 of itself;
- before a run resumes (or a finished one is returned), each file's header, shape, dtype and byte size are
  checked against the record by reading the file, never by opening it for writing
  (`np.lib.format.open_memmap(mode="r+")` extends a short file with zeros), and each finished region's rows are
  read back through a read-only memory map and their crc32 compared; before results are returned, the regions
  written since are read back the same way. One linear pass over the results at crc32's speed: for 10⁵ points
  at D = 32 (819 MB), 0.45–0.8 s against 23–92 s to compute them (`benchmarks/verify_cost.py`, BENCHMARKS.md);
- a record that contradicts itself, lacks a key, has an unknown format or fails its own crc32 is refused: nothing
  in the directory can be verified without it, and the way on is to start over;
- a result file that does not hold what the record says is refused, naming the file and what is wrong. Then
  `keep_verified_chunks(out)` keeps the regions that still verify in every file and drops the rest from the
  record, so that the same call recomputes from the last good chunk; or the directory is removed to start over.

A chunk's rows are flushed before the record counting them replaces the previous one (written to a temporary
file, fsynced, then `os.replace`d), so a run killed at any moment leaves a record that claims only rows that
are on disk.

Records of format 1 (before checksums) are refused with a message to start over: their files cannot be verified.
"""

import hashlib
import json
import math
import os
import pathlib
import zlib

import numpy as np

__all__ = ["FORMAT", "PROGRESS_FILE", "ResultsDirectory", "keep_verified_chunks"]

PROGRESS_FILE = "progress.json"
_FORMAT_PREFIX = "tfp_hessian.hessians_in_chunks/"
FORMAT = _FORMAT_PREFIX + "2"
_MAX_REGIONS = 256
_READ_BYTES = 64 * 2**20  # rows read (and checksummed) at a time
_KEYS = ("format", "what", "event_size", "dtype", "num_points", "points_done", "flow_sha256", "region_points", "files",
         "regions", "record_crc32")


class ResultsDirectory:
  """Results in memory-mapped `<field>.npy` files under `directory`, progress in `progress.json`.

  Opening it checks (and for a resumed run, verifies) everything already there; `start` is where the run goes on.

  Args:
    directory: a `pathlib.Path`, created if missing.
    fields: the result fields, in order: the files are `<field>.npy`.
    request: what this run computes (`what`, `event_size`, `dtype`, `num_points`), as JSON values: a record of
      another request is refused.
    shapes, dtypes: each field's full array shape (`num_points` rows) and numpy dtype.
    chunk_size: the points per chunk of this call, from which a new run's regions are sized.
  """

  def __init__(self, directory, fields, request, shapes, dtypes, chunk_size):
    if directory.exists() and not directory.is_dir():
      raise ValueError(f"`out` must be a directory; {str(directory)!r} is a file.")
    directory.mkdir(parents=True, exist_ok=True)
    self._directory = directory
    self._record_path = directory / PROGRESS_FILE
    self._names = [f"{field}.npy" for field in fields]
    self._paths = [directory / name for name in self._names]
    self._layouts = {name: {"shape": [int(n) for n in shape], "dtype": np.lib.format.dtype_to_descr(np.dtype(dtype))}
                     for name, shape, dtype in zip(self._names, shapes, dtypes)}
    num_points = request["num_points"]
    if not self._record_path.exists():
      existing = [path for path in self._paths if path.exists()]
      if existing:
        raise ValueError(f"{str(existing[0])!r} exists but {str(self._record_path)!r} does not: this is not a run of "
                         "hessians_in_chunks, or its record was lost, and without the record its results cannot be "
                         "verified. Use another `out` directory, or remove this one to start over.")
      region_points = max(int(chunk_size), -(-num_points // _MAX_REGIONS))
      self._record = dict(format=FORMAT, **request, points_done=0, flow_sha256=None, region_points=region_points,
                          files={}, regions=[])
      _write_record(self._record_path, self._record)
    else:
      self._record = _read_record(self._record_path)
      differences = [f"{key}={self._record.get(key)!r} there but {value!r} here" for key, value in request.items()
                     if self._record.get(key) != value]
      if differences:
        raise ValueError(f"Cannot resume in {str(directory)!r}: {str(self._record_path)!r} records another request "
                         f"({'; '.join(differences)}). Use another `out` directory, or remove this one to start "
                         "over.")
    self.start = self._record["points_done"]
    self._region_points = self._record["region_points"]
    self._points = _PointsDigests(self._region_points)
    if self.start == 0:
      self._arrays = [np.lib.format.open_memmap(path, mode="w+", dtype=np.dtype(layout["dtype"]),
                                                shape=tuple(layout["shape"]))
                      for path, layout in zip(self._paths, self._layouts.values())]
      self._record["files"] = {name: dict(layout, **_header_of(path))
                               for name, path, layout in zip(self._names, self._paths, self._layouts.values())}
      self._record["regions"] = []
      _write_record(self._record_path, self._record)
      self._verified = 0
      return
    if set(self._record["files"]) != set(self._names):
      raise _untrusted_record(self._record_path, f"records the files {sorted(self._record['files'])} for a run that "
                                                 f"writes {sorted(self._names)}")
    for name, path in zip(self._names, self._paths):
      recorded = {key: self._record["files"][name][key] for key in ("shape", "dtype")}
      if recorded != self._layouts[name]:
        raise _untrusted_record(self._record_path, f"records {name} as {recorded} for a run that writes "
                                                   f"{self._layouts[name]}")
    _verify(directory, self._paths, self._record, 0, "resume" if self.start < num_points else "return the results")
    self._verified = self.start // self._region_points  # the complete regions; the last one may grow
    self._arrays = [_memmap(path, self._record["files"][name], "r+") for name, path in zip(self._names, self._paths)]

  def consume_points_done(self, rows):
    """Takes the rows of the points already done, in order, to check them (`check_points`) and go on hashing."""
    self._points.update(rows)

  def check_points(self):
    """Refuses to resume if the points already done are not the ones given now."""
    digests = self._points.digests()
    for index, (region, digest) in enumerate(zip(self._record["regions"], digests)):
      if region["points_sha256"] != digest:
        first = index * self._region_points
        raise ValueError(f"Cannot resume in {str(self._directory)!r}: the first {self.start} points differ from those "
                         f"{str(self._record_path)!r} was computed from (the first difference is in points {first} "
                         f"to {region['end'] - 1}). Use another `out` directory, or remove this one to start over.")

  def check_flow(self, digest):
    """Refuses to resume with another flow (other parameters or structure); records the flow otherwise."""
    if self.start and digest != self._record["flow_sha256"]:
      raise ValueError(f"Cannot resume in {str(self._directory)!r}: {str(self._record_path)!r} was computed with "
                       "another flow (its structure or parameters differ). Use another `out` directory, or remove "
                       "this one to start over.")
    self._record["flow_sha256"] = digest

  def write(self, begin, results, points):
    """Writes a chunk's results at row `begin`, flushed, then the record that counts them and their checksums."""
    for index, rows in enumerate(results):
      self._write_rows(index, begin, rows)
    end = begin + len(points)
    self._points.update(points)
    regions = self._record["regions"]
    position = begin
    while position < end:
      region = position // self._region_points
      stop = min(end, (region + 1) * self._region_points)
      if region == len(regions):
        regions.append({"end": position, "points_sha256": None, "crc32": {name: 0 for name in self._names}})
      entry = regions[region]
      for name, array, rows in zip(self._names, self._arrays, results):
        part = np.ascontiguousarray(rows[position - begin:stop - begin], dtype=array.dtype)
        entry["crc32"][name] = zlib.crc32(part, entry["crc32"][name])
      entry["end"] = stop
      entry["points_sha256"] = self._points.digest_of(region)
      position = stop
    self._record["points_done"] = end
    _write_record(self._record_path, self._record)

  def _write_rows(self, index, begin, rows):
    array = self._arrays[index]
    array[begin:begin + len(rows)] = rows
    array.flush()

  def result(self):
    """Read-only memory maps of the files, once the regions written by this call read back as they were written."""
    self._arrays = None  # closes the writable maps
    _verify(self._directory, self._paths, self._record, self._verified, "return the results")
    return [np.load(path, mmap_mode="r") for path in self._paths]


def keep_verified_chunks(out):
  """Keeps the chunks of a damaged run in `out` that still verify, so that the same call recomputes the rest.

  When `hessians_in_chunks(..., out=out)` refuses a result file that does not hold what `progress.json` records
  (cut short, zeroed, changed, deleted), this finds the longest run of finished points, from the first, whose
  rows still match their recorded checksums in every file, drops everything after it from the record, and gives
  each file whose header is intact its full size back (rows after the kept ones are not claimed, and will be
  recomputed). The same `hessians_in_chunks` call then resumes after the kept points. Points are kept a region
  at a time (a chunk of the run's first call, or 1/256 of the points if that is more).

  Args:
    out: the `out` directory of a `hessians_in_chunks` run.

  Returns:
    The number of points kept, from the first: the next call resumes after them (0: it starts over).

  Raises:
    ValueError: if `out` holds no record, or one that cannot be trusted itself (then nothing can be verified:
      remove the directory to start over).

  >>> tfp_hessian.keep_verified_chunks("run/spectra")
  4000
  """
  directory = pathlib.Path(out)
  record_path = directory / PROGRESS_FILE
  if not record_path.is_file():
    raise ValueError(f"{str(record_path)!r} does not exist: {str(directory)!r} holds no run of hessians_in_chunks "
                     "whose chunks could be verified.")
  record = _read_record(record_path)
  names = sorted(record["files"])
  paths = [directory / name for name in names]
  kept = record["points_done"]
  if any(_file_problem(path, record["files"][name], 0, size=False) for name, path in zip(names, paths)):
    kept = 0  # a file without a header to trust: none of its rows either
  if kept:
    rows = min(_rows_on_disk(path, record["files"][name]) for name, path in zip(names, paths))
    for index, region in enumerate(record["regions"]):
      if region["end"] > rows or not _region_verifies(paths, record, index, rows):
        kept = index * record["region_points"]
        break
  if kept == record["points_done"] and not any(_file_problem(path, record["files"][name], kept)
                                               for name, path in zip(names, paths)):
    return kept
  record["points_done"] = kept
  record["regions"] = record["regions"][:-(-kept // record["region_points"])]
  _write_record(record_path, record)
  if kept:
    # Every header verified: the sizes alone are off, after the kept rows.
    for name, path in zip(names, paths):
      os.truncate(path, _full_size(record["files"][name]))
  return kept


# The record.

def _write_record(path, record):
  record["record_crc32"] = _record_crc32(record)
  temporary = path.with_name(path.name + ".tmp")
  with open(temporary, "w", encoding="utf-8") as file:
    json.dump(record, file, indent=1)
    file.flush()
    os.fsync(file.fileno())
  os.replace(temporary, path)


def _record_crc32(record):
  content = {key: value for key, value in record.items() if key != "record_crc32"}
  return zlib.crc32(json.dumps(content, sort_keys=True, separators=(",", ":")).encode())


def _untrusted_record(path, problem):
  return ValueError(f"{str(path)!r} {problem}: the record of the run in {str(path.parent)!r} cannot be trusted, nor "
                    f"the results it describes. Remove {str(path.parent)!r} (or use another `out` directory) to start "
                    "over.")


def _read_record(path):
  """The record at `path`, once it is known to be one of this format, complete, consistent and undamaged."""
  try:
    record = json.loads(path.read_text(encoding="utf-8"))
  except (OSError, UnicodeDecodeError) as error:
    raise _untrusted_record(path, f"cannot be read ({error})") from None
  except ValueError as error:
    raise _untrusted_record(path, f"is not valid JSON ({error})") from None
  if not isinstance(record, dict) or not isinstance(record.get("format"), str) or not record["format"].startswith(
      _FORMAT_PREFIX):
    raise ValueError(f"{str(path)!r} is not a progress file of hessians_in_chunks (format {FORMAT!r}); use another "
                     "`out` directory.")
  if record["format"] == _FORMAT_PREFIX + "1":
    raise ValueError(f"{str(path)!r} was written by an older tfp_hessian (format {record['format']!r}), without the "
                     "checksums this version verifies before it trusts a run's results. Remove "
                     f"{str(path.parent)!r} (or use another `out` directory) to start over.")
  if record["format"] != FORMAT:
    raise ValueError(f"{str(path)!r} has format {record['format']!r}, which this version of tfp_hessian does not read "
                     f"(it reads {FORMAT!r}; written by a newer version?). Resume with that version, or remove "
                     f"{str(path.parent)!r} (or use another `out` directory) to start over.")
  missing = [key for key in _KEYS if key not in record]
  if missing:
    raise _untrusted_record(path, f"is incomplete: it lacks {', '.join(repr(key) for key in missing)}")
  problem = _contradiction(record)
  if problem:
    raise _untrusted_record(path, f"contradicts itself: {problem}")
  if record["record_crc32"] != _record_crc32(record):
    raise _untrusted_record(path, f"is damaged: its content does not match its own crc32 ({record['record_crc32']!r})")
  return record


def _is_count(value, least=0):
  return isinstance(value, int) and not isinstance(value, bool) and value >= least


def _contradiction(record):
  """What makes `record` inconsistent in itself, or None."""
  num_points, done, per_region = record["num_points"], record["points_done"], record["region_points"]
  for key, least in (("num_points", 1), ("points_done", 0), ("region_points", 1)):
    if not _is_count(record[key], least):
      return f"{key}={record[key]!r} is not an integer >= {least}"
  if done > num_points:
    return f"it counts points_done={done} of num_points={num_points}, more points done than there are"
  files, regions = record["files"], record["regions"]
  if not isinstance(files, dict) or not isinstance(regions, list):
    return "'files' is not a mapping or 'regions' not a list"
  if done and not isinstance(record["flow_sha256"], str):
    return f"it counts points_done={done} but records no flow"
  for name, info in files.items():
    if not (isinstance(info, dict) and isinstance(info.get("shape"), list) and info["shape"][:1] == [num_points]
            and all(_is_count(n) for n in info["shape"]) and isinstance(info.get("dtype"), str)
            and _is_count(info.get("header_bytes"), 1) and _is_count(info.get("header_crc32"))):
      return f"the entry of {name!r} in 'files' is not a shape of {num_points} rows, a dtype and a header"
  if done and not files:
    return f"it counts points_done={done} but records no files"
  if len(regions) != -(-done // per_region):
    return (f"it counts points_done={done} in regions of {per_region} points, which is "
            f"{-(-done // per_region)} regions, but records {len(regions)}")
  for index, region in enumerate(regions):
    end = min((index + 1) * per_region, num_points) if index + 1 < len(regions) else done
    if not (isinstance(region, dict) and region.get("end") == end and isinstance(region.get("points_sha256"), str)
            and isinstance(region.get("crc32"), dict) and set(region["crc32"]) == set(files)
            and all(_is_count(value) for value in region["crc32"].values())):
      return f"region {index} is not recorded as ending at point {end} with a points digest and a crc32 per file"
  return None


# The files.

def _header_of(path):
  """The length and crc32 of the `.npy` header of the file at `path` (as written by numpy, read back)."""
  with open(path, "rb") as file:
    version = np.lib.format.read_magic(file)
    _read_header(file, version)
    length = file.tell()
    file.seek(0)
    return {"header_bytes": length, "header_crc32": zlib.crc32(file.read(length))}


def _read_header(file, version):
  if version == (1, 0):
    return np.lib.format.read_array_header_1_0(file)
  if version == (2, 0):
    return np.lib.format.read_array_header_2_0(file)
  raise ValueError(f".npy format version {version} (tfp_hessian writes 1.0 or 2.0)")


def _full_size(info):
  return info["header_bytes"] + math.prod(info["shape"]) * np.dtype(info["dtype"]).itemsize


def _row_bytes(info):
  return math.prod(info["shape"][1:]) * np.dtype(info["dtype"]).itemsize


def _rows_on_disk(path, info):
  return (os.path.getsize(path) - info["header_bytes"]) // _row_bytes(info)


def _file_problem(path, info, done, size=True):
  """What is wrong with the `.npy` file at `path` against its record entry `info` (`done` rows finished), or None.

  Reads the file and changes nothing. `size=False` checks the header only.
  """
  if not path.is_file():
    return f"is missing, but the record counts {done} points done in it" if done else "is missing"
  shape, dtype = tuple(info["shape"]), np.dtype(info["dtype"])
  try:
    with open(path, "rb") as file:
      version = np.lib.format.read_magic(file)
      found_shape, fortran_order, found_dtype = _read_header(file, version)
      length = file.tell()
      file.seek(0)
      crc = zlib.crc32(file.read(length))
  except Exception as error:  # pylint: disable=broad-except
    # numpy parses the header with `tokenize` and `ast.literal_eval`: damaged bytes raise whatever those raise
    # (ValueError, SyntaxError, tokenize.TokenError, ...), and every one of them means the same here.
    return f"does not start with a readable .npy header ({type(error).__name__}: {error})"
  if found_shape != shape or found_dtype != dtype or fortran_order:
    return (f"has shape {found_shape} and dtype {found_dtype}{' (Fortran order)' if fortran_order else ''}, but the "
            f"record and this call say shape {shape} and dtype {dtype}")
  if length != info["header_bytes"] or crc != info["header_crc32"]:
    return (f"has a header of {length} bytes with crc32 {crc:#010x}, but the one written was {info['header_bytes']} "
            f"bytes with crc32 {info['header_crc32']:#010x}")
  found, expected = os.path.getsize(path), _full_size(info)
  if size and found != expected:
    row = _row_bytes(info)
    rows = max(0, (found - length) // row)
    cut = f": only {rows} whole rows of the {done} recorded done are there" if rows < done else ""
    return (f"has {found} bytes, but should have {expected}, a {length}-byte header and {shape[0]} rows of {row} bytes "
            f"({shape} {dtype}). It was {'cut short' if found < expected else 'added to'}{cut}")
  return None


def _memmap(path, info, mode, rows=None):
  """A memory map of the first `rows` (default: all) rows of a file whose size was checked: never grown, unlike
  `open_memmap(mode="r+")`."""
  shape = tuple(info["shape"])
  return np.memmap(path, dtype=np.dtype(info["dtype"]), mode=mode, offset=info["header_bytes"],
                   shape=shape if rows is None else (rows,) + shape[1:])


def _region_crc32(array, begin, end):
  """crc32 of rows `[begin, end)` of a memory-mapped array, read `_READ_BYTES` at a time."""
  step = max(1, _READ_BYTES // max(1, array[:1].nbytes))
  crc = 0
  for first in range(begin, end, step):
    crc = zlib.crc32(array[first:min(end, first + step)], crc)
  return crc


def _region_verifies(paths, record, index, rows):
  """Whether region `index` reads back as recorded in every file (of which `rows` rows are on disk)."""
  region = record["regions"][index]
  begin = index * record["region_points"]
  for path in paths:
    array = _memmap(path, record["files"][path.name], "r", rows)
    if _region_crc32(array, begin, region["end"]) != region["crc32"][path.name]:
      return False
  return True


def _verify(directory, paths, record, first, action):
  """Checks every file's header and size, then reads back regions `first`, ... of every file: refuses the first
  file that is not what `record` says, or region whose crc32 is not the recorded one."""
  for path in paths:
    problem = _file_problem(path, record["files"][path.name], record["points_done"])
    if problem:
      raise _damaged(directory, path, problem, action)
  arrays = {path: _memmap(path, record["files"][path.name], "r") for path in paths}
  for index in range(first, len(record["regions"])):
    region, begin = record["regions"][index], index * record["region_points"]
    for path, array in arrays.items():
      found, recorded = _region_crc32(array, begin, region["end"]), region["crc32"][path.name]
      if found != recorded:
        verified = f"the first {begin} points verify in every file" if begin else "no chunk before them to keep"
        raise _damaged(directory, path, f"holds rows {begin} to {region['end'] - 1} with crc32 {found:#010x}, but "
                                        f"{recorded:#010x} was recorded when they were written: the file changed "
                                        f"since ({verified})", action)


def _damaged(directory, path, problem, action):
  return ValueError(f"Cannot {action} in {str(directory)!r}: {str(path)!r} {problem}. It does not hold what "
                    f"{PROGRESS_FILE} records, and is not passed on as results. To recompute from the last good "
                    f"chunk, call `tfp_hessian.keep_verified_chunks({str(directory)!r})`, then the same call again; to "
                    f"start over, remove {str(directory)!r}.")


class _PointsDigests:
  """sha256 of the points of each region of `region_points` rows, fed the rows in order."""

  def __init__(self, region_points):
    self._region_points = region_points
    self._rows = 0
    self._done = []  # hex digests of the complete regions
    self._current = hashlib.sha256()

  def update(self, rows):
    rows = np.ascontiguousarray(rows)
    while len(rows):
      room = self._region_points - self._rows % self._region_points
      self._current.update(rows[:room])
      self._rows += len(rows[:room])
      rows = rows[room:]
      if self._rows % self._region_points == 0:
        self._done.append(self._current.hexdigest())
        self._current = hashlib.sha256()

  def digest_of(self, region):
    """The digest of region `region`'s rows so far (complete, or the current one)."""
    return self._done[region] if region < len(self._done) else self._current.hexdigest()

  def digests(self):
    """The digests of every region fed so far, the last one possibly partial."""
    return self._done + ([self._current.hexdigest()] if self._rows % self._region_points else [])
