"""Events of any rank and structure, seen by the sweep as one flat vector per point.

A distribution's event may be a vector, a tensor of any rank (`tfd.Sample(..., [3, 2])`) or a structure of
tensors (a `JointDistributionNamed`'s dict). The sweep and every pullback work on one vector per point: the
parts in `tf.nest.flatten` order, each flattened row-major (C order), concatenated. That is the convention of
JAX's `ravel_pytree`, so a Hessian `[*batch, n, n]` indexes the same coordinates there and here.

An `EventLayout` is the static description of one such event: its structure and the shape of each part. It
flattens values of that event (`[*batch, *event]` parts, batch shapes broadcast) into `[*batch, n]` and back.

>>> layout = layout_of_distribution(posterior)                  # {'scale': [], 'w': [3]}: n = 4
>>> flat = flatten_event(posterior, posterior.sample(5))        # [5, 4]
>>> unflatten_event(posterior, flat)["w"].shape
TensorShape([5, 3])
"""

import numpy as np
import tensorflow as tf

from tfp_hessian import private_api

__all__ = ["EventLayout", "bijector_layout", "event_names", "flatten_event", "layout_of", "layout_of_distribution",
           "unflatten_event"]


class EventLayout:
  """The static layout of an event: a structure of parts, each a fully defined shape.

  Args:
    structure: a `tf.nest` structure whose leaves stand for the parts (any leaf values); `None` alone stands for
      a single tensor.
    shapes: the parts' event shapes in `tf.nest.flatten` order, each fully defined.
  """

  def __init__(self, structure, shapes):
    self.structure = tf.nest.map_structure(lambda _: None, structure)
    self.shapes = tuple(tf.TensorShape(shape) for shape in shapes)
    if len(self.shapes) != len(tf.nest.flatten(self.structure)):
      raise ValueError(f"An event of structure {structure} has {len(tf.nest.flatten(self.structure))} parts; got "
                       f"{len(self.shapes)} shapes.")
    for shape in self.shapes:
      if not shape.is_fully_defined():
        raise ValueError(f"tfp_hessian needs statically known event shapes; got event shape {shape}.")
    self.sizes = tuple(int(np.prod(shape.as_list(), dtype=np.int64)) for shape in self.shapes)
    self.size = sum(self.sizes)
    self.offsets = tuple(int(offset) for offset in np.cumsum((0,) + self.sizes[:-1]))

  @classmethod
  def vector(cls, size):
    """The layout of a single vector event `[size]`."""
    return cls(None, [[size]])

  @property
  def is_single(self):
    """True if the event is one tensor (of any rank), not a structure of them."""
    return self.structure is None

  @property
  def is_vector(self):
    """True if the event is one vector, `[n]`: the layout every vector rule expects."""
    return self.is_single and self.shapes[0].rank == 1

  @property
  def ranks(self):
    """Each part's event rank, in the event's structure (as TFP's `event_ndims`)."""
    return tf.nest.pack_sequence_as(self.structure, [shape.rank for shape in self.shapes])

  def parts(self, value):
    """The parts of `value` (a structure like the event's) in `tf.nest.flatten` order."""
    if self.is_single:
      # Lists and tuples are array-likes here (`[[1., 2.]]`); a mapping is a structure where none is expected.
      if isinstance(value, dict) or hasattr(value, "_fields"):
        raise ValueError(f"Expected a single tensor for an event of shape {self.describe()}; got "
                         f"{_describe(value)}.")
      return [value]
    if not _matches(self.structure, value):
      raise ValueError(f"Expected a value of the event's structure {self.describe()}; got {_describe(value)}.")
    return tf.nest.flatten(value)

  def pack(self, parts):
    """The structure of the event with `parts` (in flatten order) as its leaves."""
    return tf.nest.pack_sequence_as(self.structure, list(parts))

  def batch_shape(self, value):
    """The static broadcast of the parts' batch shapes (each part's shape without its event dimensions)."""
    batch = tf.TensorShape([])
    for part, shape in zip(self.parts(value), self.shapes):
      batch = tf.broadcast_static_shape(batch, part.shape[:part.shape.rank - shape.rank])
    return batch

  def batch_shape_tensor(self, value):
    """The dynamic broadcast of the parts' batch shapes."""
    batch = tf.constant([], tf.int32)
    for part, shape in zip(self.parts(value), self.shapes):
      batch = tf.broadcast_dynamic_shape(batch, tf.shape(part)[:tf.rank(part) - shape.rank])
    return batch

  def broadcast(self, value, batch_shape, batch_shape_tensor=None):
    """`value` with every part broadcast to the batch shape `batch_shape` (static; dynamic where unknown)."""
    parts = []
    for part, shape in zip(self.parts(value), self.shapes):
      target = batch_shape.concatenate(shape)
      if part.shape == target:
        parts.append(part)
      elif target.is_fully_defined():
        parts.append(tf.broadcast_to(part, target))
      else:
        parts.append(tf.ensure_shape(tf.broadcast_to(part, tf.concat([batch_shape_tensor, shape], 0)), target))
    return self.pack(parts)

  def flatten(self, value):
    """`[*batch, n]`: the parts of `value`, broadcast to their common batch shape, flattened and concatenated."""
    parts = self.parts(value)
    if self.is_vector:
      return parts[0]
    batch = self.batch_shape(value)
    dynamic = None if batch.is_fully_defined() else self.batch_shape_tensor(value)
    flat = []
    for part, shape, size in zip(parts, self.shapes, self.sizes):
      target = batch.concatenate(shape)
      if part.shape != target:
        part = tf.broadcast_to(part, target if dynamic is None else tf.concat([dynamic, shape], 0))
      static = batch.concatenate([size])
      flat.append(tf.reshape(part, static if dynamic is None else tf.concat([dynamic, [size]], 0)))
      if dynamic is not None:
        flat[-1] = tf.ensure_shape(flat[-1], static)
    return flat[0] if len(flat) == 1 else tf.concat(flat, axis=-1)

  def unflatten(self, flat):
    """The event's structure from `[*batch, n]`: each part `[*batch, *event]`."""
    if self.is_vector:
      return flat
    batch = flat.shape[:-1]
    dynamic = None if batch.is_fully_defined() else tf.shape(flat)[:-1]
    parts = []
    for offset, size, shape in zip(self.offsets, self.sizes, self.shapes):
      part = flat[..., offset:offset + size]
      target = batch.concatenate(shape)
      part = tf.reshape(part, target if dynamic is None else tf.concat([dynamic, shape], 0))
      parts.append(part if dynamic is None else tf.ensure_shape(part, target))
    return self.pack(parts)

  def names(self, prefix=""):
    """A label per flat coordinate: the part's key path and its index, e.g. `"w[2]"`, `"c[1, 0]"`."""
    paths = _paths(self.structure)
    labels = []
    for path, shape in zip(paths, self.shapes):
      name = prefix + path
      if shape.rank == 0:
        labels.append(name or "z")
        continue
      for index in np.ndindex(*shape.as_list()):
        labels.append(f"{name or 'z'}[{', '.join(str(i) for i in index)}]")
    return labels

  def describe(self):
    """The event for messages: `{'a': [2], 'b': []}`, or `[3, 2]` for a single tensor."""
    return _describe_shapes(self.pack([shape.as_list() for shape in self.shapes]))

  def __eq__(self, other):
    return (isinstance(other, EventLayout) and self.shapes == other.shapes
            and _same_structure(self.structure, other.structure))

  def __hash__(self):
    return hash(self.shapes)

  def __repr__(self):
    return f"EventLayout({self.describe()}, n={self.size})"


def _matches(structure, value):
  """Whether `value` has the nested structure `structure` (with `None` leaves): mappings with the same keys,
  sequences (lists, tuples, namedtuples alike) of the same length, and a leaf for each `None`."""
  if structure is None:
    return not isinstance(value, (dict, list, tuple)) or tf.is_tensor(value)
  if isinstance(structure, dict):
    return isinstance(value, dict) and set(value) == set(structure) and all(
        _matches(structure[key], value[key]) for key in structure)
  if isinstance(structure, (list, tuple)):
    return (isinstance(value, (list, tuple)) and len(value) == len(structure)
            and all(_matches(s, v) for s, v in zip(structure, value)))
  return _same_structure(structure, value)


def _same_structure(a, b):
  try:
    tf.nest.assert_same_structure(a, b, check_types=False)
  except (ValueError, TypeError):
    return False
  return True


def _paths(structure, prefix=""):
  """Key paths of the leaves of `structure` (`"a"`, `"0"`, `"a/b"`), in flatten order; `""` for a single tensor."""
  if isinstance(structure, dict):
    items = [(str(key), structure[key]) for key in sorted(structure)]
  elif hasattr(structure, "_fields"):  # a namedtuple (a JointDistributionCoroutine's parts): by field name
    items = list(zip(structure._fields, structure))
  elif isinstance(structure, (list, tuple)):
    items = [(str(index), item) for index, item in enumerate(structure)]
  else:
    return [prefix]
  return [path for key, item in items for path in _paths(item, f"{prefix}/{key}" if prefix else key)]


def _describe_shapes(value):
  if isinstance(value, dict):
    return "{" + ", ".join(f"{key!r}: {_describe_shapes(item)}" for key, item in value.items()) + "}"
  if isinstance(value, (list, tuple)) and value and isinstance(value[0], (list, tuple, dict)):
    return "[" + ", ".join(_describe_shapes(item) for item in value) + "]"
  return str(list(value))


def _describe(value):
  """A value's structure and shapes, for messages."""
  if tf.is_tensor(value) or hasattr(value, "shape"):
    return f"a tensor of shape {list(value.shape)}"
  if isinstance(value, dict):
    return "{" + ", ".join(f"{key!r}: {_describe(item)}" for key, item in value.items()) + "}"
  if isinstance(value, (list, tuple)):
    return f"{type(value).__name__}(" + ", ".join(_describe(item) for item in value) + ")"
  return type(value).__name__


def layout_of(value, ranks):
  """The layout of `value` whose parts have event ranks `ranks` (a structure of ints, TFP's `event_ndims`)."""
  flat_ranks = tf.nest.flatten(ranks)
  parts = [value] if not tf.nest.is_nested(ranks) else tf.nest.flatten(value)
  if len(parts) != len(flat_ranks):
    raise ValueError(f"Expected {len(flat_ranks)} parts of event ranks {ranks}; got {_describe(value)}.")
  shapes = []
  for part, rank in zip(parts, flat_ranks):
    rank = int(rank)
    shape = part.shape[part.shape.rank - rank:] if rank else tf.TensorShape([])
    shapes.append(shape)
  return EventLayout(ranks if tf.nest.is_nested(ranks) else None, shapes)


def bijector_layout(bijector, layout, direction="inverse"):
  """The static layout of `bijector.inverse`'s (or `forward`'s) output at events of `layout`; None if unknown.

  From the bijector's own shape functions, before anything runs (the sweep's checks walk the flow with it).
  """
  try:
    if direction == "inverse":
      shapes = bijector.inverse_event_shape(layout.pack(layout.shapes))
      ranks = bijector.inverse_event_ndims(layout.ranks)
    else:
      shapes = bijector.forward_event_shape(layout.pack(layout.shapes))
      ranks = bijector.forward_event_ndims(layout.ranks)
  except (ValueError, TypeError):
    return None
  flat = tf.nest.flatten(shapes) if tf.nest.is_nested(ranks) else [shapes]
  if not all(tf.TensorShape(shape).is_fully_defined() for shape in flat):
    return None
  return EventLayout(ranks if tf.nest.is_nested(ranks) else None, flat)


def layout_of_distribution(distribution):
  """The `EventLayout` of `distribution`'s events, from its static event shape (or its constant tensor)."""
  structure = distribution.dtype
  event_shape = distribution.event_shape
  shapes = tf.nest.flatten(event_shape) if tf.nest.is_nested(structure) else [event_shape]
  if not all(isinstance(shape, tf.TensorShape) and shape.is_fully_defined() for shape in shapes):
    # Some distributions (`tfp.experimental.vi` surrogates) know their event shapes only as constant tensors.
    tensors = distribution.event_shape_tensor()
    tensors = tf.nest.flatten(tensors) if tf.nest.is_nested(structure) else [tensors]
    shapes = []
    for tensor in tensors:
      static = tf.get_static_value(tensor)
      if static is None:
        raise ValueError(f"tfp_hessian needs statically known event shapes; {distribution.name!r} has event shape "
                         f"{event_shape}, known only when it runs.")
      shapes.append(tf.TensorShape([int(d) for d in static]))
  return EventLayout(structure if tf.nest.is_nested(structure) else None, shapes)


def flatten_event(distribution, z):
  """`z`, a value of `distribution`'s events, as the flat `[*batch, n]` vectors the Hessians are taken over.

  Parts in `tf.nest.flatten` order (a dict's sorted keys), each flattened row-major, as `jax.flatten_util.
  ravel_pytree` does; the parts' batch shapes are broadcast together. `unflatten_event` inverts it exactly.

  Args:
    distribution: a distribution (or a `DeferredModule` wrapping one).
    z: a value of its events: a tensor `[*batch, *event]` or a structure of them, as `distribution.sample()`
      returns.

  Returns:
    `[*batch, n]`, `n` the total event size.
  """
  distribution = private_api.resolve_deferred(distribution)
  layout = layout_of_distribution(distribution)
  dtype = tf.nest.flatten(distribution.dtype)[0]
  parts = [tf.convert_to_tensor(part, dtype_hint=dtype) for part in layout.parts(z)]
  return layout.flatten(layout.pack(parts))


def unflatten_event(distribution, flat):
  """The structure of `distribution`'s events from flat `[*batch, n]` vectors; inverts `flatten_event`."""
  distribution = private_api.resolve_deferred(distribution)
  layout = layout_of_distribution(distribution)
  flat = tf.convert_to_tensor(flat, dtype_hint=tf.nest.flatten(distribution.dtype)[0])
  if flat.shape.rank is None or flat.shape.rank < 1 or flat.shape[-1] not in (None, layout.size):
    raise ValueError(f"`flat` must have shape [*batch, n] with n = {layout.size} (the event "
                     f"{layout.describe()}); got shape {flat.shape}.")
  return layout.unflatten(flat)


def event_names(distribution):
  """A label per flat coordinate of `distribution`'s events: `"scale"`, `"w[0]"`, `"c[1, 0]"`, in flat order."""
  return layout_of_distribution(private_api.resolve_deferred(distribution)).names()
