"""Eager calls of the entry points run a compiled function, traced once per distribution and input signature.

Called eagerly, every op of a sweep is dispatched from Python one by one, which costs far more than the
arithmetic for flows of the sizes scientists analyse (tens of milliseconds against one or two). So an entry
point decorated with `when_eager`, called eagerly, runs a `tf.function` of itself instead, from its second call
on a distribution: the first call runs op by op, so that whatever the flow builds on first use (Keras layers,
conditioners that create their weights lazily) is built eagerly, as the user's own eager code would build it,
and never inside a trace, where such tensors would be captured by the graph and out of scope afterwards.

- one `tf.function` per distribution and entry point, kept in a table keyed by the distribution's identity and
  dropped when the distribution is garbage-collected (the table holds the distribution only weakly, and the
  traced function captures its tensors and variables, not the object);
- each traces once per input signature (shapes, dtypes, structure of `z` and the kwargs; Python values such as
  `k` or `name` are part of it). Calls whose tensors have the same ranks share one `tf.function` with
  `reduce_retracing`, so a stream of batch sizes settles on one trace with those dimensions unknown; tensors of
  other ranks get a function of their own, so event dimensions always stay static;
- variables are read when the function runs, so a flow that is still training is seen as it is now; a
  `DeferredModule` is rebuilt inside the function for the same reason.

Inside a user's `tf.function` nothing changes: the entry point runs as written, in the user's graph (and is not
converted by AutoGraph: the package's code is graph code as it stands).

Errors: static misuse is raised while tracing, with the same type and message as an uncompiled call. A value
error raised by the running graph (`validate_args` assertions) is raised again by running the call uncompiled,
whose eager error names the bijector that raised it.
"""

import functools
import weakref

import tensorflow as tf

__all__ = ["when_eager"]

_FUNCTIONS = {}  # id(distribution) -> {(entry point, ranks): tf.function}; {} after the first, eager call
_CONCRETE = {}  # id(distribution) -> {(entry point, signature): its concrete function}
_MAX_SIGNATURES = 256


def _functions(distribution):
  """The table of `distribution`'s compiled functions, or None if it has not run yet (then it runs eagerly)."""
  key = id(distribution)
  table = _FUNCTIONS.get(key)
  if table is None:
    _FUNCTIONS[key], _CONCRETE[key] = {}, {}
    # Drops the tables (and their traced functions) with the distribution; the id cannot be reused before then.
    weakref.finalize(distribution, _forget, key)
  return table


def _forget(key):
  _FUNCTIONS.pop(key, None)
  _CONCRETE.pop(key, None)


def when_eager(entry_point):
  """Decorator: an eager call of `entry_point(distribution, *args, **kwargs)` runs it as a cached `tf.function`."""

  @functools.wraps(entry_point)
  def call(distribution, *args, **kwargs):
    if not tf.executing_eagerly() or not isinstance(distribution, tf.Module):
      return entry_point(distribution, *args, **kwargs)
    table = _functions(distribution)
    if table is None:
      return entry_point(distribution, *args, **kwargs)
    # The concrete function of this very signature, called directly: `tf.function`'s own dispatch costs a few
    # hundred microseconds a call, as much as a whole small sweep.
    signature = (entry_point.__qualname__, _signature((args, kwargs)))
    concretes = _CONCRETE[id(distribution)]
    concrete = concretes.get(signature)
    try:
      if concrete is None:
        key = (entry_point.__qualname__, _ranks((args, kwargs)))
        function = table.get(key)
        if function is None:
          reference = weakref.ref(distribution)

          def traced(*args, **kwargs):
            return entry_point(reference(), *args, **kwargs)

          function = table[key] = tf.function(traced, autograph=False, reduce_retracing=True)
        if len(concretes) >= _MAX_SIGNATURES:
          concretes.clear()  # a stream of ever new shapes: the tf.functions keep their traces regardless
        concrete = concretes[signature] = function.get_concrete_function(*args, **kwargs)
      return concrete(*args, **kwargs)
    except tf.errors.InvalidArgumentError:
      # Eagerly, the error says which bijector raised it (`registry.pullback`).
      return entry_point(distribution, *args, **kwargs)

  call.uncompiled = entry_point
  # Inside a user's `tf.function` AutoGraph would convert the package's code, which is graph code already (its
  # own functions are traced with `autograph=False`) and which AutoGraph mis-converts in places.
  return tf.autograph.experimental.do_not_convert(call)


def _signature(value):
  """A hashable key of a call's arguments: their nesting, and per leaf its shape and dtype (arrays) or value."""
  if isinstance(value, dict):
    return ("dict",) + tuple((repr(key), _signature(value[key])) for key in sorted(value, key=repr))
  if isinstance(value, (list, tuple)):
    return (type(value).__name__,) + tuple(_signature(item) for item in value)
  if hasattr(value, "shape") and hasattr(value, "dtype"):
    return (type(value).__name__, tuple(value.shape), str(value.dtype))
  try:
    hash(value)
  except TypeError:
    return ("object", id(value))
  return ("value", type(value).__name__, value)


def _ranks(structure):
  """The rank of every array-like leaf of `structure` (None for other leaves), in flatten order."""
  return tuple(len(leaf.shape) if hasattr(leaf, "shape") and hasattr(leaf, "dtype") else None
               for leaf in tf.nest.flatten(structure))
