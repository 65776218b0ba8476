"""A limit on the memory of the few `[*batch, D, D, D]` tensors the package can form, checked before forming them.

The sweep itself needs `O(D²)` per point. Two paths need `O(D³)`: `inverse_hessian` (the full second-derivative
tensor, for inspection) and the dense autodiff fallback (a bijector of vector events without a rule). Each
estimates its largest tensor from static shapes and raises `ValueError` (saying the estimate, the limit and
what to do instead) before any of that work starts if the estimate exceeds the limit. A plain `ValueError`, so
that `tf.function`'s AutoGraph passes it on as it is (it wraps exception types it does not know):

>>> tfp_hessian.set_memory_limit(8 * 2**30)   # 8 GiB; or TFP_HESSIAN_MEMORY_LIMIT=8589934592 in the environment

Dimensions unknown when traced (a `tf.function` with `None` in its input signature) count as 1, so the check is
then a lower bound: it still refuses what is too large for a single point, but a large batch known only at run
time is not caught.
"""

import os

import numpy as np
import tensorflow as tf

__all__ = ["DEFAULT_MEMORY_LIMIT", "check_memory", "get_memory_limit", "set_memory_limit"]

DEFAULT_MEMORY_LIMIT = 2 * 2**30
ENVIRONMENT_VARIABLE = "TFP_HESSIAN_MEMORY_LIMIT"

_limit = []  # Empty: the environment variable, else the default.


def set_memory_limit(num_bytes):
  """Sets the largest tensor, in bytes, the `O(D³)` paths may form; `None` restores the default.

  Args:
    num_bytes: a positive integer, or `None` for `TFP_HESSIAN_MEMORY_LIMIT` (if set) else 2 GiB.
  """
  if num_bytes is None:
    _limit[:] = []
    return
  if isinstance(num_bytes, bool) or not isinstance(num_bytes, (int, np.integer)) or num_bytes <= 0:
    raise ValueError(f"`num_bytes` must be a positive integer or None; got {num_bytes!r}.")
  _limit[:] = [int(num_bytes)]


def get_memory_limit():
  """The limit in bytes: `set_memory_limit`'s, else `TFP_HESSIAN_MEMORY_LIMIT`'s, else 2 GiB."""
  if _limit:
    return _limit[0]
  value = os.environ.get(ENVIRONMENT_VARIABLE)
  if value is None:
    return DEFAULT_MEMORY_LIMIT
  try:
    limit = int(value)
  except ValueError:
    limit = 0
  if limit <= 0:
    raise ValueError(f"{ENVIRONMENT_VARIABLE} must be a positive integer number of bytes; got {value!r}.")
  return limit


def _format(num_bytes):
  return f"{num_bytes / 2**30:.3g} GiB ({num_bytes:,} bytes)"


def check_memory(what, shape, dtype, instead):
  """Raises `ValueError` if a tensor of `shape` and `dtype` would exceed the limit.

  Args:
    what: the tensor and who forms it, for the message.
    shape: its `tf.TensorShape` (or list); unknown dimensions count as 1.
    dtype: its dtype.
    instead: what the user can do instead, for the message.
  """
  shape = tf.TensorShape(shape)
  if shape.rank is None:
    return
  known = [1 if d is None else int(d) for d in shape.as_list()]
  estimate = int(np.prod(known, dtype=np.float64)) * tf.as_dtype(dtype).size
  limit = get_memory_limit()
  if estimate > limit:
    partial = "" if shape.is_fully_defined() else " (a lower bound: unknown dimensions counted as 1)"
    raise ValueError(
        f"{what} would hold a tensor of shape {shape} and dtype {tf.as_dtype(dtype).name}: an estimated "
        f"{_format(estimate)}{partial}, over the memory limit of {_format(limit)}. {instead} Or raise the limit "
        f"with `tfp_hessian.set_memory_limit(num_bytes)` or the {ENVIRONMENT_VARIABLE} environment variable.")
