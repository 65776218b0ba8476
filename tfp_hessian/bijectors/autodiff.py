"""The fallback rule: any bijector with vector events, differentiated by nested `GradientTape`s.

It is exact but costs what autodiff costs: the Jacobian and the `[D, D, D]` second-derivative tensor of the
inverse, and the gradient and Hessian of its log-det, per point. Only the bijectors without an analytic rule pay
it, and only for their own layer; the rest of the chain keeps its structured pullbacks.

Points are independent under a bijector, so derivatives of sums over the batch are per-point derivatives; that
lets one `jacobian` call serve any batch shape, and the layer's parameters keep their own broadcasting.
"""

import tensorflow as tf

from tfp_hessian import registry
from tfp_hessian.pullback import DensePullback


def _event_last(jacobian, batch_rank):
  """`[*event_out, *batch, D]` (as `tape.jacobian` returns it) to `[*batch, *event_out, D]`."""
  out_rank = jacobian.shape.rank - batch_rank - 1
  perm = (list(range(out_rank, out_rank + batch_rank)) + list(range(out_rank))
          + [out_rank + batch_rank])
  return tf.transpose(jacobian, perm)


@registry.register_fallback
def autodiff_rule(bijector, y):
  """`DensePullback` of `bijector` at `y` (`[*batch, D]`) by nested tapes."""
  # A fresh tensor: TFP caches the inverse of tensors it produced, which would cut `x` off the tape.
  y = tf.identity(y)
  batch_rank = y.shape.rank - 1
  batch_axes = list(range(batch_rank))
  with tf.GradientTape() as outer:
    outer.watch(y)
    with tf.GradientTape() as inner:
      inner.watch(y)
      x = bijector.inverse(y)
      ildj = bijector.inverse_log_det_jacobian(y, event_ndims=1)
      ildj = tf.broadcast_to(ildj, tf.shape(y)[:-1])
      # [*batch, D + 1]: the inverse and its log-det, differentiated together.
      values = tf.concat([x, ildj[..., tf.newaxis]], axis=-1)
      summed = tf.reduce_sum(values, axis=batch_axes)
    first = inner.jacobian(summed, y)  # [D + 1, *batch, D]
    first_summed = tf.reduce_sum(first, axis=[a + 1 for a in batch_axes])  # [D + 1, D]
  second = outer.jacobian(first_summed, y)  # [D + 1, D, *batch, D]
  first = _event_last(first, batch_rank)
  second = _event_last(second, batch_rank)
  return DensePullback(
      x, ildj,
      jacobian=first[..., :-1, :],
      hessian=second[..., :-1, :, :],
      ildj_gradient=first[..., -1, :],
      ildj_hessian=second[..., -1, :, :])
