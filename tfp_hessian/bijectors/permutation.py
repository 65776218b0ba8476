"""Rule for bijectors that only move coordinates: derivatives are gathered, never multiplied.

`Permute` (along any axis), `Reshape`, `Split`, `Restructure` and `Transpose` rearrange the entries of an event
without changing them, so over the flat events (`events.py`) each is a permutation `x_flat = y_flat[σ]`, with a
zero log-det. `σ` is read off the bijector itself: its inverse applied to the flat positions `0, 1, …, n - 1`,
laid out as an event of `y`, puts each position where that entry goes. One small call per sweep, and nothing to
write per bijector.
"""

import numpy as np
import tensorflow as tf
import tensorflow_probability as tfp

from tfp_hessian import events, registry
from tfp_hessian.pullback import ElementwisePullback, PermutationPullback

tfb = tfp.bijectors


@registry.register(tfb.Permute, tfb.Reshape, tfb.Split, tfb.Restructure, tfb.Transpose, events="any")
def index_map_rule(bijector, y, layout, kwargs):
  x = bijector.inverse(y, **kwargs)
  x_layout = events.layout_of(x, bijector.inverse_event_ndims(layout.ranks, **kwargs))
  # Positions as floats (exact below 2^24 even in float32) of the bijector's dtype, one event without a batch.
  dtype = tf.nest.flatten(y)[0].dtype
  positions = layout.unflatten(tf.range(layout.size, dtype=dtype))
  source = tf.cast(x_layout.flatten(bijector.inverse(positions, **kwargs)), tf.int32)
  static = tf.get_static_value(source)
  if static is not None and np.array_equal(static, np.arange(layout.size)):
    # Bookkeeping that keeps the flat order (`Reshape`, a `Restructure` of the same order): nothing to do.
    return ElementwisePullback(x, tf.zeros([], dtype), x_layout=x_layout)
  return PermutationPullback(x, tf.zeros([], dtype), source=source, x_layout=x_layout)
