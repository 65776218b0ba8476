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
import copy

import tensorflow as tf

from tfp_hessian import conditioners

__all__ = [
    "Pullback",
    "ElementwisePullback",
    "LinearPullback",
    "PermutationPullback",
    "DensePullback",
    "InvertedPullback",
    "ComposedPullback",
    "ConditionedAffinePullback",
    "CouplingPullback",
]


def _outer(a, b):
  return a[..., :, tf.newaxis] * b[..., tf.newaxis, :]


def _add_to_diagonal(matrix, diagonal):
  """`matrix + diag(diagonal)`, broadcasting both, without materialising `diag(diagonal)`."""
  shape = tf.broadcast_dynamic_shape(tf.shape(matrix), tf.shape(diagonal[..., tf.newaxis]))
  matrix = tf.broadcast_to(matrix, shape)
  return tf.linalg.set_diag(matrix, tf.linalg.diag_part(matrix) + diagonal)


def _sum(terms):
  """`Σ terms` as one op (`add_n`), broadcasting them to a common shape only where their shapes differ."""
  shapes = [term.shape for term in terms]
  if not (shapes[0].is_fully_defined() and all(shape == shapes[0] for shape in shapes)):
    shape = tf.shape(terms[0])
    for term in terms[1:]:
      shape = tf.broadcast_dynamic_shape(shape, tf.shape(term))
    terms = [tf.broadcast_to(term, shape) for term in terms]
  return tf.math.add_n(terms)


def _solve_adjoint(matrix, rhs):
  """`A⁻ᵀ rhs`, broadcasting the batch dimensions of both (as `matmul` does and `solve` does not)."""
  batch = tf.broadcast_dynamic_shape(tf.shape(matrix)[:-2], tf.shape(rhs)[:-2])
  matrix = tf.broadcast_to(matrix, tf.concat([batch, tf.shape(matrix)[-2:]], 0))
  rhs = tf.broadcast_to(rhs, tf.concat([batch, tf.shape(rhs)[-2:]], 0))
  # `solve` raises on a non-finite matrix ("not invertible"), which one point outside the support (NaN, as
  # `log_prob` gives there) would make of the whole call: solve with the identity there, and give NaN.
  finite = tf.reduce_all(tf.math.is_finite(matrix), axis=[-2, -1])[..., tf.newaxis, tf.newaxis]
  eye = tf.eye(tf.shape(matrix)[-1], dtype=matrix.dtype)
  solution = tf.linalg.solve(tf.where(finite, matrix, eye), rhs, adjoint=True)
  return tf.where(finite, solution, tf.constant(float("nan"), rhs.dtype))


def _pull_forward(jacobian, grad, hess, curvature):
  """The inverse of `(g, H) ↦ (Jᵀg + c₁, JᵀHJ + C(g))`: `g = J⁻ᵀ(g' - c₁)`, `H = J⁻ᵀ(H' - C(g))J⁻¹`.

  Args:
    jacobian: `J`, `[*batch, D, D]`.
    grad: `g' - c₁`, `[*batch, D]`.
    hess: `H'`, `[*batch, D, D]`.
    curvature: `g -> C(g)`, the gradient-dependent and constant second-order terms.
  """
  grad = _solve_adjoint(jacobian, grad[..., tf.newaxis])[..., 0]
  left = _solve_adjoint(jacobian, hess - curvature(grad))  # J⁻ᵀ R
  return grad, tf.linalg.matrix_transpose(_solve_adjoint(jacobian, tf.linalg.matrix_transpose(left)))


def _transpose_times(matrix, vector):
  """`Mᵀ v` as a reduction: `matvec(..., adjoint_a=True)` materialises the transpose first."""
  return tf.reduce_sum(matrix * vector[..., tf.newaxis], axis=-2)


def _contract(vector, tensor):
  """`Σ_k v_k T[k]` for `T` of shape `[*batch, D, D, D]`."""
  return tf.einsum("...k,...kij->...ij", vector, tensor)


def _subtract_contraction(hess, conditioner, weights):
  """`hess - Σ_p w_p ∇²o_p` of a conditioner, through its factors where it has them."""
  factors = conditioner.factors(weights)
  if factors is None:
    return hess - conditioner.contract(weights)
  for z, c in factors:
    hess = hess - tf.linalg.matmul(z, c[..., tf.newaxis] * z, adjoint_a=True)
  return hess


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
      # Row, then column: with one huge φ'_i the outer product φ'_i φ'_j would overflow, and 0 · inf is NaN
      # in entries that are exactly zero.
      hess = hess * self.d1[..., :, tf.newaxis] * self.d1[..., tf.newaxis, :]
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
      hess = hess / self.d1[..., :, tf.newaxis] / self.d1[..., tf.newaxis, :]
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
    return _transpose_times(m, grad), tf.linalg.matmul(m, tf.linalg.matmul(hess, m), adjoint_a=True)

  def invert(self, grad, hess):
    if self._inverse_matrix is None:
      self._inverse_matrix = tf.linalg.inv(self.matrix)
    m = self._inverse_matrix
    return _transpose_times(m, grad), tf.linalg.matmul(m, tf.linalg.matmul(hess, m), adjoint_a=True)

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
    # Rows, then rows of the transpose: TF gathers whole rows fast, single elements of the last axis slowly
    # (at D = 128 a flattened gather takes 3x as long, a gather along the last axis 2.5x). That gives the
    # transpose of the permuted Hessian, which is the permuted Hessian: Hessians are symmetric, and the
    # sweep symmetrises its result once at the end.
    hess = tf.linalg.matrix_transpose(tf.gather(hess, index, axis=-2))
    return tf.gather(grad, index, axis=-1), tf.gather(hess, index, axis=-2)

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
    return (_transpose_times(j, grad) + self._ildj_gradient,
            tf.linalg.matmul(j, tf.linalg.matmul(hess, j), adjoint_a=True)
            + _contract(grad, self._hessian) + self._ildj_hessian)

  def invert(self, grad, hess):
    return _pull_forward(self._jacobian, grad - self._ildj_gradient, hess,
                         lambda g: _contract(g, self._hessian) + self._ildj_hessian)

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


def _fuse_permutations(layers):
  """`layers` with each permutation folded into the layer on its `y` side, where that layer can take it.

  A permutation after a layer with a dense Jacobian (`permute_output`) costs that layer a gather of its
  Jacobian's rows instead of gathering both axes of every incoming Hessian: TF's gathers across the last axis
  are slow. Layers are ordered from the `y` side, so the permutation acts on its predecessor's `x`.
  """
  fused = []
  for layer in layers:
    if (isinstance(layer, PermutationPullback) and fused
        and getattr(fused[-1], "permute_output", None) is not None):
      fused[-1] = fused[-1].permute_output(layer.source)
    else:
      fused.append(layer)
  return fused


class ComposedPullback(Pullback):
  """The pullback of a composition `h = h_K ∘ … ∘ h_1` (a `Chain`): its layers' pullbacks, base side first.

  Args:
    layers: pullbacks ordered from the `y` side, each taken at the previous one's `x`.
  """

  def __init__(self, layers):
    layers = _fuse_permutations(layers)
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


class ConditionedAffinePullback(Pullback):
  """`x = (y - m(y)) ⊙ exp(-s(y))` with a conditioner network `(m, s)`: RealNVP and MAF layers.

  With `a = exp(-s)`, `M = ∂m/∂y`, `S = ∂s/∂y`, the Jacobian is `J = diag(a) - a ⊙ M - x ⊙ S` (rows scaled),
  `ildj = -Σ s`, and for an incoming gradient `v`

  .. math::

      \\sum_i v_i ∇^2 x_i + ∇^2 ildj = -(J^T V S + S^T V J + S^T \\operatorname{diag}(v ⊙ x) S)
          - \\sum_i \\big(v_i a_i ∇^2 m_i + (v_i x_i + 1) ∇^2 s_i\\big),

  `V = diag(v)`. The last sum is one contraction of the conditioner's second derivatives (`conditioners.py`):
  the network's `[2D, D, D]` Hessian is never formed. The autoregressive (MAF) or block (RealNVP) structure
  is carried by the zeros of `M` and `S`; `J` is formed once per point, `[*batch, D, D]`.

  With `Z_l`, `c_l` the network's own factors (`Σ w ∇²o = Σ_l Z_lᵀ diag(c_l) Z_l`, where it has them) the
  pullback is `∇²G = Jᵀ(∇²F J - V S) - Sᵀ(V J + V X S) - Σ_l Z_lᵀ diag(c_l) Z_l`: batched products only.

  Where the network reads `(m, s)` out linearly from a hidden layer of `H < D` units, `a_L = σ(z_L)`, the
  Jacobian stays factored: `J = diag(a) - P B`, `S = Q B`, with `B = diag(σ'(z_L)) Z_L` (`[H, D]`),
  `Q = W_sᵀ` and `P = diag(a) W_mᵀ + diag(x) W_sᵀ` (`[D, H]`, `W = [W_m, W_s]` the read-out kernel). With
  `T = ∇²F P + V Q`, `K = diag(a) T B` and `N = Pᵀ T + W_s diag(v ⊙ a) W_mᵀ` (`[H, H]`),

  .. math::

      ∇^2G = \\operatorname{diag}(a) ∇^2F \\operatorname{diag}(a) - K - K^T
          + Z_L^T \\big(\\operatorname{diag}(σ') N \\operatorname{diag}(σ') - \\operatorname{diag}(c_L)\\big) Z_L
          - \\sum_{l<L} Z_l^T \\operatorname{diag}(c_l) Z_l,

  `O(D²H)` per point instead of `O(D³)` (`x ⊙ S` cancels between `P` and `V X S`).

  Args:
    y: `[*batch, D]`, the points; `x` and `ildj` follow from the conditioner's outputs.
    conditioner: `ConditionerDerivatives` with `2D` outputs, `[m, s]`, as functions of the whole `y`.
  """

  def __init__(self, y, conditioner):
    d = y.shape[-1]
    shift, log_scale = conditioner.outputs[..., :d], conditioner.outputs[..., d:]
    self._scale = tf.exp(-log_scale)
    x = (y - shift) * self._scale
    super().__init__(x, -tf.reduce_sum(log_scale, axis=-1))
    self._conditioner = conditioner
    self._weights_order = None  # the network's output order, where a permutation was folded in
    self._dense = None  # (J, S), formed on first use

  @property
  def conditioner(self):
    """The `ConditionerDerivatives` of the layer's network, as its rule built them."""
    return self._conditioner

  def _jacobians(self):
    """`(J, S)`, each `[*batch, D, D]`."""
    if self._dense is None:
      d = self.x.shape[-1]
      log_scale_jacobian = self._conditioner.jacobian[..., d:, :]
      jacobian = _add_to_diagonal(-(self._scale[..., tf.newaxis] * self._conditioner.jacobian[..., :d, :]
                                    + self.x[..., tf.newaxis] * log_scale_jacobian), self._scale)
      self._dense = jacobian, log_scale_jacobian
    return self._dense

  def _readout(self):
    """The conditioner's `linear_readout` where the factored pullback is the cheaper (`H < D`), else None."""
    readout = getattr(self._conditioner, "linear_readout", None)
    if readout is None or self._weights_order is not None:
      return None
    width, size = readout[0].shape[0], self.x.shape[-1]
    if width is None or size is None or width >= size:
      return None
    return readout

  @property
  def permute_output(self):
    """`_permute_output` (dense Jacobian), or None: the factored form keeps `diag(a)` apart from the rows."""
    return None if self._readout() is not None else self._permute_output

  def _permute_output(self, source):
    """The pullback of this layer followed by `x ↦ gather(x, source)`, a permutation of its output.

    The rows of every `∂/∂y` matrix are gathered once; the network's weights are gathered back to its own
    output order (`Σ_i v_i ∇²x_{σ(i)} = Σ_j (v∘σ⁻¹)_j ∇²x_j`).
    """
    fused = copy.copy(self)
    fused.x = tf.gather(self.x, source, axis=-1)
    fused._scale = tf.gather(self._scale, source, axis=-1)
    fused._dense = tuple(tf.gather(m, source, axis=-2) for m in self._jacobians())
    # Network output j is fused output σ⁻¹(j); after an earlier fusion, σ⁻¹ of the output it became.
    order = tf.math.invert_permutation(source)
    if self._weights_order is not None:
      order = tf.gather(order, self._weights_order)
    fused._weights_order = order
    return fused

  def _network_weights(self, grad):
    weights = tf.concat([grad * self._scale, grad * self.x + 1], axis=-1)
    if self._weights_order is None:
      return weights
    order = self._weights_order
    return tf.gather(weights, tf.concat([order, order + tf.size(order, out_type=order.dtype)], 0), axis=-1)

  def _curvature(self, grad):
    """`Σ_i v_i ∇²x_i + ∇² ildj` for `v = grad` (class docstring)."""
    j, s = self._jacobians()
    jvs = tf.linalg.matmul(j, grad[..., tf.newaxis] * s, adjoint_a=True)
    svs = tf.linalg.matmul(s, (grad * self.x)[..., tf.newaxis] * s, adjoint_a=True)
    network = self._conditioner.contract(self._network_weights(grad))
    return -(jvs + tf.linalg.matrix_transpose(jvs) + svs + network)

  def _ildj_gradient(self):
    return -tf.reduce_sum(self._jacobians()[1], axis=-2)

  def __call__(self, grad, hess):
    readout = self._readout()
    if readout is not None:
      return self._factored_call(grad, hess, *readout)
    j, s = self._jacobians()
    v = grad[..., tf.newaxis]
    # Kᵀ (Q K) block by block: separate products cost the same flops as one stacked product, without copying
    # the blocks into it.
    hess = (tf.linalg.matmul(j, tf.linalg.matmul(hess, j) - v * s, adjoint_a=True)
            - tf.linalg.matmul(s, v * j + (grad * self.x)[..., tf.newaxis] * s, adjoint_a=True))
    hess = _subtract_contraction(hess, self._conditioner, self._network_weights(grad))
    return _transpose_times(j, grad) + self._ildj_gradient(), hess

  def _factored_call(self, grad, hess, kernel, d1):
    """`__call__` with the Jacobian kept factored through the read-out layer (class docstring)."""
    d = self.x.shape[-1]
    weights = self._network_weights(grad)
    (z_last, c_last), *others = self._conditioner.factors(weights)
    a, x = self._scale, self.x
    m_kernel, s_kernel = kernel[:, :d], kernel[:, d:]  # W_m, W_s: [H, D]
    m_rows, s_rows = tf.transpose(m_kernel), tf.transpose(s_kernel)  # W_mᵀ, Q = W_sᵀ: [D, H]
    p = a[..., tf.newaxis] * m_rows + x[..., tf.newaxis] * s_rows
    t = tf.linalg.matmul(hess, p) + grad[..., tf.newaxis] * s_rows
    minus_cross = tf.linalg.matmul(-a[..., tf.newaxis] * t * d1[..., tf.newaxis, :], z_last)  # -K
    middle = (tf.linalg.matmul(p, t, adjoint_a=True)
              + tf.linalg.matmul(s_kernel * (grad * a)[..., tf.newaxis, :], m_rows))
    middle = _add_to_diagonal(middle * _outer(d1, d1), -c_last)
    # One sum of the [D, D] terms: each binary add would read and write a whole Hessian again.
    terms = [hess * _outer(a, a), minus_cross, tf.linalg.matrix_transpose(minus_cross),
             tf.linalg.matmul(z_last, tf.linalg.matmul(middle, z_last), adjoint_a=True)]
    terms += [tf.linalg.matmul(z, -c[..., tf.newaxis] * z, adjoint_a=True) for z, c in others]
    hess = _sum(terms)
    # ∇G = Jᵀ g - Sᵀ 1 = a ⊙ g - Bᵀ W w, the network's own adjoint at its read-out.
    adjoint = tf.tensordot(weights, kernel, [[-1], [1]])
    return a * grad - _transpose_times(z_last, d1 * adjoint), hess

  def invert(self, grad, hess):
    return _pull_forward(self._jacobians()[0], grad - self._ildj_gradient(), hess, self._curvature)

  def jacobian(self):
    return self._jacobians()[0]

  def hessian(self):
    # One contraction per output coordinate: for inspection and tests only.
    d = self.x.shape[-1]
    zero = self._curvature(tf.zeros_like(self.x))
    eye = tf.eye(d, dtype=self.x.dtype)
    return tf.stack([self._curvature(tf.broadcast_to(eye[k], tf.shape(self.x))) - zero for k in range(d)],
                    axis=-3)


class CouplingPullback(ConditionedAffinePullback):
  """An affine coupling layer (RealNVP): `x_C = y_C`, `x_T = (y_T - m(y_C)) ⊙ exp(-s(y_C))`.

  The coordinates split into a conditioning block `C` and a transformed block `T`, and the Jacobian is block
  triangular, `J = [[I, 0], [B, diag(a)]]` with `a = exp(-s)` and `B = ∂x_T/∂y_C = -(a ⊙ M + x_T ⊙ S)`
  (`M`, `S` the conditioner's Jacobians, `[|T|, |C|]`). Then, with `v = (∇F)_T` and `q = H_TC + H_TT B - V S`,

  .. math::

      ∇^2G_{CC} &= H_{CC} + H_{CT} B + B^T q - S^T (V B + V X S) - \\sum_l Z_l^T \\operatorname{diag}(c_l) Z_l, \\\\
      ∇^2G_{CT} &= (H_{CT} + B^T H_{TT} - (V S)^T) \\operatorname{diag}(a), \\quad
      ∇^2G_{TC} = \\operatorname{diag}(a)\\, q, \\quad
      ∇^2G_{TT} = \\operatorname{diag}(a) H_{TT} \\operatorname{diag}(a),

  the conditioner's factors `Z_l` taken on `y_C` only. With `|C| = |T| = D/2` these products cost about a
  quarter of the dense layer's. Everything else (``invert``, inspection, ``_curvature``) is the dense
  `ConditionedAffinePullback` of the same layer, its conditioner embedded in all of `y`.

  Args:
    y: `[*batch, D]`.
    conditioning: the slice `C` of coordinates the conditioner reads.
    transformed: the slice `T` of coordinates it transforms; `C` and `T` partition `range(D)`.
    conditioner: `ConditionerDerivatives` of the network on `y_C`, with outputs `[m, s]` (`2|T|`).
  """

  permute_output = None  # Folding a permutation in would break the blocks.

  def __init__(self, y, conditioning, transformed, conditioner):
    super().__init__(y, conditioners.EmbeddedConditioner(conditioner, y.shape[-1], conditioning, transformed))
    self._blocks = conditioning, transformed
    self._coupling = conditioner

  @property
  def conditioner(self):
    return self._coupling

  def __call__(self, grad, hess):
    c, t = self._blocks
    size = t.stop - t.start
    a, x_t = self._scale[..., t], self.x[..., t]
    m_jac, s_jac = self._coupling.jacobian[..., :size, :], self._coupling.jacobian[..., size:, :]
    b = -(a[..., tf.newaxis] * m_jac + x_t[..., tf.newaxis] * s_jac)
    v = grad[..., t]
    vs = v[..., tf.newaxis] * s_jac
    rows_c, rows_t = hess[..., c, :], hess[..., t, :]
    h_cc, h_ct, h_tc, h_tt = rows_c[..., c], rows_c[..., t], rows_t[..., c], rows_t[..., t]
    q = h_tc + tf.linalg.matmul(h_tt, b) - vs
    cc = (h_cc + tf.linalg.matmul(h_ct, b) + tf.linalg.matmul(b, q, adjoint_a=True)
          - tf.linalg.matmul(s_jac, v[..., tf.newaxis] * (b + x_t[..., tf.newaxis] * s_jac), adjoint_a=True))
    cc = _subtract_contraction(cc, self._coupling, tf.concat([v * a, v * x_t + 1], axis=-1))
    ct = (h_ct + tf.linalg.matmul(b, h_tt, adjoint_a=True) - tf.linalg.matrix_transpose(vs)) * a[..., tf.newaxis, :]
    tc = a[..., tf.newaxis] * q
    tt = h_tt * _outer(a, a)
    grad_c = grad[..., c] + _transpose_times(b, v) - tf.reduce_sum(s_jac, axis=-2)
    # The blocks' batch shapes may differ (`jacobian()` pulls back a stack of basis vectors with one Hessian).
    blocks = cc, ct, tc, tt
    if not (cc.shape[:-2].is_fully_defined() and all(b.shape[:-2] == cc.shape[:-2] for b in blocks)):
      batch = tf.shape(cc)[:-2]
      for block in blocks[1:]:
        batch = tf.broadcast_dynamic_shape(batch, tf.shape(block)[:-2])
      cc, ct, tc, tt = (tf.broadcast_to(b, tf.concat([batch, tf.shape(b)[-2:]], 0)) for b in blocks)
    grad_t = v * a
    if c.start == 0:
      return tf.concat([grad_c, grad_t], -1), tf.concat([tf.concat([cc, ct], -1), tf.concat([tc, tt], -1)], -2)
    return tf.concat([grad_t, grad_c], -1), tf.concat([tf.concat([tt, tc], -1), tf.concat([ct, cc], -1)], -2)
