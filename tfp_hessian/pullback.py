"""Pullbacks: one bijector's second-order contribution to the sweep.

A bijector's inverse ``x = h(y)`` carries a log density ``F`` on its input side to a log density on its
output side, ``G(y) = F(h(y)) + ildj(y)`` with ``ildj(y) = log|det ∂h/∂y|``. A *pullback* is the local model of
``h`` at a batch of points ``y`` that maps derivatives of ``F`` at ``x`` to derivatives of ``G`` at ``y``:

.. math::

    ∇G = J^T ∇F + ∇\\,ildj, \\qquad
    ∇^2 G = J^T (∇^2 F) J + \\sum_k (∇F)_k ∇^2 h_k + ∇^2 ildj, \\qquad J = ∂h/∂y.

Each class below implements that map for one structure (diagonal, constant matrix, permutation, dense) at the
cost the structure allows, together with its inverse map (``invert``), which ``Invert`` uses. None of them know
which bijector produced them, nor anything about chains.

Shapes: points are ``[*batch, D]``; gradients ``[*batch, D]``; Hessians ``[*batch, D, D]``. Quantities that are
the same for every point (an affine layer's matrix) keep a smaller batch shape and broadcast.
"""

import abc

import tensorflow as tf

__all__ = [
    "Pullback",
    "ElementwisePullback",
    "LinearPullback",
    "PermutationPullback",
    "DensePullback",
    "InvertedPullback",
    "ComposedPullback",
]


def _outer(a, b):
  return a[..., :, tf.newaxis] * b[..., tf.newaxis, :]


def _add_to_diagonal(matrix, diagonal):
  """`matrix + diag(diagonal)`, broadcasting both, without materialising `diag(diagonal)`."""
  shape = tf.broadcast_dynamic_shape(tf.shape(matrix), tf.shape(diagonal[..., tf.newaxis]))
  matrix = tf.broadcast_to(matrix, shape)
  return tf.linalg.set_diag(matrix, tf.linalg.diag_part(matrix) + diagonal)


def _contract(vector, tensor):
  """`Σ_k v_k T[k]` for `T` of shape `[*batch, D, D, D]`."""
  return tf.einsum("...k,...kij->...ij", vector, tensor)


class Pullback(abc.ABC):
  """Second-order local model of a bijector's inverse `x = h(y)` at a batch of points.

  Attributes:
    x: `[*batch, D]`, the inverse image `h(y)`.
    ildj: `[*batch]` (or broadcastable to it), `log|det ∂h/∂y|` at `y`.
  """

  def __init__(self, x, ildj):
    self.x = x
    self.ildj = ildj

  @abc.abstractmethod
  def __call__(self, grad, hess):
    """Maps `(∇F, ∇²F)` at `x` to `(∇G, ∇²G)` at `y` (module docstring)."""

  @abc.abstractmethod
  def invert(self, grad, hess):
    """The inverse map: `(∇G, ∇²G)` at `y` to `(∇F, ∇²F)` at `x`."""

  def _basis_pullback(self):
    """`p(e_k, 0) - p(0, 0)` for every basis vector `e_k`, with `k` on a new leading axis.

    By the pullback formula this is `(Jᵀ e_k, Σ_m (e_k)_m ∇²h_m) = (J[k, :], ∇²h_k)`: the Jacobian and the
    second-derivative tensor of any pullback, structured or composed, from its map alone.
    """
    x = self.x
    d = tf.shape(x)[-1]
    ones = tf.ones([x.shape.rank - 1], tf.int32)
    basis = tf.reshape(tf.eye(d, dtype=x.dtype), tf.concat([[d], ones, [d]], 0))
    zero_hess = tf.zeros(tf.concat([[1], ones, [d, d]], 0), x.dtype)
    grad, hess = self(basis, zero_hess)
    grad0, hess0 = self(tf.zeros_like(x), zero_hess[0])
    shape = tf.concat([[d], tf.shape(x)], 0)
    grad = tf.broadcast_to(grad - grad0, shape)
    hess = tf.broadcast_to(hess - hess0, tf.concat([shape, [d]], 0))
    rank = x.shape.rank
    return (tf.transpose(grad, list(range(1, rank)) + [0, rank]),
            tf.transpose(hess, list(range(1, rank)) + [0, rank, rank + 1]))

  def jacobian(self):
    """`∂h/∂y`, shape `[*batch, D, D]`: `[..., k, i] = ∂x_k/∂y_i`."""
    return self._basis_pullback()[0]

  def hessian(self):
    """`∂²h/∂y²`, shape `[*batch, D, D, D]`: `[..., k, i, j] = ∂²x_k/∂y_i∂y_j`.

    For inspection and tests: the sweep never forms this tensor.
    """
    return self._basis_pullback()[1]

  def ildj_derivatives(self):
    """`(∇ ildj, ∇² ildj)` at `y`: the pullback of the zero density."""
    zeros = tf.zeros_like(self.x)
    return self(zeros, _outer(zeros, zeros))


class ElementwisePullback(Pullback):
  """`h` acts coordinate by coordinate: `x_i = φ(y_i)`.

  Every derivative is a vector of the points' shape; ``None`` states that a term is identically zero (or, for
  ``d1``, one), so affine and shift layers skip the work.

  Args:
    x: `[*batch, D]`, `φ(y)`.
    ildj: `Σ_i log|φ'(y_i)|`.
    d1: `φ'(y)`. `None` means 1.
    d2: `φ''(y)`. `None` means 0.
    dlog1: `(log|φ'|)'(y) = φ''/φ'`. `None` means 0.
    dlog2: `(log|φ'|)''(y) = φ'''/φ' - (φ''/φ')²`. `None` means 0.
  """

  def __init__(self, x, ildj, d1=None, d2=None, dlog1=None, dlog2=None):
    super().__init__(x, ildj)
    self.d1, self.d2, self.dlog1, self.dlog2 = d1, d2, dlog1, dlog2

  def _curvature(self, grad):
    """The diagonal `g ⊙ φ'' + (log|φ'|)''`, or None when it is zero."""
    curvature = None if self.d2 is None else grad * self.d2
    if self.dlog2 is not None:
      curvature = self.dlog2 if curvature is None else curvature + self.dlog2
    return curvature

  def __call__(self, grad, hess):
    curvature = self._curvature(grad)
    if self.d1 is not None:
      grad = grad * self.d1
      hess = hess * _outer(self.d1, self.d1)
    if self.dlog1 is not None:
      grad = grad + self.dlog1
    if curvature is not None:
      hess = _add_to_diagonal(hess, curvature)
    return grad, hess

  def invert(self, grad, hess):
    if self.dlog1 is not None:
      grad = grad - self.dlog1
    if self.d1 is not None:
      grad = grad / self.d1
    curvature = self._curvature(grad)
    if curvature is not None:
      hess = _add_to_diagonal(hess, -curvature)
    if self.d1 is not None:
      hess = hess / _outer(self.d1, self.d1)
    return grad, hess

  def _vector(self, value, default):
    return tf.broadcast_to(default if value is None else value, tf.shape(self.x))

  def jacobian(self):
    return tf.linalg.diag(self._vector(self.d1, tf.ones([], self.x.dtype)))

  def hessian(self):
    d2 = self._vector(self.d2, tf.zeros([], self.x.dtype))
    eye = tf.eye(tf.shape(self.x)[-1], dtype=self.x.dtype)
    return tf.linalg.diag(d2)[..., tf.newaxis] * eye[:, tf.newaxis, :]


class LinearPullback(Pullback):
  """`h` is affine: `x = M y + c` with one matrix `M` shared by the points (the layer's batch shape only).

  The second-derivative terms vanish, so `∇G = Mᵀ ∇F` and `∇²G = Mᵀ ∇²F M`.

  Args:
    x: `[*batch, D]`.
    ildj: `log|det M|`.
    matrix: `M = ∂x/∂y`, `[*layer_batch, D, D]`, formed once per call.
    inverse_matrix: `M⁻¹`, the same shape; formed on first use by ``invert`` if not given.
  """

  def __init__(self, x, ildj, matrix, inverse_matrix=None):
    super().__init__(x, ildj)
    self.matrix = matrix
    self._inverse_matrix = inverse_matrix

  def __call__(self, grad, hess):
    m = self.matrix
    return (tf.linalg.matvec(m, grad, adjoint_a=True),
            tf.linalg.matmul(m, tf.linalg.matmul(hess, m), adjoint_a=True))

  def invert(self, grad, hess):
    if self._inverse_matrix is None:
      self._inverse_matrix = tf.linalg.inv(self.matrix)
    m = self._inverse_matrix
    return (tf.linalg.matvec(m, grad, adjoint_a=True),
            tf.linalg.matmul(m, tf.linalg.matmul(hess, m), adjoint_a=True))

  def jacobian(self):
    batch = tf.shape(self.x)[:-1]
    return tf.broadcast_to(self.matrix, tf.concat([batch, tf.shape(self.matrix)[-2:]], 0))

  def hessian(self):
    d = tf.shape(self.x)[-1]
    return tf.zeros(tf.concat([tf.shape(self.x), [d, d]], 0), self.x.dtype)


class PermutationPullback(Pullback):
  """`h` permutes coordinates: `x_i = y_{σ(i)}`; derivatives are gathered, at O(D²) per point.

  Args:
    x: `[*batch, D]`.
    ildj: 0.
    source: `σ` as an integer vector of length D, `x = gather(y, σ)`.
  """

  def __init__(self, x, ildj, source):
    super().__init__(x, ildj)
    self.source = source
    # ∂G/∂y_j = ∂F/∂x_{σ⁻¹(j)}.
    self._inverse_source = tf.math.invert_permutation(source)

  @staticmethod
  def _permute(grad, hess, index):
    return (tf.gather(grad, index, axis=-1),
            tf.gather(tf.gather(hess, index, axis=-1), index, axis=-2))

  def __call__(self, grad, hess):
    return self._permute(grad, hess, self._inverse_source)

  def invert(self, grad, hess):
    return self._permute(grad, hess, self.source)

  def jacobian(self):
    d = tf.shape(self.x)[-1]
    matrix = tf.gather(tf.eye(d, dtype=self.x.dtype), self.source, axis=-2)
    return tf.broadcast_to(matrix, tf.concat([tf.shape(self.x), [d]], 0))

  def hessian(self):
    d = tf.shape(self.x)[-1]
    return tf.zeros(tf.concat([tf.shape(self.x), [d, d]], 0), self.x.dtype)


class DensePullback(Pullback):
  """No structure: the full Jacobian and second-derivative tensor, O(D³) per point.

  Args:
    x: `[*batch, D]`.
    ildj: `[*batch]`.
    jacobian: `[*batch, D, D]`, `∂x_k/∂y_i`.
    hessian: `[*batch, D, D, D]`, `∂²x_k/∂y_i∂y_j`.
    ildj_gradient: `[*batch, D]`.
    ildj_hessian: `[*batch, D, D]`.
  """

  def __init__(self, x, ildj, jacobian, hessian, ildj_gradient, ildj_hessian):
    super().__init__(x, ildj)
    self._jacobian = jacobian
    self._hessian = hessian
    self._ildj_gradient = ildj_gradient
    self._ildj_hessian = ildj_hessian

  def __call__(self, grad, hess):
    j = self._jacobian
    return (tf.linalg.matvec(j, grad, adjoint_a=True) + self._ildj_gradient,
            tf.linalg.matmul(j, tf.linalg.matmul(hess, j), adjoint_a=True)
            + _contract(grad, self._hessian) + self._ildj_hessian)

  def invert(self, grad, hess):
    j = self._jacobian
    jt = tf.linalg.matrix_transpose(j)
    grad = tf.linalg.solve(jt, (grad - self._ildj_gradient)[..., tf.newaxis])[..., 0]
    rest = hess - _contract(grad, self._hessian) - self._ildj_hessian
    # J⁻ᵀ R J⁻¹ = (J⁻ᵀ (J⁻ᵀ R)ᵀ)ᵀ, with R symmetric up to rounding.
    left = tf.linalg.solve(jt, rest)
    hess = tf.linalg.matrix_transpose(tf.linalg.solve(jt, tf.linalg.matrix_transpose(left)))
    return grad, hess

  def jacobian(self):
    return self._jacobian

  def hessian(self):
    return self._hessian


class InvertedPullback(Pullback):
  """The pullback of `Invert(b)`, whose inverse is `b.forward`: the inner pullback run backwards.

  With `v = b.forward(u)`, the density on `u` is `G(u) = (F - ildj_b)(v)`, so `b`'s own pullback (taken at `v`)
  maps derivatives at `u` to derivatives at `v`, and its inverse map is exactly the pullback we need. This is the
  second-order inverse-function theorem without forming `[D, D, D]` tensors.

  Args:
    inner: the pullback of `b` at `v`; its `x` is `u`.
    x: `v`, the point this pullback maps to.
  """

  def __init__(self, inner, x):
    super().__init__(x, -inner.ildj)
    self.inner = inner

  def __call__(self, grad, hess):
    return self.inner.invert(grad, hess)

  def invert(self, grad, hess):
    return self.inner(grad, hess)


class ComposedPullback(Pullback):
  """The pullback of a composition `h = h_K ∘ … ∘ h_1` (a `Chain`): its layers' pullbacks, base side first.

  Args:
    layers: pullbacks ordered from the `y` side, each taken at the previous one's `x`.
  """

  def __init__(self, layers):
    ildj = layers[0].ildj
    for layer in layers[1:]:
      ildj = ildj + layer.ildj  # Shapes differ: constant-Jacobian layers give a scalar.
    super().__init__(layers[-1].x, ildj)
    self.layers = layers

  def __call__(self, grad, hess):
    for layer in reversed(self.layers):
      grad, hess = layer(grad, hess)
    return grad, hess

  def invert(self, grad, hess):
    for layer in self.layers:
      grad, hess = layer.invert(grad, hess)
    return grad, hess
