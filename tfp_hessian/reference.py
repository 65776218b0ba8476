"""Reference Hessians by plain autodiff: what the package is tested and benchmarked against.

- `naive_hessian`: `tf.hessians` of the summed log density inside `tf.function` (graph mode is required), the
  diagonal `[n, n]` blocks of the `[N, n, N, n]` result taken per point.
- `tape_hessian`: nested `tf.GradientTape`s, `batch_jacobian` of the gradient: what an expert writes by hand
  (`tape_derivatives`: the gradient too, from the same recording).
- `tape_gradient`: one `tf.GradientTape`, the gradient the Hessian references differentiate.

All three differentiate `distribution.log_prob(z, **kwargs)` itself, so they share none of the package's rules,
over the flat event (`tfp_hessian.flatten_event`: parts in `tf.nest.flatten` order, each row-major) so that
structured events compare entry by entry. Each point is made its own first (broadcast to the batch shape that
`log_prob` gives, which conditions may enlarge), and the distribution is fed a reshaped copy of the points, so
TFP's cache of sampled tensors cannot cut them off the tape.
"""

import numpy as np
import tensorflow as tf

from tfp_hessian import events, private_api, tapes

__all__ = ["naive_hessian", "tape_derivatives", "tape_gradient", "tape_hessian"]


def _flat_points(distribution, z, kwargs):
  """`(flat [N, n], batch, layout)`: `z` broadcast to `log_prob`'s batch shape, then flattened."""
  distribution = private_api.resolve_deferred(distribution)
  layout = events.layout_of_distribution(distribution)
  dtype = tf.nest.flatten(distribution.dtype)[0]
  z = layout.pack([tf.convert_to_tensor(part, dtype_hint=dtype) for part in layout.parts(z)])
  batch = tf.TensorShape(distribution.log_prob(z, **kwargs).shape)
  if not batch.is_fully_defined():
    raise ValueError(f"The references need points of static shape; `log_prob` has shape {batch}.")
  flat = layout.flatten(layout.broadcast(z, batch))
  return tf.reshape(flat, [int(np.prod(batch.as_list(), dtype=np.int64)), layout.size]), batch, layout, distribution


def _summed_log_prob(distribution, flat, batch, layout, kwargs):
  points = layout.unflatten(tf.reshape(flat, batch.concatenate([layout.size])))
  return tf.reduce_sum(distribution.log_prob(points, **kwargs))


def naive_hessian(distribution, z, **kwargs):
  """Per-point Hessians of `distribution.log_prob` by `tf.hessians`, `[*batch, n, n]`.

  `tf.hessians` differentiates a sum, so it returns the `[N, n, N, n]` Hessian of the summed log density; the
  points are independent and the per-point Hessians are its diagonal blocks. Runs inside `tf.function`.
  """
  flat, batch, layout, distribution = _flat_points(distribution, z, kwargs)

  def hessians(flat):
    full = tf.hessians(_summed_log_prob(distribution, flat, batch, layout, kwargs), flat)[0]  # [N, n, N, n]
    blocks = tf.linalg.diag_part(tf.transpose(full, [1, 3, 0, 2]))  # [n, n, N]
    return tf.reshape(tf.transpose(blocks, [2, 0, 1]), batch.concatenate([layout.size, layout.size]))

  if tf.inside_function():
    return hessians(flat)
  return tf.function(hessians, autograph=False)(flat)


def tape_derivatives(distribution, z, **kwargs):
  """`(gradient [*batch, n], hessian [*batch, n, n])` of `distribution.log_prob` by nested `GradientTape`s: the
  inner tape's gradient and the `batch_jacobian` of it, from one recording."""
  flat, batch, layout, distribution = _flat_points(distribution, z, kwargs)
  # Eagerly a loop of gradients, not pfor, at small sizes (`tapes.use_pfor`).
  grad, hess = tapes.batch_hessian(lambda flat: _summed_log_prob(distribution, flat, batch, layout, kwargs), flat,
                                   experimental_use_pfor=tapes.use_pfor(layout.size))
  return (tf.reshape(grad, batch.concatenate([layout.size])),
          tf.reshape(hess, batch.concatenate([layout.size, layout.size])))


def tape_hessian(distribution, z, **kwargs):
  """Per-point Hessians of `distribution.log_prob` by nested `GradientTape`s, `[*batch, n, n]`."""
  return tape_derivatives(distribution, z, **kwargs)[1]


def tape_gradient(distribution, z, **kwargs):
  """Per-point gradients of `distribution.log_prob` by one `GradientTape`, `[*batch, n]`."""
  flat, batch, layout, distribution = _flat_points(distribution, z, kwargs)
  _, grad = tapes.gradient(lambda flat: _summed_log_prob(distribution, flat, batch, layout, kwargs), flat)
  return tf.reshape(grad, batch.concatenate([layout.size]))
