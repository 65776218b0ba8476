"""The points of `hessians_in_chunks`, read as rows: arrays or a `tf.data.Dataset`, with per-point conditions.

A source yields blocks of rows `[b, n + m]`: each row one point's flat event (`n`), then its own conditions (`m`),
so chunking, padding, resuming and the points' digest treat per-point conditions with the points (`Columns`).
Points are `[N, *event]` arrays or tensors (memory-mapped or not; structures of them for structured events), read
in slices, or a dataset of `[*event]` or `[b, *event]` elements, read in order. Both are checked before any
Hessian is computed.
"""

import numpy as np
import tensorflow as tf

from tfp_hessian import sweep

__all__ = ["Columns", "source"]


class Columns:
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


def source(distribution, points, layout, dtype, kwargs, count):
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
  return _ArraySource(arrays, Columns(layout, kwargs, per_point))


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
  return _DatasetSource(dataset, batched, num_points, Columns(layout, kwargs, []))
