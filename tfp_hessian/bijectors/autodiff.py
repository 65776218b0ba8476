"""The fallback rule: any bijector with vector events, differentiated by nested `GradientTape`s.

It is exact but costs what autodiff costs. Only the bijectors without an analytic rule pay it, and only for their
own layer; the rest of the chain keeps its structured pullbacks. Two cases:

- a *coordinatewise* bijector (`forward_min_event_ndims == 0`: `tfb.RationalQuadraticSpline`, `tfb.GumbelCDF`,
  `tfb.KumaraswamyCDF`, `tfb.SoftClip`, …) acts on each coordinate alone, `x_i = φ_i(y_i)`. Its four scalar
  derivatives `φ'`, `φ''`, `(log|φ'|)'`, `(log|φ'|)''` come from four backward passes, whatever `D`, and serve an
  `ElementwisePullback`: O(D) per point, a diagonal Jacobian and Hessian by construction. `Invert` of such a
  bijector is coordinatewise too, so it gets the same rule.
- any other bijector gets the Jacobian and the `[D, D, D]` second-derivative tensor of its inverse, and the
  gradient and Hessian of its log-det, per point: a `DensePullback`, O(D³).

Points are independent under a bijector, so derivatives of sums over the batch are per-point derivatives; that
lets one `gradient` or `jacobian` call serve any batch shape, and the layer's parameters keep their own
broadcasting. For a coordinatewise bijector the coordinates are independent too, so the gradient of the sum over
*all* entries is the vector of per-coordinate derivatives.
"""

import numpy as np
import tensorflow as tf

from tfp_hessian import registry
from tfp_hessian.pullback import DensePullback, ElementwisePullback

__all__ = ["autodiff_rule", "dense_autodiff_rule", "elementwise_autodiff_rule", "is_coordinatewise"]

_ZERO = tf.UnconnectedGradients.ZERO


def is_coordinatewise(bijector):
  """True if `bijector` acts on each coordinate alone (TFP's scalar-event bijectors).

  TFP's contract for `forward_min_event_ndims == 0` is that the bijector maps scalars to scalars, with its
  parameters broadcasting over the rest; a nested (multipart) `forward_min_event_ndims` is never coordinatewise.
  """
  min_ndims = bijector.forward_min_event_ndims
  return isinstance(min_ndims, (int, np.integer)) and min_ndims == 0


def _event_last(jacobian, batch_rank):
  """`[*event_out, *batch, D]` (as `tape.jacobian` returns it) to `[*batch, *event_out, D]`."""
  out_rank = jacobian.shape.rank - batch_rank - 1
  perm = (list(range(out_rank, out_rank + batch_rank)) + list(range(out_rank))
          + [out_rank + batch_rank])
  return tf.transpose(jacobian, perm)


def elementwise_autodiff_rule(bijector, y):
  """`ElementwisePullback` of a coordinatewise `bijector` at `y` (`[*batch, D]`) by nested tapes.

  With `x_i = φ_i(y_i)` every entry of `x` depends on its own entry of `y` only, so `∂(Σ x)/∂y = φ'(y)` and
  `∂(Σ φ')/∂y = φ''(y)`; the same holds for the per-coordinate log-det `log|φ'(y_i)|`, which TFP gives as
  `inverse_log_det_jacobian(y, event_ndims=0)`.
  """
  # A fresh tensor: TFP caches the inverse of tensors it produced, which would cut `x` off the tape.
  y = tf.identity(y)
  with tf.GradientTape(persistent=True) as outer:
    outer.watch(y)
    with tf.GradientTape(persistent=True) as inner:
      inner.watch(y)
      x = bijector.inverse(y)
      log_d1 = bijector.inverse_log_det_jacobian(y, event_ndims=0)
      x_sum, log_d1_sum = tf.reduce_sum(x), tf.reduce_sum(log_d1)
    d1 = inner.gradient(x_sum, y, unconnected_gradients=_ZERO)
    dlog1 = inner.gradient(log_d1_sum, y, unconnected_gradients=_ZERO)
    d1_sum, dlog1_sum = tf.reduce_sum(d1), tf.reduce_sum(dlog1)
  d2 = outer.gradient(d1_sum, y, unconnected_gradients=_ZERO)
  dlog2 = outer.gradient(dlog1_sum, y, unconnected_gradients=_ZERO)
  del inner, outer
  # TFP reduces the per-coordinate log-det it has just cached, so this costs a sum.
  ildj = bijector.inverse_log_det_jacobian(y, event_ndims=1)
  return ElementwisePullback(x, ildj, d1=d1, d2=d2, dlog1=dlog1, dlog2=dlog2)


def dense_autodiff_rule(bijector, y):
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
    first = inner.jacobian(summed, y, unconnected_gradients=_ZERO)  # [D + 1, *batch, D]
    first_summed = tf.reduce_sum(first, axis=[a + 1 for a in batch_axes])  # [D + 1, D]
  # ZERO, not None, where the inverse is linear (`Cumsum`): nothing of `first` then depends on `y`.
  second = outer.jacobian(first_summed, y, unconnected_gradients=_ZERO)  # [D + 1, D, *batch, D]
  first = _event_last(first, batch_rank)
  second = _event_last(second, batch_rank)
  return DensePullback(
      x, ildj,
      jacobian=first[..., :-1, :],
      hessian=second[..., :-1, :, :],
      ildj_gradient=first[..., -1, :],
      ildj_hessian=second[..., -1, :, :])


@registry.register_fallback
def autodiff_rule(bijector, y):
  """The autodiff pullback of `bijector` at `y`: elementwise for a coordinatewise bijector, else dense."""
  if is_coordinatewise(bijector):
    return elementwise_autodiff_rule(bijector, y)
  return dense_autodiff_rule(bijector, y)
