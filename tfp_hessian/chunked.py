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

import hashlib
import os
import pathlib
import weakref

import numpy as np
import tensorflow as tf
import tqdm
from tensorflow_probability.python.bijectors import bijector as bijector_lib
from tensorflow_probability.python.distributions import distribution as distribution_lib

from tfp_hessian import private_api, results_directory, sweep
from tfp_hessian.stiff_sloppy import Spectrum, spectrum as eigendecomposition
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
  if not tf.executing_eagerly():
    raise RuntimeError("hessians_in_chunks is a Python loop over chunks: call it eagerly, not inside tf.function.")
  _check_what(what)
  resolved = private_api.resolve_deferred(distribution)
  layout = sweep.check_distribution(resolved, kwargs)
  size = layout.size
  dtype = sweep.dtype_of(resolved)
  if any(batch.rank != 0 for batch in tf.nest.flatten(resolved.batch_shape)):
    raise ValueError(f"hessians_in_chunks needs a distribution of batch shape []; {resolved.name!r} has batch "
                     f"shape {resolved.batch_shape}. Use `tfp_hessian.log_prob_hessian` for batched flows.")
  strategy = tf.distribute.get_strategy() if strategy is None else strategy
  if not isinstance(strategy, tf.distribute.Strategy):
    raise TypeError(f"`strategy` must be a tf.distribute.Strategy or None; got {type(strategy).__name__}.")
  replicas = strategy.num_replicas_in_sync
  if chunk_size is None:
    chunk_size = default_chunk_size(size, dtype, what) * replicas
  elif not isinstance(chunk_size, (int, np.integer)) or isinstance(chunk_size, bool) or chunk_size < 1:
    raise ValueError(f"`chunk_size` must be a positive integer; got {chunk_size!r}.")
  elif chunk_size % replicas:
    raise ValueError(f"`chunk_size` must be a multiple of the strategy's {replicas} replicas; got {chunk_size}.")
  if out is not None and not isinstance(out, (str, os.PathLike)):
    raise ValueError(f"`out` must be a directory path or None; got {type(out).__name__}.")
  source = _source(resolved, points, layout, dtype, kwargs, count=out is not None)
  if source.num_points == 0:
    raise ValueError("`points` holds no points.")
  if source.num_points is not None and chunk_size > source.num_points:
    # Fewer points than one chunk: one chunk of just those (rounded up to the replicas), not mostly padding.
    chunk_size = -(-source.num_points // replicas) * replicas

  fields = _FIELDS[what]
  request = {"what": what, "event_size": size, "dtype": dtype.name, "num_points": source.num_points}
  if out is None:
    output = _MemoryOutput(fields)
  elif strategy.extended.should_checkpoint:
    output = results_directory.ResultsDirectory(pathlib.Path(out), fields, request,
                                                _shapes(what, size, source.num_points), _dtypes(what, dtype),
                                                chunk_size)
  else:
    output = None
  # Every worker must start at the same point: the chief's, which is the one that read `out`.
  start = _agree_on_start(strategy, output.start if output is not None else 0)

  step, remember_step = _step(distribution, what, strategy, source.columns)
  per_replica = chunk_size // replicas
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
      padded = np.concatenate([chunk, np.repeat(chunk[-1:], chunk_size - len(chunk), axis=0)])
      values = strategy.experimental_distribute_values_from_function(
          lambda context, padded=padded: padded[context.replica_id_in_sync_group * per_replica:
                                                (context.replica_id_in_sync_group + 1) * per_replica])
      results = [result.numpy()[:len(chunk)] for result in step(values, source.columns.shared)]
      if done == start:
        remember_step()
      if output is not None:
        if done == start:
          output.check_flow(_flow_digest((distribution, source.columns.shared)))
        output.write(done, results, chunk)
      done += len(chunk)
      bar.update(len(chunk))
  if done == 0:
    raise ValueError("`points` holds no points.")
  if source.num_points is not None and done != source.num_points:
    raise ValueError(f"`points` ended after {done} points but announced {source.num_points}.")
  if output is None:
    return None
  return _assemble(what, output.result())


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


# The per-chunk `tf.function`s of earlier calls, by flow, then strategy, then `(what, row layout)`: another call on
# the same flow reuses the trace. Weak keys, and steps that hold their flow and strategy only weakly, so that the
# cache never keeps a flow (or its variables' memory) alive.
_STEPS = weakref.WeakKeyDictionary()


def _step(distribution, what, strategy, columns):
  """The per-chunk `tf.function` of this flow, strategy, `what` and row layout: an earlier call's if the flow is
  the same as when that one ran, else a new one.

  A trace bakes in what the flow holds by value (tensors, numbers, the structure) and reads its variables when it
  runs, so "the same" is `_flow_digest` with variables by identity: training the flow's variables keeps the trace,
  a tensor replaced in its parameters or in a conditioner's closure does not.

  Returns:
    `(step, remember)`, `step(values, shared_kwargs)`; call `remember()` once the step has run: a flow whose Keras
    layers are built on first use is fingerprinted as built, as the next call will find it.
  """
  steps = _STEPS.setdefault(distribution, weakref.WeakKeyDictionary()).setdefault(strategy, {})
  key = (what, columns.signature)
  cached = steps.get(key)
  if cached is not None and cached[0] == _flow_digest(distribution, variable_values=False):
    return cached[1], lambda: None
  step = _new_step(weakref.ref(distribution), what, weakref.ref(strategy), columns.signature)

  def remember():
    steps[key] = (_flow_digest(distribution, variable_values=False), step)

  return step, remember


def _new_step(distribution_ref, what, strategy_ref, signature):
  """The per-chunk `tf.function`: each replica's share computed by `strategy.run`, gathered in point order.

  The flow and strategy are dereferenced only while tracing, inside a call of `hessians_in_chunks` that holds
  them; the shared kwargs are arguments, not captures, so a cached step never computes with another call's.
  """

  def compute(rows, shared):
    z, kwargs = _Columns.split(signature, rows, shared)
    derivatives = sweep.log_prob_and_derivatives(distribution_ref(), z, **kwargs)
    if what == "hessian":
      return (derivatives.hessian,)
    if what == "derivatives":
      return tuple(derivatives)
    eigenvalues, eigenvectors, finite = eigendecomposition(derivatives.hessian)
    # Collectives take no bool: `finite` travels as int32.
    return eigenvalues, eigenvectors, tf.cast(finite, tf.int32)

  @tf.function(autograph=False)
  def step(values, shared):
    strategy = strategy_ref()
    results = strategy.run(lambda rows: compute(rows, shared), args=(values,))
    # One gather per tensor: `strategy.gather` of a nested structure returns the first replica's values only
    # (TF 2.21, MirroredStrategy), silently.
    results = [strategy.gather(result, axis=0) for result in results]
    if what == "spectrum":
      results[2] = tf.cast(results[2], tf.bool)
    return tuple(results)

  return step


def _agree_on_start(strategy, start):
  """The chief's `start` on every worker: the chief is the only one that reads `out`.

  Each replica of the chief contributes `(start, 1)`, every other one `(0, 0)`: the sum over all replicas (across
  workers too) divided by its count is the chief's `start`.
  """
  chief = strategy.extended.should_checkpoint
  mine = tf.constant([start, 1] if chief else [0, 0], tf.int64)
  values = strategy.experimental_distribute_values_from_function(lambda _: mine)
  total, chiefs = strategy.reduce(tf.distribute.ReduceOp.SUM, values, axis=None).numpy()
  return int(total // chiefs)


# Points.

class _Columns:
  """What a row of the points' `[N, n + m]` array holds: one point's flat event (`n`), then its own conditions.

  Conditions given per point (`[N, C]` beside `[N, *event]`) travel in the rows, so chunking, padding, resuming
  and the points' digest treat them with the points; the other kwargs are `shared`, the same for every chunk
  (`None` where a per-point condition goes). `signature` is the rest, without any values: what a trace of
  `split` depends on besides its arguments.
  """

  def __init__(self, layout, kwargs, per_point):
    self.layout = layout
    leaves = tf.nest.flatten(kwargs)
    per_point_shapes = tuple((index, tuple(np.shape(leaves[index])[1:])) for index in per_point)
    self.shared = tf.nest.pack_sequence_as(kwargs, [None if i in per_point else leaf for i, leaf in enumerate(leaves)])
    self.signature = (layout, per_point_shapes)

  @staticmethod
  def split(signature, rows, shared):
    """`(z, kwargs)` of a chunk's rows, `[c, n + m]`: the per-point conditions put into `shared`'s `None`s."""
    layout, per_point = signature
    leaves = tf.nest.flatten(shared)
    offset = layout.size
    for index, shape in per_point:
      size = int(np.prod(shape, dtype=np.int64))
      leaves[index] = tf.reshape(rows[:, offset:offset + size], (-1,) + shape)
      offset += size
    return layout.unflatten(rows[:, :layout.size]), tf.nest.pack_sequence_as(shared, leaves)


def _per_point_conditions(kwargs, num_points, dtype):
  """Indices of the kwargs' leaves that hold one condition per point (rank >= 2, `num_points` rows)."""
  indices = []
  for index, leaf in enumerate(tf.nest.flatten(kwargs)):
    shape = np.shape(leaf) if hasattr(leaf, "shape") else ()
    if len(shape) >= 2 and shape[0] == num_points:
      if tf.as_dtype(leaf.dtype) != dtype:
        raise TypeError(f"A per-point condition (kwargs leaf of shape {list(shape)}) must have the points' dtype "
                        f"{dtype.name}; got dtype {tf.as_dtype(leaf.dtype).name}.")
      indices.append(index)
  return indices


class _ArraySource:
  """`[N, *event]` points (and per-point conditions) in host memory or memory-mapped, read in slices as rows."""

  def __init__(self, arrays, columns):
    self.arrays, self.columns = arrays, columns
    self.num_points = len(arrays[0])

  def blocks(self, size):
    for begin in range(0, self.num_points, size):
      parts = [np.asarray(array[begin:begin + size]) for array in self.arrays]
      if len(parts) == 1 and parts[0].ndim == 2:
        yield parts[0]
      else:
        yield np.concatenate([part.reshape(len(part), -1) for part in parts], axis=1)


class _DatasetSource:
  """A `tf.data.Dataset` of points or batches of points, read in order as `[b, n]` rows."""

  def __init__(self, dataset, batched, num_points, columns):
    self.dataset, self.batched, self.num_points, self.columns = dataset, batched, num_points, columns

  def blocks(self, size):
    dataset = self.dataset if self.batched else self.dataset.batch(size)
    layout = self.columns.layout
    # tf.data passes a tuple element as separate arguments.
    flatten = lambda *element: layout.flatten(element[0] if len(element) == 1 else element)
    for block in dataset.map(flatten).prefetch(1):
      yield block.numpy()


def _source(distribution, points, layout, dtype, kwargs, count):
  """The points as an `_ArraySource` or `_DatasetSource`, validated before any Hessian is computed."""
  if isinstance(points, tf.data.Dataset):
    return _dataset_source(points, layout, dtype, kwargs, count)
  parts = []
  for part in layout.parts(points):
    if isinstance(part, tf.Tensor):
      part = part.numpy()
    elif not hasattr(part, "dtype"):
      part = np.asarray(part, dtype.as_numpy_dtype)
    parts.append(part)
  for part, shape in zip(parts, layout.shapes):
    actual = tuple(getattr(part, "shape", ()))
    if len(actual) != shape.rank + 1 or actual[1:] != tuple(shape.as_list()) or len(actual[:1]) != 1:
      expected = (f"[N, D] with D = {shape[0]} (the distribution's event size)" if layout.is_vector else
                  f"[N, {', '.join(str(d) for d in shape.as_list())}] (N points of the event {layout.describe()})")
      raise ValueError(f"`points` must have shape {expected}; got shape {actual}.")
  if len({len(part) for part in parts}) != 1:
    raise ValueError(f"Every part of `points` must have the same number of rows; got {[len(p) for p in parts]}.")
  # The sweep's own checks of the dtype, on no points at all.
  sweep.points(distribution, layout.pack([part[:0] for part in parts]), kwargs)
  per_point = _per_point_conditions(kwargs, len(parts[0]), dtype)
  leaves = tf.nest.flatten(kwargs)
  arrays = parts + [np.asarray(leaves[index]) for index in per_point]
  return _ArraySource(arrays, _Columns(layout, kwargs, per_point))


def _dataset_source(dataset, layout, dtype, kwargs, count):
  spec = dataset.element_spec
  what = "[D] or [b, D]" if layout.is_vector else f"one point or a batch of points of the event {layout.describe()}"
  try:
    specs = layout.parts(spec)
  except ValueError:
    specs = None
  if specs is None or not all(isinstance(part, tf.TensorSpec) for part in specs):
    raise TypeError(f"A `points` dataset must yield single tensors of shape {what}; its elements are {spec}."
                    if layout.is_vector else f"A `points` dataset must yield {what}; its elements are {spec}.")
  for part in specs:
    if part.dtype != dtype:
      raise TypeError(f"The `points` dataset yields dtype {part.dtype.name} but the distribution has dtype "
                      f"{dtype.name}.")
  extra = {part.shape.rank - shape.rank if part.shape.rank is not None else None
           for part, shape in zip(specs, layout.shapes)}
  if not extra <= {0, 1} or len(extra) != 1 or not all(
      part.shape.rank is not None and part.shape[part.shape.rank - shape.rank:].is_compatible_with(shape)
      for part, shape in zip(specs, layout.shapes)):
    if layout.is_vector:
      raise ValueError(f"A `points` dataset must yield elements of shape [D] or [b, D] with D = "
                       f"{layout.shapes[0][0]}; its elements have shape {spec.shape}.")
    raise ValueError(f"A `points` dataset must yield {what}; its elements are {spec}.")
  batched = extra == {1}
  cardinality = int(dataset.cardinality())
  if cardinality == tf.data.INFINITE_CARDINALITY:
    raise ValueError("The `points` dataset is infinite; take a finite number of points (`dataset.take(N)`).")
  rows_per_element = specs[0].shape[0] if batched else 1
  if cardinality != tf.data.UNKNOWN_CARDINALITY and rows_per_element is not None:
    num_points = cardinality * rows_per_element
  elif count:
    if batched:
      rows = lambda *element: tf.shape(tf.nest.flatten(element)[0], out_type=tf.int64)[0]
    else:
      rows = lambda *element: tf.constant(1, tf.int64)
    num_points = int(dataset.reduce(tf.constant(0, tf.int64), lambda n, *element: n + rows(*element)))
  else:
    num_points = None
  return _DatasetSource(dataset, batched, num_points, _Columns(layout, kwargs, []))


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


def _flow_digest(distribution, variable_values=True):
  """sha256 of a flow's structure and parameters: its distributions', bijectors' and linear operators' classes and
  `parameters`, with the values of tensors, variables (Keras layers' included) and of what callables close over.

  With `variable_values=False` a variable counts by its identity, dtype and shape only: what a trace depends on.
  Called after the flow has run once, so that lazily built layers and conditioners have their weights.
  """
  digest = hashlib.sha256()
  seen = {}  # id -> object: holding the object keeps its id from being reused during the walk

  def visit(value):
    if id(value) in seen:
      return
    if isinstance(value, (list, tuple, dict)):
      seen[id(value)] = value
    if isinstance(value, (distribution_lib.Distribution, bijector_lib.Bijector, tf.linalg.LinearOperator)):
      seen[id(value)] = value
      digest.update(type(value).__qualname__.encode())
      for key in sorted(value.parameters):
        digest.update(key.encode())
        visit(value.parameters[key])
    elif not variable_values and (isinstance(value, tf.Variable) or (
        hasattr(value, "assign") and hasattr(value, "shape") and hasattr(value, "dtype"))):
      seen[id(value)] = value
      digest.update(f"variable {id(value)} {value.dtype}{tuple(value.shape)}".encode())
    elif isinstance(value, (tf.Tensor, tf.Variable, np.ndarray, np.generic, int, float, complex)) or (
        hasattr(value, "__array__") and hasattr(value, "shape")):
      array = np.asarray(value)
      digest.update(f"{array.dtype}{array.shape}".encode())
      digest.update(np.ascontiguousarray(array).tobytes())
    elif isinstance(value, tf.Module) or (callable(value) and isinstance(getattr(value, "weights", None), list)):
      # tf-keras layers and models (tf.Modules), Keras 3 layers: their variables, in a fixed order.
      seen[id(value)] = value
      digest.update(type(value).__qualname__.encode())
      for variable in value.variables if isinstance(value, tf.Module) else value.weights:
        visit(variable)
    elif isinstance(value, (list, tuple)):
      for item in value:
        visit(item)
    elif isinstance(value, dict):
      for key in sorted(value, key=repr):
        digest.update(repr(key).encode())
        visit(value[key])
    elif isinstance(value, (str, bool, type(None))):
      digest.update(repr(value).encode())
    elif callable(value):
      seen[id(value)] = value
      digest.update(getattr(value, "__qualname__", type(value).__qualname__).encode())
      for cell in getattr(value, "__closure__", None) or ():
        try:
          visit(cell.cell_contents)
        except ValueError:  # an empty cell
          pass
    else:
      digest.update(type(value).__qualname__.encode())

  visit(distribution)
  return digest.hexdigest()
