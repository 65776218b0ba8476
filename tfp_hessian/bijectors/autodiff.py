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
from tensorflow_probability.python.bijectors import chain as chain_lib
from tensorflow_probability.python.bijectors import invert as invert_lib

from tfp_hessian import memory, registry
from tfp_hessian.pullback import DensePullback, ElementwisePullback

__all__ = ["autodiff_rule", "check_dense_memory", "dense_autodiff_rule", "dense_fallback_bijectors",
           "elementwise_autodiff_rule", "is_coordinatewise"]

_ZERO = tf.UnconnectedGradients.ZERO
# TFP builds these private bases (not the public subclasses) when a member is not a CompositeTensor.
_CHAIN = chain_lib._Chain  # pylint: disable=protected-access
_INVERT = invert_lib._Invert  # pylint: disable=protected-access


def is_coordinatewise(bijector):
  """True if `bijector` acts on each coordinate alone (TFP's scalar-event bijectors).

  TFP's contract for `forward_min_event_ndims == 0` is that the bijector maps scalars to scalars, with its
  parameters broadcasting over the rest; a nested (multipart) `forward_min_event_ndims` is never coordinatewise.
  """
  min_ndims = bijector.forward_min_event_ndims
  return isinstance(min_ndims, (int, np.integer)) and min_ndims == 0


def _raise_if_not_differentiable(bijector, gradient):
  """The fallback differentiates `bijector.inverse`; a `None` gradient means autodiff cannot see through it."""
  if gradient is None:
    raise NotImplementedError(
        f"Bijector {bijector.name!r} ({type(bijector).__name__}) has no Hessian rule, and its inverse is not "
        "differentiable by tf.GradientTape (the gradient of `inverse(y)` with respect to `y` is None: a "
        "non-differentiable op such as tf.round, tf.stop_gradient or a numpy call in a tf.py_function). "
        "Give it a rule: define `_hessian_pullback(self, y)` returning a `tfp_hessian.pullback.Pullback`, or "
        "register one with `tfp_hessian.registry.register`.")


def dense_fallback_bijectors(bijector):
  """The bijectors among `bijector` and its members (`Chain`, `Invert`) that the dense autodiff rule serves."""
  if registry.lookup(bijector) is registry.fallback:
    return [] if is_coordinatewise(bijector) else [bijector]
  if isinstance(bijector, _CHAIN):
    return [b for member in bijector.bijectors for b in dense_fallback_bijectors(member)]
  if isinstance(bijector, _INVERT):
    inner = bijector.bijector
    if isinstance(inner, _CHAIN):
      return [b for member in inner.bijectors for b in dense_fallback_bijectors(invert_lib.Invert(member))]
    if isinstance(inner, _INVERT):
      return dense_fallback_bijectors(inner.bijector)
  return []


def _dense_shape(batch_shape, size):
  return tf.TensorShape(batch_shape).concatenate([None if size is None else size + 1, size, size])


def check_dense_memory(bijector, batch_shape, size, dtype):
  """Raises `ValueError` if a dense autodiff layer of `bijector` would exceed the memory limit.

  Args:
    bijector: a layer of the flow (its `Chain` and `Invert` members are checked too).
    batch_shape: the static batch shape of the points, `*batch`.
    size: the event size D.
    dtype: the points' dtype.
  """
  for dense in dense_fallback_bijectors(bijector):
    _check_dense(dense, batch_shape, size, dtype)


def _check_dense(bijector, batch_shape, size, dtype):
  memory.check_memory(
      f"The dense autodiff fallback of bijector {bijector.name!r} ({type(bijector).__name__})",
      _dense_shape(batch_shape, size), dtype,
      "Give the bijector a structured rule (`_hessian_pullback(self, y)` or `tfp_hessian.registry.register`), "
      "or pass fewer points per call.")


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
    d1 = inner.gradient(x_sum, y)
    _raise_if_not_differentiable(bijector, d1)
    dlog1 = inner.gradient(log_d1_sum, y, unconnected_gradients=_ZERO)
    d1_sum, dlog1_sum = tf.reduce_sum(d1), tf.reduce_sum(dlog1)
  d2 = outer.gradient(d1_sum, y, unconnected_gradients=_ZERO)
  dlog2 = outer.gradient(dlog1_sum, y, unconnected_gradients=_ZERO)
  del inner, outer
  # TFP reduces the per-coordinate log-det it has just cached, so this costs a sum.
  ildj = bijector.inverse_log_det_jacobian(y, event_ndims=1)
  return ElementwisePullback(x, ildj, d1=d1, d2=d2, dlog1=dlog1, dlog2=dlog2)


def dense_autodiff_rule(bijector, y):
  """`DensePullback` of `bijector` at `y` (`[*batch, D]`) by nested tapes.

  Its `[*batch, D + 1, D, D]` second derivatives are checked against `tfp_hessian.get_memory_limit()` first.
  """
  _check_dense(bijector, y.shape[:-1], y.shape[-1], y.dtype)
  # A fresh tensor: TFP caches the inverse of tensors it produced, which would cut `x` off the tape.
  y = tf.identity(y)
  batch_rank = y.shape.rank - 1
  batch_axes = list(range(batch_rank))
  with tf.GradientTape() as outer:
    outer.watch(y)
    with tf.GradientTape(persistent=True) as inner:
      inner.watch(y)
      x = bijector.inverse(y)
      ildj = bijector.inverse_log_det_jacobian(y, event_ndims=1)
      ildj = tf.broadcast_to(ildj, tf.shape(y)[:-1])
      # [*batch, D + 1]: the inverse and its log-det, differentiated together.
      values = tf.concat([x, ildj[..., tf.newaxis]], axis=-1)
      summed = tf.reduce_sum(values, axis=batch_axes)
    with outer.stop_recording():
      _raise_if_not_differentiable(bijector, inner.gradient(x, y))
    first = inner.jacobian(summed, y, unconnected_gradients=_ZERO)  # [D + 1, *batch, D]
    first_summed = tf.reduce_sum(first, axis=[a + 1 for a in batch_axes])  # [D + 1, D]
  del inner
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
