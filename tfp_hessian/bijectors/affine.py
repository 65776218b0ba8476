"""Rules for linear and affine bijectors: constant Jacobians, no second derivatives.

Whatever is the same for every point (the inverse matrix) is formed once per call, from the operator's own
structure: a diagonal scale stays a vector, a triangular one is inverted by one triangular solve against the
identity, an LU factorisation by its own solve. Points then cost one matrix product each, never a solve.
"""

import tensorflow as tf
import tensorflow_probability as tfp

from tfp_hessian import events, registry
from tfp_hessian.pullback import ElementwisePullback, LinearPullback

tfb = tfp.bijectors

_DIAGONAL_OPERATORS = (
    tf.linalg.LinearOperatorDiag,
    tf.linalg.LinearOperatorIdentity,
    tf.linalg.LinearOperatorScaledIdentity,
)


def _inverse_and_ildj(bijector, y, layout, kwargs):
  return bijector.inverse(y, **kwargs), bijector.inverse_log_det_jacobian(y, event_ndims=layout.ranks, **kwargs)


@registry.register(tfb.Shift, events="coordinatewise")
def shift_rule(bijector, y, layout, kwargs):
  return ElementwisePullback(*_inverse_and_ildj(bijector, y, layout, kwargs), x_layout=layout)


@registry.register(tfb.Scale, events="coordinatewise")
def scale_rule(bijector, y, layout, kwargs):
  # Either parameter may be a Python float, a tensor or a variable, of any shape that broadcasts to the points.
  if bijector.scale is not None:
    d1 = tf.math.reciprocal(tf.cast(bijector.scale, y.dtype))
  else:
    d1 = tf.exp(-tf.cast(bijector.log_scale, y.dtype))
  return ElementwisePullback(*_inverse_and_ildj(bijector, y, layout, kwargs), d1=d1, x_layout=layout)


@registry.register(tfb.ScaleMatvecLinearOperator)
def scale_matvec_linear_operator_rule(bijector, y, layout, kwargs):
  """`y = A x` (or `Aᴴ x`): the pullback multiplies by `A⁻¹`, formed once from the operator's structure."""
  operator = bijector.scale
  if isinstance(operator, _DIAGONAL_OPERATORS):
    d1 = tf.math.reciprocal(tf.cast(operator.diag_part(), y.dtype))
    return ElementwisePullback(*_inverse_and_ildj(bijector, y, layout, kwargs), d1=d1)
  eye = tf.eye(operator.range_dimension_tensor(), dtype=operator.dtype)
  inverse_matrix = operator.solve(eye, adjoint=bijector.adjoint)
  matrix = operator.to_dense()
  if bijector.adjoint:
    matrix = tf.linalg.adjoint(matrix)
  return LinearPullback(*_inverse_and_ildj(bijector, y, layout, kwargs), matrix=inverse_matrix,
                        inverse_matrix=matrix)


@registry.register(tfb.ScaleMatvecLU)
def scale_matvec_lu_rule(bijector, y, layout, kwargs):
  """`y = P L U x`: `A⁻¹` from the factorisation by one LU solve against the identity."""
  lower_upper = tf.convert_to_tensor(bijector.lower_upper)
  permutation = tf.convert_to_tensor(bijector.permutation)
  return LinearPullback(
      *_inverse_and_ildj(bijector, y, layout, kwargs),
      matrix=tfp.math.lu_matrix_inverse(lower_upper, permutation),
      inverse_matrix=tfp.math.lu_reconstruct(lower_upper, permutation))


def _batch_shape(bijector, layout):
  return tf.TensorShape(bijector.experimental_batch_shape(y_event_ndims=layout.ranks))


@registry.register(tfb.ScaleMatvecLinearOperatorBlock, tfb.DiscreteCosineTransform, events="any")
def linear_rule(bijector, y, layout, kwargs):
  """A linear bijector of any event layout: `∂x/∂y` is its inverse at the basis vectors, formed once per call.

  `x = M y` over the flat events, so pushing the `n` basis vectors through `inverse` (one batch of `n` points)
  gives the columns of `M`. Layers with a batch shape of their own, or with conditions, take the fallback.
  """
  if kwargs or _batch_shape(bijector, layout).rank != 0:
    return registry.fallback(bijector, y, layout, kwargs)
  x, ildj = _inverse_and_ildj(bijector, y, layout, kwargs)
  x_layout = events.layout_of(x, bijector.inverse_event_ndims(layout.ranks))
  dtype = tf.nest.flatten(y)[0].dtype
  basis = tf.concat([tf.zeros([1, layout.size], dtype), tf.eye(layout.size, dtype=dtype)], axis=0)
  images = x_layout.flatten(bijector.inverse(layout.unflatten(basis)))  # [1 + n_y, n_x]
  matrix = tf.linalg.matrix_transpose(images[1:] - images[:1])
  return LinearPullback(x, ildj, matrix=matrix, x_layout=x_layout)
