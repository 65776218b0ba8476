"""Reference Hessians by plain autodiff: what the package is tested and benchmarked against.

- `naive_hessian`: `tf.hessians` of the summed log density inside `tf.function` (graph mode is required), the
  diagonal `[D, D]` blocks of the `[N, D, N, D]` result taken per point.
- `tape_hessian`: nested `tf.GradientTape`s, `batch_jacobian` of the gradient: what an expert writes by hand.
- `tape_gradient`: one `tf.GradientTape`, the gradient the Hessian references differentiate.

Both differentiate `distribution.log_prob` itself, so they share none of the package's rules. Both feed the
distribution a reshaped copy of `z`, so TFP's cache of sampled tensors cannot cut `z` off the tape.
"""

import numpy as np
import tensorflow as tf

__all__ = ["naive_hessian", "tape_gradient", "tape_hessian"]


def _flat_points(distribution, z):
  """`(flat [N, D], shape)`: `z` broadcast against the distribution's batch shape, then flattened."""
  z = tf.convert_to_tensor(z, dtype_hint=distribution.dtype)
  if z.shape.rank is None or z.shape.rank < 1 or not z.shape.is_fully_defined():
    raise ValueError(f"The references need `z` of static shape [*batch, D]; got shape {z.shape}.")
  batch = tf.broadcast_static_shape(z.shape[:-1], distribution.batch_shape)
  shape = batch.concatenate(z.shape[-1:])
  flat = tf.reshape(tf.broadcast_to(z, shape), [int(np.prod(batch.as_list(), dtype=np.int64)), shape[-1]])
  return flat, shape


def _summed_log_prob(distribution, flat, shape):
  return tf.reduce_sum(distribution.log_prob(tf.reshape(flat, shape)))


def naive_hessian(distribution, z):
  """Per-point Hessians of `distribution.log_prob` by `tf.hessians`, `[*batch, D, D]`.

  `tf.hessians` differentiates a sum, so it returns the `[N, D, N, D]` Hessian of the summed log density; the
  points are independent and the per-point Hessians are its diagonal blocks. Runs inside `tf.function`.
  """
  flat, shape = _flat_points(distribution, z)

  def hessians(flat):
    full = tf.hessians(_summed_log_prob(distribution, flat, shape), flat)[0]  # [N, D, N, D]
    blocks = tf.linalg.diag_part(tf.transpose(full, [1, 3, 0, 2]))  # [D, D, N]
    return tf.reshape(tf.transpose(blocks, [2, 0, 1]), shape.concatenate(shape[-1:]))

  if tf.inside_function():
    return hessians(flat)
  return tf.function(hessians, autograph=False)(flat)


def tape_hessian(distribution, z):
  """Per-point Hessians of `distribution.log_prob` by nested `GradientTape`s, `[*batch, D, D]`."""
  flat, shape = _flat_points(distribution, z)
  with tf.GradientTape() as outer:
    outer.watch(flat)
    with tf.GradientTape() as inner:
      inner.watch(flat)
      log_prob = _summed_log_prob(distribution, flat, shape)
    grad = inner.gradient(log_prob, flat)
  hess = outer.batch_jacobian(grad, flat)
  return tf.reshape(hess, shape.concatenate(shape[-1:]))


def tape_gradient(distribution, z):
  """Per-point gradients of `distribution.log_prob` by one `GradientTape`, `[*batch, D]`."""
  flat, shape = _flat_points(distribution, z)
  with tf.GradientTape() as tape:
    tape.watch(flat)
    log_prob = _summed_log_prob(distribution, flat, shape)
  return tf.reshape(tape.gradient(log_prob, flat), shape)
