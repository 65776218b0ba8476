"""Value, gradient and Hessian of a base distribution's log density, `[*batch]`, `[*batch, D]`, `[*batch, D, D]`.

Closed forms for the usual bases:

.. math::

    \\text{MVN}(μ, SSᵀ):\\quad ∇ = -S^{-T} S^{-1} (x - μ), \\qquad ∇² = -S^{-T} S^{-1}

(the precision is formed once per call from the scale operator's structure), and for coordinatewise bases
(a scalar distribution, `Independent` or `Sample` of one, over events of any rank) a diagonal Hessian: closed form
for `Normal`, two elementwise autodiff passes for any other scalar distribution. A `JointDistributionNamed` or
`JointDistributionSequential` of independent parts is block diagonal, each block its part's. Any other base (a
`JointDistribution` whose parts depend on each other, a multivariate Student t, a conditional base called with
`distribution_kwargs`) is differentiated by nested tapes on its `log_prob` over the flat event (`events.py`), with
every cross term.
"""

import tensorflow as tf
import tensorflow_probability as tfp

from tfp_hessian import events, private_api, tapes

tfd = tfp.distributions

__all__ = ["log_prob_derivatives", "is_structured_base"]

_INDEPENDENT = private_api.INDEPENDENT
_SAMPLE = private_api.SAMPLE


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
  _, d1, d2 = tapes.coordinatewise_derivatives(
      scalar_distribution.log_prob, x, check=lambda d1: _raise_if_not_differentiable(scalar_distribution, d1))
  return d1, d2


def _coordinatewise(distribution, x, layout):
  """`Independent(scalar, r)` or `Sample(scalar, shape)`: a diagonal Hessian over the flat event."""
  rank = layout.shapes[0].rank
  if rank == 0:
    d1, d2 = _scalar_derivatives(distribution, x)
    d1 = tf.broadcast_to(d1, tf.broadcast_dynamic_shape(tf.shape(d1), tf.shape(x)))
    d2 = tf.broadcast_to(d2, tf.shape(d1))
    return distribution.log_prob(x), d1[..., tf.newaxis], d2[..., tf.newaxis, tf.newaxis]
  inner = distribution.distribution
  if isinstance(distribution, _SAMPLE) and rank:
    # The sample axes are the event axes; the scalar distribution's batch axes come before them in `x` but
    # after them in the layout it broadcasts against.
    axes = list(range(-rank, 0))
    moved = tf.experimental.numpy.moveaxis(x, axes, list(range(rank)))
    d1, d2 = _scalar_derivatives(inner, moved)
    d1, d2 = (tf.experimental.numpy.moveaxis(t, list(range(rank)), axes) for t in (d1, d2))
  else:
    d1, d2 = _scalar_derivatives(inner, x)
  d1 = tf.broadcast_to(d1, tf.broadcast_dynamic_shape(tf.shape(d1), tf.shape(x)))
  d2 = tf.broadcast_to(d2, tf.shape(d1))
  return distribution.log_prob(x), layout.flatten(d1), tf.linalg.diag(layout.flatten(d2))


def _is_coordinatewise(distribution):
  if tf.nest.is_nested(distribution.dtype):
    return False
  if distribution.event_shape.rank == 0 and not isinstance(distribution, private_api.TRANSFORMED):
    return True  # a scalar distribution (a flow of one is unwrapped instead): its own single coordinate
  if isinstance(distribution, _INDEPENDENT):
    return (distribution.distribution.event_shape.rank == 0
            and tf.get_static_value(distribution.reinterpreted_batch_ndims) is not None)
  if isinstance(distribution, _SAMPLE):
    return distribution.distribution.event_shape.rank == 0 and distribution.event_shape.rank is not None
  return False


def _autodiff(distribution, x, layout, kwargs):
  """Nested tapes over `log_prob` on the flat event; points are independent, so sums give per-point terms."""
  flat = tf.identity(layout.flatten(x))
  return tapes.per_point_hessian(
      lambda flat: distribution.log_prob(layout.unflatten(flat), **kwargs), flat,
      unconnected_gradients=tapes.NONE, check=lambda grad: _raise_if_not_differentiable(distribution, grad))


def _independent_parts(distribution):
  """The parts of a `JointDistributionNamed`/`Sequential` none of which depends on another, else None."""
  if not isinstance(distribution, (tfd.JointDistributionNamed, tfd.JointDistributionSequential)) or isinstance(
      distribution, (tfd.JointDistributionNamedAutoBatched, tfd.JointDistributionSequentialAutoBatched)):
    return None
  model = distribution.model
  parts = tf.nest.flatten(model) if isinstance(model, dict) else list(model)
  if not all(isinstance(part, tfd.Distribution) for part in parts):
    return None  # a callable is a part that depends on others
  if isinstance(model, dict):
    parts = [model[key] for key in sorted(model)]  # `tf.nest.flatten` order, as the event's layout
  return parts


def _joint(distribution, x, layout):
  """Independent parts: each part's own derivatives, a block-diagonal Hessian."""
  parts = _independent_parts(distribution)
  values = layout.parts(x)
  results = [log_prob_derivatives(part, value, events.EventLayout(None, [shape]))
             for part, value, shape in zip(parts, values, layout.shapes)]
  log_prob = tf.add_n([r[0] for r in results]) if len(results) > 1 else results[0][0]
  batch = tf.shape(log_prob)
  grads = [tf.broadcast_to(r[1], tf.concat([batch, tf.shape(r[1])[-1:]], 0)) for r in results]
  hessians = [tf.linalg.LinearOperatorFullMatrix(tf.broadcast_to(r[2], tf.concat([batch, tf.shape(r[2])[-2:]], 0)))
              for r in results]
  return log_prob, tf.concat(grads, axis=-1), tf.linalg.LinearOperatorBlockDiag(hessians).to_dense()


def is_structured_base(distribution):
  """True if `log_prob_derivatives` uses `distribution`'s structure rather than nested tapes on its `log_prob`.

  That is a multivariate normal (closed form) or a coordinatewise distribution (a diagonal Hessian, in closed form
  for `Normal` and by elementwise tapes otherwise). The sweep takes such a distribution whole as the base even
  where it is a `TransformedDistribution` (`MultivariateNormalTriL` is one), rather than unwrapping its bijector.
  """
  return isinstance(distribution, tfd.MultivariateNormalLinearOperator) or _is_coordinatewise(distribution)


def log_prob_derivatives(distribution, x, layout, kwargs=None):
  """`(log p(x) [*batch], ∇ [*batch, n], ∇² [*batch, n, n])` over the flat event of `layout`, at `x`.

  Args:
    distribution: the base.
    x: its points, of event layout `layout`.
    layout: the `EventLayout` of `x`.
    kwargs: keyword arguments of `distribution.log_prob` (a conditional base); None for none.
  """
  kwargs = {} if kwargs is None else kwargs
  with tf.name_scope("base_log_prob_derivatives"):
    if not kwargs and layout.is_vector and isinstance(distribution, tfd.MultivariateNormalLinearOperator):
      return _mvn(distribution, x)
    if not kwargs and layout.is_single and _is_coordinatewise(distribution):
      return _coordinatewise(distribution, x, layout)
    if not kwargs and not layout.is_single and _independent_parts(distribution) is not None:
      return _joint(distribution, x, layout)
    return _autodiff(distribution, x, layout, kwargs)
