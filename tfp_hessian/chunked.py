"""Hessians (or spectra) of many points: bounded-memory chunks, resumable files, `tf.distribute`.

`hessians_in_chunks` runs the sweep of `log_prob_and_derivatives` over `N` points, `chunk_size` at a time, so
that device memory holds one chunk's working set however large `N` is:

- the points are a `[N, D]` array or tensor, or a `tf.data.Dataset` of `[D]` or `[b, D]` elements;
- each chunk is one call of one `tf.function`, traced once: every chunk has the same shape, the last one padded
  with copies of its own last point (a point in the flow's support, so padding never raises under
  `validate_args=True`), and the padding's results dropped. The function is kept with the flow (weakly), so
  another call on the same flow, strategy and chunk shape reuses its trace;
- with `out`, results go chunk by chunk into memory-mapped `.npy` files, flushed, and a small `progress.json`
  records how many points are done. An interrupted run keeps what it finished; the same call again resumes
  after the last finished chunk, and a call that asks for something else is refused. What is on disk is
  checked against the record (headers, sizes, a checksum per chunk) before it is resumed or returned, and a
  damaged file is refused, never passed on as results (`tfp_hessian.results_directory`);
- with `strategy` (a `tf.distribute.Strategy`), each chunk is split across the replicas in order
  (`experimental_distribute_values_from_function`), computed by `strategy.run` and gathered back in point order
  (`strategy.gather`). Under `MultiWorkerMirroredStrategy` every worker reads the same points, computes its
  replicas' share of each chunk and receives the whole chunk; only the chief writes `out`.

This module plans the chunks and runs them; the points are read as rows by `point_sources`, each chunk is computed
by `chunk_step` (the `tf.function`, across the replicas), files are kept by `results_directory`, and the flow is
fingerprinted (to resume, and to reuse a trace) by `flow_digest`.

Default chunk size. Per replica, the number of points whose working set fits `MEMORY_BUDGET` (256 MiB):

.. math::

    \\text{chunk} = \\min\\Bigl(4096,\\ \\max\\Bigl(1,\\ \\Bigl\\lfloor \\frac{256\\,\\text{MiB}}
        {c_{\\text{what}} \\cdot D^2 \\cdot \\text{itemsize}} \\Bigr\\rfloor\\Bigr)\\Bigr),
    \\qquad c_{\\text{hessian}} = c_{\\text{derivatives}} = 48,\\ c_{\\text{spectrum}} = 56,

times `strategy.num_replicas_in_sync`. `c` counts the `[D, D]`-sized tensors per point alive at once: the Hessian
being swept and its products with a layer's Jacobian, the Jacobians and hidden-layer derivatives that coupling
and autoregressive layers keep from the inverse pass to the backward one, the result and its host copy; a
spectrum adds the eigenvectors and `eigh`'s workspace. It is calibrated on 4-layer flows (each layer followed by
a `Permute`), measuring the growth of the process's peak resident memory over an 8-point run: RealNVP with a
`[64, 64]` `DenseShiftAndLogScale`, D = 64, float64: 164 MB; MAF with a `[64, 64]` MADE, D = 128, float32:
251 MB; RealNVP, D = 128, spectrum, float64: 117 MB; Softplus + ScaleMatvecTriL, D = 256, float32: 62 MB. Deeper
coupling or autoregressive flows keep more per point: pass a smaller `chunk_size` for those, and for
autodiff-fallback layers that are not coordinatewise, which form a `[D, D, D]` tensor per point. The 4096 cap
keeps the progress bar and the resume points frequent when `D` is small.

>>> hessian = tfp_hessian.hessians_in_chunks(flow, z)                     # [N, D, D] numpy array
>>> result = tfp_hessian.hessians_in_chunks(flow, dataset, what="spectrum", out="run/spectra")
>>> result.eigenvalues                                                    # [N, D], memory-mapped
"""

import os
import pathlib

import numpy as np
import tensorflow as tf
import tqdm

from tfp_hessian import chunk_step, point_sources, private_api, results_directory, sweep
from tfp_hessian.flow_digest import flow_digest
from tfp_hessian.stiff_sloppy import Spectrum
from tfp_hessian.sweep import LogProbDerivatives

__all__ = ["MEMORY_BUDGET", "default_chunk_size", "hessians_in_chunks"]

MEMORY_BUDGET = 256 * 2**20
_MAX_CHUNK = 4096
# `[D, D]` matrices per point alive at once (see the module docstring).
_MATRICES_PER_POINT = {"hessian": 48, "derivatives": 48, "spectrum": 56}
# The files of each `what`, in the order of the result's fields.
_FIELDS = {
    "hessian": ("hessian",),
    "derivatives": LogProbDerivatives._fields,
    "spectrum": Spectrum._fields,
}


def default_chunk_size(event_size, dtype, what="hessian"):
  """Points per replica per chunk whose working set fits `MEMORY_BUDGET` (formula: module docstring).

  Args:
    event_size: D.
    dtype: float32 or float64 (anything `tf.as_dtype` accepts).
    what: "hessian", "derivatives" or "spectrum".

  Returns:
    An int in `[1, 4096]`.

  >>> default_chunk_size(100, tf.float64)        # 256 MiB / (48 · 100² · 8 B)
  69
  """
  _check_what(what)
  itemsize = tf.as_dtype(dtype).size
  per_point = _MATRICES_PER_POINT[what] * event_size**2 * itemsize
  return int(min(_MAX_CHUNK, max(1, MEMORY_BUDGET // per_point)))


def hessians_in_chunks(distribution, points, *, what="hessian", chunk_size=None, out=None, progress=True,
                       strategy=None, **kwargs):
  """Hessians (or value, gradient and Hessian, or spectra) of `log q` at many points, a chunk at a time.

  The results equal `log_prob_hessian(distribution, points, **kwargs)`, `log_prob_and_derivatives(...)` or
  `spectrum(log_prob_hessian(...))` on all the points at once, computed `chunk_size` points at a time by one
  `tf.function` traced once (the last chunk padded to the same shape).

  Args:
    distribution: a flow as in `tfp_hessian.log_prob_hessian`, of batch shape `[]` (events of any structure:
      the results are over the flat event of size `D`, `tfp_hessian.flatten_event`). Under a `strategy`, build
      it inside `strategy.scope()` so its variables are mirrored.
    points: `[N, *event]` points of the distribution's dtype (a numpy array, memory-mapped or not, or a
      tensor; a structure of them for structured events, each with `N` rows), or a `tf.data.Dataset` whose
      elements are one point or a batch of `b` points (`[*event]` or `[b, *event]`, or such structures), read
      in order. With `out` and a dataset of unknown cardinality the rows are counted first (one pass over the
      dataset without any Hessian); a dataset must yield the same points, in the same order, every time it is
      iterated.
    what: "hessian" (`[N, D, D]`), "derivatives" (`LogProbDerivatives`: log_prob `[N]`, gradient `[N, D]`,
      hessian `[N, D, D]`) or "spectrum" (`Spectrum`: eigenvalues `[N, D]`, eigenvectors `[N, D, D]`,
      finite `[N]`, stiffest first as in `tfp_hessian.spectrum`).
    chunk_size: points per chunk, over all replicas; a multiple of `strategy.num_replicas_in_sync`. Default:
      `default_chunk_size(D, dtype, what)` per replica (about 256 MiB of working set each). Where the number
      of points is known and smaller, one chunk of just those (rounded up to a multiple of the replicas).
    out: None to return the results in memory, or a directory (created if missing) where each field is written
      to `<field>.npy` (e.g. `hessian.npy`; `eigenvalues.npy`, `eigenvectors.npy`, `finite.npy`) as chunks
      finish, with `progress.json` recording the points done. If the directory holds an unfinished run of the
      same request, it resumes after that run's last finished chunk (the chunk size may differ); a finished one
      is returned as it is. Either way the files are verified first against the checksums `progress.json`
      records, and the chunks written by this call again before they are returned.
    progress: whether to show a tqdm progress bar (points done, points/s) on stderr.
    strategy: a `tf.distribute.Strategy` splitting each chunk across its replicas; default: the current one
      (`tf.distribute.get_strategy()`, the default strategy outside any `strategy.scope()`).
    **kwargs: as `distribution.log_prob` takes them (`bijector_kwargs`, `distribution_kwargs`). With array
      points, a tensor among them of rank >= 2 whose first axis has the `N` points' length is a per-point
      condition (`[N, C]` beside `[N, *event]`) and is chunked with the points; anything else (`[C]`, one
      condition for every point) is passed whole to every chunk.

  Returns:
    For "hessian" a `[N, D, D]` numpy array, else a `LogProbDerivatives` or `Spectrum` of numpy arrays; with
    `out`, read-only memory maps of the files. Under `MultiWorkerMirroredStrategy` with `out`, workers other
    than the chief write nothing and return None.

  Raises:
    ValueError: if `what`, `chunk_size`, `out` or the points' shape is not as described (naming the argument),
      if there are no points, if `out` holds a run of another request (naming the file and what differs), or
      if a file in `out` does not hold what `progress.json` records, or the record cannot be trusted itself
      (naming the file, what is wrong, and how to recover: `tfp_hessian.keep_verified_chunks(out)` to
      recompute from the last good chunk, or removing `out` to start over).
    TypeError: if the distribution or the points are of an unsupported type or dtype.
    RuntimeError: if called inside `tf.function` (this is a Python loop over chunks).
  """
  resolved, layout, dtype, strategy = _checked_flow_and_strategy(distribution, what, strategy, kwargs)
  replicas = strategy.num_replicas_in_sync
  chunk_size = _checked_chunk_size(chunk_size, layout.size, dtype, what, replicas)
  if out is not None and not isinstance(out, (str, os.PathLike)):
    raise ValueError(f"`out` must be a directory path or None; got {type(out).__name__}.")
  source = point_sources.source(resolved, points, layout, dtype, kwargs, count=out is not None)
  chunk_size = _fitted_chunk_size(chunk_size, source.num_points, replicas)
  output = _output(out, strategy, what, layout.size, dtype, source.num_points, chunk_size)
  # Every worker must start at the same point: the chief's, which is the one that read `out`.
  start = chunk_step.agree_on_start(strategy, output.start if output is not None else 0)
  done = _run(distribution, source, output, what, strategy, chunk_size, start, progress)
  if done == 0:
    raise ValueError("`points` holds no points.")
  if source.num_points is not None and done != source.num_points:
    raise ValueError(f"`points` ended after {done} points but announced {source.num_points}.")
  if output is None:
    return None
  return _assemble(what, output.result())


def _checked_flow_and_strategy(distribution, what, strategy, kwargs):
  """`(resolved distribution, event layout, dtype, strategy)` once the call can be run as asked."""
  if not tf.executing_eagerly():
    raise RuntimeError("hessians_in_chunks is a Python loop over chunks: call it eagerly, not inside tf.function.")
  _check_what(what)
  resolved = private_api.resolve_deferred(distribution)
  layout = sweep.check_distribution(resolved, kwargs)
  dtype = sweep.dtype_of(resolved)
  batch_shape = sweep.batch_shape(resolved)
  if any(batch.rank != 0 for batch in tf.nest.flatten(batch_shape)):
    raise ValueError(f"hessians_in_chunks needs a distribution of batch shape []; {resolved.name!r} has batch "
                     f"shape {batch_shape}. Use `tfp_hessian.log_prob_hessian` for batched flows.")
  strategy = tf.distribute.get_strategy() if strategy is None else strategy
  if not isinstance(strategy, tf.distribute.Strategy):
    raise TypeError(f"`strategy` must be a tf.distribute.Strategy or None; got {type(strategy).__name__}.")
  return resolved, layout, dtype, strategy


def _checked_chunk_size(chunk_size, size, dtype, what, replicas):
  """The points per chunk over all replicas: `chunk_size` once checked, or the default for `replicas`."""
  if chunk_size is None:
    return default_chunk_size(size, dtype, what) * replicas
  if not isinstance(chunk_size, (int, np.integer)) or isinstance(chunk_size, bool) or chunk_size < 1:
    raise ValueError(f"`chunk_size` must be a positive integer; got {chunk_size!r}.")
  if chunk_size % replicas:
    raise ValueError(f"`chunk_size` must be a multiple of the strategy's {replicas} replicas; got {chunk_size}.")
  return chunk_size


def _fitted_chunk_size(chunk_size, num_points, replicas):
  """`chunk_size`, or where fewer points are known, one chunk of just those (rounded up to the replicas), not
  mostly padding."""
  if num_points == 0:
    raise ValueError("`points` holds no points.")
  if num_points is not None and chunk_size > num_points:
    return -(-num_points // replicas) * replicas
  return chunk_size


def _output(out, strategy, what, size, dtype, num_points, chunk_size):
  """Where the results go: in memory, `out`'s files (on the chief), or nowhere (the other workers, with `out`)."""
  fields = _FIELDS[what]
  if out is None:
    return _MemoryOutput(fields)
  if not strategy.extended.should_checkpoint:
    return None
  request = {"what": what, "event_size": size, "dtype": dtype.name, "num_points": num_points}
  return results_directory.ResultsDirectory(pathlib.Path(out), fields, request, _shapes(what, size, num_points),
                                            _dtypes(what, dtype), chunk_size)


def _run(distribution, source, output, what, strategy, chunk_size, start, progress):
  """Computes the chunks after the first `start` points, into `output`; returns the number of points done."""
  step, remember_step = chunk_step.step_for(distribution, what, strategy, source.columns)
  reader = _Rechunker(source.blocks(chunk_size))
  reader.skip(start, output.consume_points_done if output is not None else lambda rows: None)
  if output is not None:
    output.check_points()
  done = start
  with tqdm.tqdm(total=source.num_points, initial=start, unit=" points", desc=what,
                 disable=not progress or not strategy.extended.should_checkpoint) as bar:
    for chunk in reader.chunks(chunk_size):
      if source.num_points is not None and done + len(chunk) > source.num_points:
        raise ValueError(f"`points` yielded more than the {source.num_points} points it announced.")
      results = _compute(step, strategy, chunk, chunk_size, source.columns.shared)
      if done == start:
        remember_step()
      if output is not None:
        if done == start:
          output.check_flow(flow_digest((distribution, source.columns.shared)))
        output.write(done, results, chunk)
      done += len(chunk)
      bar.update(len(chunk))
  return done


def _compute(step, strategy, chunk, chunk_size, shared):
  """A chunk's results as numpy arrays: its rows padded to `chunk_size` with copies of its last point (in the
  flow's support), split across the replicas, and the padding's results dropped."""
  padded = np.concatenate([chunk, np.repeat(chunk[-1:], chunk_size - len(chunk), axis=0)])
  values = chunk_step.split_across_replicas(strategy, padded)
  return [result.numpy()[:len(chunk)] for result in step(values, shared)]


def _check_what(what):
  if what not in _FIELDS:
    raise ValueError(f"`what` must be one of {sorted(_FIELDS)}; got {what!r}.")


def _shapes(what, size, num_points):
  matrix, vector, scalar = (num_points, size, size), (num_points, size), (num_points,)
  return {"hessian": [matrix], "derivatives": [scalar, vector, matrix],
          "spectrum": [vector, matrix, scalar]}[what]


def _dtypes(what, dtype):
  dtype = dtype.as_numpy_dtype
  return {"hessian": [dtype], "derivatives": [dtype] * 3, "spectrum": [dtype, dtype, np.bool_]}[what]


def _assemble(what, arrays):
  if what == "hessian":
    return arrays[0]
  return LogProbDerivatives(*arrays) if what == "derivatives" else Spectrum(*arrays)


# Points, in chunks.

class _Rechunker:
  """Blocks of any number of rows, re-cut into chunks of a fixed number of rows (the last one may be short)."""

  def __init__(self, blocks):
    self._blocks = iter(blocks)
    self._pending = []  # blocks read but not yet handed out, in order
    self._rows = 0

  def _read(self):
    block = next(self._blocks, None)
    if block is None:
      return False
    self._pending.append(block)
    self._rows += len(block)
    return True

  def _take(self, count):
    while self._rows < count and self._read():
      pass
    if not self._pending:
      return []
    rows = np.concatenate(self._pending) if len(self._pending) != 1 else self._pending[0]
    taken, rest = rows[:count], rows[count:]
    self._pending, self._rows = ([rest] if len(rest) else []), len(rest)
    return taken

  def skip(self, count, consume):
    """Reads the first `count` rows, passing them to `consume` in order, without handing them out."""
    total = count
    while count:
      rows = self._take(min(count, _MAX_CHUNK))
      if not len(rows):
        raise ValueError(f"`points` ended after {total - count} points, before the {total} points already done.")
      consume(rows)
      count -= len(rows)

  def chunks(self, size):
    while True:
      chunk = self._take(size)
      if not len(chunk):
        return
      yield chunk


# Results.

class _MemoryOutput:
  """Results kept in memory, chunk by chunk."""

  start = 0

  def __init__(self, fields):
    self._chunks = [[] for _ in fields]

  def consume_points_done(self, rows):
    pass

  def check_points(self):
    pass

  def check_flow(self, digest):
    pass

  def write(self, begin, results, points):
    del begin, points
    for chunks, result in zip(self._chunks, results):
      chunks.append(result)

  def result(self):
    return [np.concatenate(chunks) for chunks in self._chunks]
