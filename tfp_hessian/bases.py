"""Value, gradient and Hessian of a base distribution's log density, `[*batch]`, `[*batch, D]`, `[*batch, D, D]`.

Closed forms for the usual bases:

.. math::

    \\text{MVN}(μ, SSᵀ):\\quad ∇ = -S^{-T} S^{-1} (x - μ), \\qquad ∇² = -S^{-T} S^{-1}

(the precision is formed once per call from the scale operator's structure), and for coordinatewise bases
(`Independent` or `Sample` of a scalar distribution) a diagonal Hessian: closed form for `Normal`, two
elementwise autodiff passes for any other scalar distribution. Any other base with vector events is
differentiated by nested tapes.
"""

import tensorflow as tf
import tensorflow_probability as tfp
from tensorflow_probability.python.distributions import independent as independent_lib
from tensorflow_probability.python.distributions import sample as sample_lib

tfd = tfp.distributions

__all__ = ["log_prob_derivatives", "has_closed_form"]

# TFP builds these private bases (not the public subclasses) when a member is not a CompositeTensor.
_INDEPENDENT = independent_lib._Independent  # pylint: disable=protected-access
_SAMPLE = sample_lib._Sample  # pylint: disable=protected-access


def _broadcast_hessian(hess, grad):
  d = tf.shape(grad)[-1]
  return tf.broadcast_to(hess, tf.concat([tf.shape(grad), [d]], 0))


def _mvn(distribution, x):
  scale = distribution.scale
  centered = x - distribution.loc if distribution.loc is not None else x
  white = scale.solvevec(centered)
  grad = -scale.solvevec(white, adjoint=True)
  if isinstance(scale, (tf.linalg.LinearOperatorDiag, tf.linalg.LinearOperatorScaledIdentity,
                        tf.linalg.LinearOperatorIdentity)):
    variance = tf.square(scale.diag_part())
    hess = tf.linalg.diag(-tf.math.reciprocal(variance))
  else:
    inverse = scale.solve(tf.eye(scale.range_dimension_tensor(), dtype=x.dtype))
    hess = -tf.linalg.matmul(inverse, inverse, adjoint_a=True)
  return distribution.log_prob(x), grad, _broadcast_hessian(hess, grad)


def _raise_if_not_differentiable(distribution, gradient):
  if gradient is None:
    raise NotImplementedError(
        f"The base distribution {distribution.name!r} ({type(distribution).__name__}) has no closed-form "
        "derivatives here, and its `log_prob` is not differentiable by tf.GradientTape (the gradient of "
        "`log_prob(x)` with respect to `x` is None). Use a base with closed-form derivatives "
        "(`tfd.MultivariateNormalLinearOperator` and its subclasses, or `tfd.Independent`/`tfd.Sample` of a "
        "scalar distribution with a differentiable `log_prob`), or make its `log_prob` differentiable.")


def _scalar_derivatives(scalar_distribution, x):
  """Per-coordinate first and second derivatives of a scalar distribution's log density at `x`."""
  if isinstance(scalar_distribution, tfd.Normal):
    precision = tf.math.reciprocal(tf.square(scalar_distribution.scale))
    d1 = -(x - scalar_distribution.loc) * precision
    return d1, -tf.broadcast_to(precision, tf.shape(d1))
  # Coordinates are independent, so the gradient of the sum is the vector of per-coordinate derivatives.
  x = tf.identity(x)
  with tf.GradientTape() as outer:
    outer.watch(x)
    with tf.GradientTape() as inner:
      inner.watch(x)
      log_prob = scalar_distribution.log_prob(x)
    d1 = inner.gradient(log_prob, x)
    _raise_if_not_differentiable(scalar_distribution, d1)
  # ZERO, not None, where the log density is linear in x (its gradient is then constant).
  return d1, outer.gradient(d1, x, unconnected_gradients=tf.UnconnectedGradients.ZERO)


def _coordinatewise(distribution, x):
  """`Independent(scalar, 1)` or `Sample(scalar, [D])`: a diagonal Hessian."""
  inner = distribution.distribution
  if isinstance(distribution, _SAMPLE):
    # The sample axis is the event axis; the scalar distribution's batch axes come before it in `x` but
    # after it in the layout it broadcasts against.
    moved = tf.experimental.numpy.moveaxis(x, -1, 0)
    d1, d2 = _scalar_derivatives(inner, moved)
    d1, d2 = (tf.experimental.numpy.moveaxis(t, 0, -1) for t in (d1, d2))
  else:
    d1, d2 = _scalar_derivatives(inner, x)
  d1 = tf.broadcast_to(d1, tf.broadcast_dynamic_shape(tf.shape(d1), tf.shape(x)))
  d2 = tf.broadcast_to(d2, tf.shape(d1))
  return distribution.log_prob(x), d1, tf.linalg.diag(d2)


def _is_coordinatewise(distribution):
  if isinstance(distribution, _INDEPENDENT):
    return (distribution.distribution.event_shape.rank == 0
            and tf.get_static_value(distribution.reinterpreted_batch_ndims) == 1)
  if isinstance(distribution, _SAMPLE):
    return (distribution.distribution.event_shape.rank == 0
            and distribution.event_shape.rank == 1)
  return False


def _autodiff(distribution, x):
  """Nested tapes over a base with vector events; points are independent, so sums give per-point terms."""
  x = tf.identity(x)
  batch_rank = x.shape.rank - 1
  with tf.GradientTape() as outer:
    outer.watch(x)
    with tf.GradientTape() as inner:
      inner.watch(x)
      log_prob = distribution.log_prob(x)
    grad = inner.gradient(log_prob, x)
    _raise_if_not_differentiable(distribution, grad)
    summed = tf.reduce_sum(grad, axis=list(range(batch_rank)))
  hess = outer.jacobian(summed, x, unconnected_gradients=tf.UnconnectedGradients.ZERO)  # [D, *batch, D]
  hess = tf.transpose(hess, list(range(1, batch_rank + 1)) + [0, batch_rank + 1])
  return log_prob, grad, hess


def has_closed_form(distribution):
  """True if `distribution`'s derivatives have a closed form here (so a flow stops unwrapping at it)."""
  return isinstance(distribution, tfd.MultivariateNormalLinearOperator) or _is_coordinatewise(distribution)


def log_prob_derivatives(distribution, x):
  """`(log p(x), ∇ log p(x), ∇² log p(x))` for a distribution with vector events, at `x` (`[*batch, D]`)."""
  with tf.name_scope("base_log_prob_derivatives"):
    if isinstance(distribution, tfd.MultivariateNormalLinearOperator):
      return _mvn(distribution, x)
    if _is_coordinatewise(distribution):
      return _coordinatewise(distribution, x)
    return _autodiff(distribution, x)
