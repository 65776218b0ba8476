"""Rules for affine bijectors: constant Jacobians, no second derivatives.

Whatever is the same for every point (the inverse matrix) is formed once per call, from the operator's own
structure: a diagonal scale stays a vector, a triangular one is inverted by one triangular solve against the
identity, an LU factorisation by its own solve. Points then cost one matrix product each, never a solve.
"""

import tensorflow as tf
import tensorflow_probability as tfp

from tfp_hessian import registry
from tfp_hessian.pullback import ElementwisePullback, LinearPullback

tfb = tfp.bijectors

_DIAGONAL_OPERATORS = (
    tf.linalg.LinearOperatorDiag,
    tf.linalg.LinearOperatorIdentity,
    tf.linalg.LinearOperatorScaledIdentity,
)


def _inverse_and_ildj(bijector, y):
  return bijector.inverse(y), bijector.inverse_log_det_jacobian(y, event_ndims=1)


@registry.register(tfb.Shift)
def shift_rule(bijector, y):
  return ElementwisePullback(*_inverse_and_ildj(bijector, y))


@registry.register(tfb.Scale)
def scale_rule(bijector, y):
  if bijector.scale is not None:
    d1 = tf.math.reciprocal(tf.cast(bijector.scale, y.dtype))
  else:
    d1 = tf.exp(-tf.cast(bijector.log_scale, y.dtype))
  return ElementwisePullback(*_inverse_and_ildj(bijector, y), d1=d1)


@registry.register(tfb.ScaleMatvecLinearOperator)
def scale_matvec_linear_operator_rule(bijector, y):
  """`y = A x` (or `Aᴴ x`): the pullback multiplies by `A⁻¹`, formed once from the operator's structure."""
  operator = bijector.scale
  if isinstance(operator, _DIAGONAL_OPERATORS):
    d1 = tf.math.reciprocal(tf.cast(operator.diag_part(), y.dtype))
    return ElementwisePullback(*_inverse_and_ildj(bijector, y), d1=d1)
  eye = tf.eye(operator.range_dimension_tensor(), dtype=operator.dtype)
  inverse_matrix = operator.solve(eye, adjoint=bijector.adjoint)
  matrix = operator.to_dense()
  if bijector.adjoint:
    matrix = tf.linalg.adjoint(matrix)
  return LinearPullback(*_inverse_and_ildj(bijector, y), matrix=inverse_matrix,
                        inverse_matrix=matrix)


@registry.register(tfb.ScaleMatvecLU)
def scale_matvec_lu_rule(bijector, y):
  """`y = P L U x`: `A⁻¹` from the factorisation by one LU solve against the identity."""
  lower_upper = tf.convert_to_tensor(bijector.lower_upper)
  permutation = tf.convert_to_tensor(bijector.permutation)
  return LinearPullback(
      *_inverse_and_ildj(bijector, y),
      matrix=tfp.math.lu_matrix_inverse(lower_upper, permutation),
      inverse_matrix=tfp.math.lu_reconstruct(lower_upper, permutation))
