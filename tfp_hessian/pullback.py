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
the same for every point (an affine layer's matrix) keep a smaller batch shape and broadcast. Events of another
rank or structure (``events.py``) are flat here: gradients and Hessians are over the flat event, and only ``x``,
which the next bijector takes, keeps the event's own structure (``x_layout`` says how it flattens).
"""

import abc

import tensorflow as tf

from tfp_hessian import conditioners, products, tapes
from tfp_hessian.events import EventLayout

__all__ = [
    "Pullback",
    "ElementwisePullback",
    "LinearPullback",
    "PermutationPullback",
    "AutodiffPullback",
    "BlockPullback",
    "InvertedPullback",
    "block_pullback",
    "ComposedPullback",
    "pull_back",
    "ConditionedAffinePullback",
    "CouplingPullback",
    "InvertedCouplingPullback",
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


def _adjoint_solver(matrix, transposed=False, triangle=None):
  """`rhs -> A⁻ᵀ rhs` (`transposed`: `matrix` is `Aᵀ`), broadcasting the batch dimensions of both (as `matmul` does
  and `solve` does not), for as many right-hand sides as a caller has: the matrix is checked once.

  By triangular solves where `matrix` is known to be `"lower"` or `"upper"` triangular (`triangle`): for an
  inverted MAF (IAF) layer that made the whole call 1.14–1.57× as fast as general solves (`python
  benchmarks/inverted_solves.py`, which also times the solves alone: `--solves-alone`). With `triangle="check"`
  (the autodiff fallback's, which knows nothing of a layer's structure) whether it is lower or upper triangular, or
  neither, is seen at run time, once for all points, from its exact zeros: a hand-written autoregressive layer has
  a triangular Jacobian that nothing declares. None: general solves.
  """
  # `solve` raises on a non-finite matrix ("not invertible"), which one point outside the support (NaN, as
  # `log_prob` gives there) would make of the whole call: solve with the identity there, and give NaN.
  finite = tf.reduce_all(tf.math.is_finite(matrix), axis=[-2, -1])[..., tf.newaxis, tf.newaxis]
  matrix = tf.where(finite, matrix, tf.eye(tf.shape(matrix)[-1], dtype=matrix.dtype))
  if triangle == "check":
    branch = _triangle_at_run_time(matrix)

  def solve(rhs):
    batch = tf.broadcast_dynamic_shape(tf.shape(matrix)[:-2], tf.shape(rhs)[:-2])
    square = tf.broadcast_to(matrix, tf.concat([batch, tf.shape(matrix)[-2:]], 0))
    rhs = tf.broadcast_to(rhs, tf.concat([batch, tf.shape(rhs)[-2:]], 0))

    def general():
      return tf.linalg.solve(square, rhs, adjoint=not transposed)

    def triangular(lower):
      return tf.linalg.triangular_solve(square, rhs, lower=lower, adjoint=not transposed)

    if triangle == "check":
      solution = tf.switch_case(branch, [lambda: triangular(True), lambda: triangular(False), general])
    elif triangle is None:
      solution = general()
    else:
      solution = triangular(triangle == "lower")
    return tf.where(finite, solution, tf.constant(float("nan"), rhs.dtype))

  return solve


def _triangle_at_run_time(matrices):
  """`0` where `matrices` (`[*batch, D, D]`) are all lower triangular, `1` where all are upper triangular (else),
  `2` where neither: from the entries that are not zero at some point, `[D, D]` (one pass over the matrices, then
  tiny ops)."""
  pattern = tf.reduce_any(tf.not_equal(tf.reshape(matrices, tf.concat([[-1], tf.shape(matrices)[-2:]], 0)), 0), 0)
  off_diagonal = pattern & ~tf.linalg.band_part(pattern, 0, 0)
  lower = ~tf.reduce_any(tf.linalg.band_part(off_diagonal, 0, -1))
  upper = ~tf.reduce_any(tf.linalg.band_part(off_diagonal, -1, 0))
  return tf.where(lower, 0, tf.where(upper, 1, 2))


def _pull_forward(jacobian, grad, hess, curvature, transposed=False, triangle=None):
  """The inverse of `(g, H) ↦ (Jᵀg + c₁, JᵀHJ + C(g))`: `g = J⁻ᵀ(g' - c₁)`, `H = J⁻ᵀ(H' - C(g))J⁻¹`.

  Args:
    jacobian: `J`, `[*batch, D, D]` (`Jᵀ` if `transposed`).
    grad: `g' - c₁`, `[*batch, D]`.
    hess: `H'`, `[*batch, D, D]`.
    curvature: `g -> C(g)`, the gradient-dependent and constant second-order terms.
    transposed: whether `jacobian` is `Jᵀ`.
    triangle: `"lower"` or `"upper"` where `jacobian` (as given) is known to be triangular, `"check"` to see at
      run time, else None (`_adjoint_solver`).
  """
  solve = _adjoint_solver(jacobian, transposed, triangle)
  grad = solve(grad[..., tf.newaxis])[..., 0]
  left = solve(hess - curvature(grad))  # J⁻ᵀ R
  return grad, tf.linalg.matrix_transpose(solve(tf.linalg.matrix_transpose(left)))


def _transpose_times(matrix, vector):
  """`Mᵀ v` as a reduction: `matvec(..., adjoint_a=True)` materialises the transpose first."""
  return tf.reduce_sum(matrix * vector[..., tf.newaxis], axis=-2)


def _times(matrix, vector):
  """`M v` as a reduction, `M` batched or shared by every point (`[D, K]`)."""
  return tf.reduce_sum(matrix * vector[..., tf.newaxis, :], axis=-1)


# A matrix shared by every point is applied by two GEMMs and a transpose (`_congruence`) from this many rows, or
# from this many Hessian entries `N·n²` (N known when traced): there that beats TensorFlow's batched products with
# a broadcast operand. Measured on the bench's elementwise + affine flow, whole call, old/new: D = 128 1.27× (1024
# points) and 1.49× (16), D = 96 1.14× and 1.22×, D = 32 at 1024 points 1.38×; 0.91–0.95× at 16 points and D ≤ 64
# (`python benchmarks/product_shapes.py`, "congruence"; session 22's notes have the whole-flow A/B).
_CONGRUENCE_GEMM_SIZE = 96
_CONGRUENCE_GEMM_ENTRIES = 2 ** 20


def _congruence(matrix, hess):
  """`Mᵀ H M` for Hessians `H` (`[*batch, n_x, n_x]`) and a matrix `M` (`[*layer_batch, n_x, n_y]`).

  Where `M` is one matrix for every point and the products are large, as `(H M)ᵀ M`: two GEMMs over all points
  (`H` symmetric, so this is `Mᵀ H M` to rounding, which the sweep's final symmetrisation absorbs); else batched
  products.
  """
  shared = matrix.shape.rank == 2 and (hess.shape.rank or 0) > 2
  if shared and ((matrix.shape[0] or 0) >= _CONGRUENCE_GEMM_SIZE
                 or (hess.shape.num_elements() or 0) >= _CONGRUENCE_GEMM_ENTRIES):
    product = conditioners.times_kernel(hess, matrix)  # H M, [*batch, n_x, n_y]
    return conditioners.times_kernel(tf.linalg.matrix_transpose(product), matrix)
  return products.matmul(matrix, products.matmul(hess, matrix), transpose_a=True)


def _minus_contraction(conditioner, weights):
  """`-Σ_p w_p ∇²o_p` of a conditioner as a list of terms to sum, through its factors where it has them."""
  factors = conditioner.factors(weights)
  if factors is None:
    return [-conditioner.contract(weights)]
  return [conditioners.quadratic_form(tangents, -c) for tangents, c in factors]


def _broadcast_batches(tensors, event_ndims):
  """`tensors` broadcast to their common batch shape (all but the last `event_ndims` axes)."""
  batches = [t.shape[:t.shape.rank - event_ndims] for t in tensors]
  if batches[0].is_fully_defined() and all(batch == batches[0] for batch in batches):
    return tensors
  batch = tf.shape(tensors[0])[:-event_ndims]
  for t in tensors[1:]:
    batch = tf.broadcast_dynamic_shape(batch, tf.shape(t)[:-event_ndims])
  return [tf.broadcast_to(t, tf.concat([batch, tf.shape(t)[-event_ndims:]], 0)) for t in tensors]


def _quadratic_form(matrix, vector):
  """`Σ vᵀ M v` over the points, `M [*batch, n, n]`, `v [*batch, n]`.

  By `products.matmul`: nested tapes vectorize this product over their backward passes (`AutodiffPullback`), and
  at small `n` a batched dot of it runs several times slower than its broadcast form (that module's docstring).
  As `tf.linalg.matvec`, the research flow's default call (`examples.research_flow`, D = 4) ran 1.2× slower at 16
  and 1024 points, and its sweep compiled whole 1.08× and 1.77× (`python benchmarks/small_products.py --flows
  research_flow:4:16 research_flow:4:1024 --old fallback-matvec [--xla]`; unchanged at D = 16, a long contraction).
  """
  return tf.reduce_sum(vector * products.matmul(matrix, vector[..., tf.newaxis])[..., 0])


def _permuted(grad, hess, index):
  """`(gather(grad, index), hess gathered by index along both axes)`: derivatives with permuted coordinates."""
  # Rows, then rows of the transpose: TF gathers whole rows fast, single elements of the last axis slowly (at
  # D = 128 a flattened gather takes 3x as long, a gather along the last axis 2.5x). That gives the transpose of
  # the permuted Hessian, which is the permuted Hessian: Hessians are symmetric, and the sweep symmetrises its
  # result once at the end.
  hess = tf.linalg.matrix_transpose(tf.gather(hess, index, axis=-2))
  return tf.gather(grad, index, axis=-1), tf.gather(hess, index, axis=-2)


class Pullback(abc.ABC):
  """Second-order local model of a bijector's inverse `x = h(y)` at a batch of points.

  Attributes:
    x: the inverse image `h(y)` as the bijector gives it: `[*batch, D]` for vector events, else a tensor or
      structure of tensors of the event's layout `x_layout`.
    ildj: `[*batch]` (or broadcastable to it), `log|det ∂h/∂y|` at `y`.
    x_layout: the `EventLayout` of `x`; the maps below take gradients and Hessians over its flat event.
  """

  def __init__(self, x, ildj, x_layout=None):
    self.x = x
    self.ildj = ildj
    self._x_layout = x_layout

  @property
  def x_layout(self):
    if self._x_layout is None:
      self._x_layout = EventLayout.vector(self.x.shape[-1])
    return self._x_layout

  @property
  def flat_x(self):
    """`x` as `[*batch, n_x]` (`x` itself for vector events)."""
    return self.x_layout.flatten(self.x)

  @abc.abstractmethod
  def __call__(self, grad, hess):
    """Maps `(∇F, ∇²F)` at `x` to `(∇G, ∇²G)` at `y` (module docstring)."""

  def in_frame(self, grad, hess, frame):
    """`__call__` for derivatives held in a frame: `(grad, hess, frame)` at `x` to the same at `y` (`pull_back`).

    A frame `σ` (an integer vector over the flat event, or None for none) holds derivatives with their
    coordinates permuted: the gradient is `gather(grad, σ)` and the Hessian `hess` gathered by `σ` along both
    axes. A `PermutationPullback` only composes frames, so permutations cost nothing until a layer needs the
    derivatives in order; a layer that can work in the frame gathers its own vectors and factors into it
    instead of every Hessian (`ElementwisePullback`, the factored `ConditionedAffinePullback`). This default
    applies the frame, then the pullback, and gives its result in none.
    """
    if frame is not None:
      grad, hess = _permuted(grad, hess, frame)
    return self(grad, hess) + (None,)

  @abc.abstractmethod
  def invert(self, grad, hess):
    """The inverse map: `(∇G, ∇²G)` at `y` to `(∇F, ∇²F)` at `x`."""

  def jacobian_transpose_times(self, matrix):
    """`Jᵀ M` for `M` of shape `[*batch, n_x, k]`: `[*batch, n_y, k]`. Structured pullbacks do it cheaper."""
    return products.matmul(self.jacobian(), matrix, transpose_a=True)

  def jacobian_inverse_transpose_times(self, matrix):
    """`J⁻ᵀ M` for `M` of shape `[*batch, n_y, k]` (square `J` only): `[*batch, n_x, k]`."""
    return _adjoint_solver(self.jacobian())(matrix)

  def _basis_pullback(self):
    """`p(e_k, 0) - p(0, 0)` for every basis vector `e_k`, with `k` on a new leading axis.

    By the pullback formula this is `(Jᵀ e_k, Σ_m (e_k)_m ∇²h_m) = (J[k, :], ∇²h_k)`: the Jacobian and the
    second-derivative tensor of any pullback, structured or composed, from its map alone.
    """
    x = self.flat_x
    d = tf.shape(x)[-1]
    ones = tf.ones([x.shape.rank - 1], tf.int32)
    basis = tf.reshape(tf.eye(d, dtype=x.dtype), tf.concat([[d], ones, [d]], 0))
    zero_hess = tf.zeros(tf.concat([[1], ones, [d, d]], 0), x.dtype)
    grad, hess = self(basis, zero_hess)
    grad0, hess0 = self(tf.zeros_like(x), zero_hess[0])
    grad, hess = grad - grad0, hess - hess0
    # [n_x, *batch, n_y]: the y side may be larger than the x side (a bijector that drops coordinates).
    shape = tf.concat([[d], tf.shape(x)[:-1], tf.shape(grad)[-1:]], 0)
    grad = tf.broadcast_to(grad, shape)
    hess = tf.broadcast_to(hess, tf.concat([shape, tf.shape(hess)[-1:]], 0))
    rank = x.shape.rank
    return (tf.transpose(grad, list(range(1, rank)) + [0, rank]),
            tf.transpose(hess, list(range(1, rank)) + [0, rank, rank + 1]))

  def jacobian(self):
    """`∂h/∂y`, shape `[*batch, n_x, n_y]`: `[..., k, i] = ∂x_k/∂y_i` over the flat events."""
    return self._basis_pullback()[0]

  def hessian(self):
    """`∂²h/∂y²`, shape `[*batch, n_x, n_y, n_y]`: `[..., k, i, j] = ∂²x_k/∂y_i∂y_j`.

    For inspection and tests: the sweep never forms this tensor.
    """
    return self._basis_pullback()[1]

  def ildj_derivatives(self):
    """`(∇ ildj, ∇² ildj)` at `y`: the pullback of the zero density."""
    zeros = tf.zeros_like(self.flat_x)
    return self(zeros, _outer(zeros, zeros))

  def inverted(self, y, y_layout=None):
    """The pullback of `h⁻¹` at `self.x`, whose inverse image is `y`, the points this pullback was taken at.

    Generally `InvertedPullback` (this map run backwards); structured pullbacks keep their structure.
    """
    return InvertedPullback(self, y, y_layout)

  def with_output_permuted(self, source):
    """This pullback followed by `x ↦ gather(x, source)`, a permutation of its vector output, as one pullback;
    None (the default) where it has no cheaper form than the two apart.

    `ComposedPullback` folds each permutation between vectors into the layer on its `y` side through this. A
    layer with a dense Jacobian then gathers that Jacobian's rows once, where a `PermutationPullback` after it
    would gather both axes of every incoming Hessian: TF's gathers across the last axis are slow.

    Args:
      source: `σ`, an integer vector of length `n_x`: the new pullback's `x` is `gather(self.x, σ, axis=-1)`.
    """
    del source
    return None


class ElementwisePullback(Pullback):
  """`h` acts coordinate by coordinate: `x_i = φ(y_i)`.

  Every derivative is given in the shape of `x` (or broadcasting to it: a scalar parameter gives a scalar);
  ``None`` states that a term is identically zero (or, for ``d1``, one), so affine and shift layers skip the
  work. For events that are not vectors the terms are flattened as `x` is, so the maps see one vector per point.

  Args:
    x: `φ(y)`, `[*batch, *event]`.
    ildj: `Σ_i log|φ'(y_i)|` over the event.
    d1: `φ'(y)`. `None` means 1.
    d2: `φ''(y)`. `None` means 0.
    dlog1: `(log|φ'|)'(y) = φ''/φ'`. `None` means 0.
    dlog2: `(log|φ'|)''(y) = φ'''/φ' - (φ''/φ')²`. `None` means 0.
    x_layout: the layout of `x` (one tensor of any event rank); None for a vector.
  """

  def __init__(self, x, ildj, d1=None, d2=None, dlog1=None, dlog2=None, x_layout=None):
    super().__init__(x, ildj, x_layout)
    self.d1, self.d2, self.dlog1, self.dlog2 = (None if t is None else self._flat(t)
                                                for t in (d1, d2, dlog1, dlog2))

  @classmethod
  def from_flat(cls, x, ildj, terms, x_layout):
    """The pullback from terms `(d1, d2, dlog1, dlog2)` already flat, `[*batch, n]` (or None)."""
    pullback = cls(x, ildj, x_layout=x_layout)
    pullback.d1, pullback.d2, pullback.dlog1, pullback.dlog2 = terms
    return pullback

  def _flat(self, term):
    """`term` in the shape of `x`, flat: rows and columns then scale alike whatever the term broadcast."""
    x = self.x
    if term.shape != x.shape:
      shape = tf.broadcast_static_shape(term.shape, x.shape)
      if shape.is_fully_defined():
        term = tf.broadcast_to(term, shape)
      else:
        term = tf.broadcast_to(term, tf.broadcast_dynamic_shape(tf.shape(term), tf.shape(x)))
    return self.x_layout.flatten(term)

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
      # With one huge φ'_i the outer product φ'_i φ'_j overflows, and 0 · inf would be NaN in entries that are
      # exactly zero; those stay zero, while a NaN φ' (a point outside the support) still makes its row NaN.
      # (Scaling rows, then columns, would not do: in a graph grappler reorders the two products into this one.)
      scale = _outer(self.d1, self.d1)
      hess = tf.where(tf.math.is_nan(scale), scale, tf.math.multiply_no_nan(scale, hess))
    if self.dlog1 is not None:
      grad = grad + self.dlog1
    if curvature is not None:
      hess = _add_to_diagonal(hess, curvature)
    return grad, hess

  def in_frame(self, grad, hess, frame):
    if frame is None:
      return self(grad, hess) + (None,)
    inverse = tf.math.invert_permutation(frame)  # coordinate i is at σ⁻¹(i) of the frame
    terms = tuple(None if term is None else tf.gather(term, inverse, axis=-1)
                  for term in (self.d1, self.d2, self.dlog1, self.dlog2))
    return ElementwisePullback.from_flat(self.x, self.ildj, terms, self.x_layout)(grad, hess) + (frame,)

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

  def inverted(self, y, y_layout=None):
    """The elementwise pullback of the inverse map at `self.x`. This pullback's terms are those of a map `ψ` at
    `y` (`self.x = ψ(y)`); those of `φ = ψ⁻¹` at `self.x` follow from them alone:

    .. math::

        φ' = 1/ψ', \\quad (\\log|φ'|)' = -(\\log|ψ'|)'/ψ', \\quad φ'' = φ' (\\log|φ'|)', \\quad
        (\\log|φ'|)'' = \\big((\\log|ψ'|)'^2 - (\\log|ψ'|)''\\big)/ψ'^2.

    Args:
      y: the points this pullback's terms were taken at, `ψ(y) = self.x`; the new pullback's `x`.
      y_layout: the layout of `y` (that of `self.x`: coordinatewise maps keep it); None for a vector.
    """
    reciprocal = None if self.d1 is None else tf.math.reciprocal(self.d1)
    dlog1 = dlog2 = None
    if self.dlog1 is not None:
      dlog1 = -self.dlog1 if reciprocal is None else -self.dlog1 * reciprocal
      dlog2 = self.dlog1 * self.dlog1
    if self.dlog2 is not None:
      dlog2 = -self.dlog2 if dlog2 is None else dlog2 - self.dlog2
    if dlog2 is not None and reciprocal is not None:
      dlog2 = dlog2 * reciprocal * reciprocal
    d2 = None if dlog1 is None else (dlog1 if reciprocal is None else reciprocal * dlog1)
    return ElementwisePullback.from_flat(y, -self.ildj, (reciprocal, d2, dlog1, dlog2), y_layout)

  def jacobian_transpose_times(self, matrix):
    return matrix if self.d1 is None else self.d1[..., :, tf.newaxis] * matrix

  def jacobian_inverse_transpose_times(self, matrix):
    return matrix if self.d1 is None else matrix / self.d1[..., :, tf.newaxis]

  def _vector(self, value, default):
    return tf.broadcast_to(default if value is None else value, tf.shape(self.flat_x))

  def jacobian(self):
    return tf.linalg.diag(self._vector(self.d1, tf.ones([], self.flat_x.dtype)))

  def hessian(self):
    x = self.flat_x
    d2 = self._vector(self.d2, tf.zeros([], x.dtype))
    eye = tf.eye(tf.shape(x)[-1], dtype=x.dtype)
    return tf.linalg.diag(d2)[..., tf.newaxis] * eye[:, tf.newaxis, :]


class LinearPullback(Pullback):
  """`h` is affine: `x = M y + c` with one matrix `M` shared by the points (the layer's batch shape only).

  The second-derivative terms vanish, so `∇G = Mᵀ ∇F` and `∇²G = Mᵀ ∇²F M`. `M` may be rectangular (a bijector
  between flat events of different sizes).

  Args:
    x: the inverse image, `[*batch, n_x]` or of layout `x_layout`.
    ildj: `log|det M|`.
    matrix: `M = ∂x/∂y`, `[*layer_batch, n_x, n_y]`, formed once per call.
    inverse_matrix: `M⁻¹`, the same shape; formed on first use by ``invert`` if not given.
    x_layout: the layout of `x`; None for a vector.
  """

  def __init__(self, x, ildj, matrix, inverse_matrix=None, x_layout=None):
    super().__init__(x, ildj, x_layout)
    self.matrix = matrix
    self._inverse_matrix = inverse_matrix

  def _inverse(self):
    if self._inverse_matrix is None:
      self._inverse_matrix = tf.linalg.inv(self.matrix)
    return self._inverse_matrix

  def __call__(self, grad, hess):
    m = self.matrix
    return _transpose_times(m, grad), _congruence(m, hess)

  def invert(self, grad, hess):
    m = self._inverse()
    return _transpose_times(m, grad), _congruence(m, hess)

  def jacobian_transpose_times(self, matrix):
    return products.matmul(self.matrix, matrix, transpose_a=True)

  def jacobian_inverse_transpose_times(self, matrix):
    return products.matmul(self._inverse(), matrix, transpose_a=True)

  def jacobian(self):
    batch = tf.shape(self.flat_x)[:-1]
    return tf.broadcast_to(self.matrix, tf.concat([batch, tf.shape(self.matrix)[-2:]], 0))

  def hessian(self):
    n_x, n_y = tf.shape(self.matrix)[-2], tf.shape(self.matrix)[-1]
    return tf.zeros(tf.concat([tf.shape(self.flat_x)[:-1], [n_x, n_y, n_y]], 0), self.matrix.dtype)


class PermutationPullback(Pullback):
  """`h` permutes coordinates: `x_i = y_{σ(i)}`; derivatives are gathered, at O(D²) per point, where a layer
  needs them in order: in a sweep a permutation only composes the frame (`Pullback.in_frame`).

  Index bookkeeping between events of other layouts (`Reshape`, `Split`, `Restructure`, `Transpose`) is a
  permutation of the flat events too.

  Args:
    x: `[*batch, D]`, or of layout `x_layout`.
    ildj: 0.
    source: `σ` as an integer vector of length D, `x = gather(y, σ)` over the flat events.
    x_layout: the layout of `x`; None for a vector.
  """

  def __init__(self, x, ildj, source, x_layout=None):
    super().__init__(x, ildj, x_layout)
    self.source = source
    # ∂G/∂y_j = ∂F/∂x_{σ⁻¹(j)}.
    self._inverse_source = tf.math.invert_permutation(source)

  def __call__(self, grad, hess):
    return _permuted(grad, hess, self._inverse_source)

  def in_frame(self, grad, hess, frame):
    # Nothing moves: gathering by σ⁻¹ what the frame gathers by `frame` is gathering by `frame[σ⁻¹]`.
    return grad, hess, self._inverse_source if frame is None else tf.gather(frame, self._inverse_source)

  def invert(self, grad, hess):
    return _permuted(grad, hess, self.source)

  def jacobian_transpose_times(self, matrix):
    return tf.gather(matrix, self._inverse_source, axis=-2)

  def jacobian_inverse_transpose_times(self, matrix):
    return tf.gather(matrix, self.source, axis=-2)

  def jacobian(self):
    x = self.flat_x
    d = tf.shape(x)[-1]
    matrix = tf.gather(tf.eye(d, dtype=x.dtype), self.source, axis=-2)
    return tf.broadcast_to(matrix, tf.concat([tf.shape(x), [d]], 0))

  def hessian(self):
    x = self.flat_x
    d = tf.shape(x)[-1]
    return tf.zeros(tf.concat([tf.shape(x), [d, d]], 0), x.dtype)


class AutodiffPullback(Pullback):
  """Any differentiable `h`, given as a function of flat points, differentiated by nested tapes on it alone.

  The whole pullback of `(g, H)` is the Hessian of one scalar. With `x₀ = h(y₀)` held fixed,

  .. math::

      φ(y) = g \cdot h(y) + ildj(y) + \tfrac12 (h(y) - x_0)^T H (h(y) - x_0), \qquad
      ∇φ(y_0) = J^T g + ∇ ildj, \qquad ∇^2φ(y_0) = J^T H J + \sum_k g_k ∇^2 h_k + ∇^2 ildj,

  since `h(y₀) - x₀ = 0` removes every other term. So a call costs what nested tapes cost on this layer alone:
  one recorded pass and `n_y` vectorised backward passes of its gradient, with no Jacobian taken apart and no
  `[n_x, n_y, n_y]` tensor formed. The tapes run when the pullback is applied, at the points broadcast against
  the incoming gradient's batch, so a condition with more points than `y` gives each of its points its own
  derivatives.

  Args:
    fn: `y [*batch, n_y] -> (x [*batch, n_x], ildj [*batch])` on flat points, differentiable.
    y: `[*batch, n_y]`, the flat points.
    x: the inverse image as the bijector gives it (the next layer's input).
    ildj: `[*batch]`.
    x_layout: the layout of `x`; None for a vector.
  """

  def __init__(self, fn, y, x, ildj, x_layout=None):
    super().__init__(x, ildj, x_layout)
    self._fn = fn
    self._y = y
    self._first = None  # (J, ∇ ildj) at y's own batch, for `invert` and inspection

  def _pulled_back(self, grad, hess):
    """`(∇φ, ∇²φ)` at every point (class docstring); `hess=None` leaves out the quadratic term."""
    tensors = [self._y, grad] if hess is None else [self._y, grad, hess[..., 0]]
    y, grad = _broadcast_batches(tensors, 1)[:2]

    def phi(y):
      x, ildj = self._fn(y)
      total = tf.reduce_sum(grad * x) + tf.reduce_sum(ildj)
      if hess is not None:
        moved = x - tf.stop_gradient(x)  # zero, with derivative J
        total += 0.5 * _quadratic_form(hess, moved)
      return total

    # A fresh tensor: TFP's caches must not cut it off the tapes.
    return tapes.per_point_hessian(phi, tf.identity(y))[1:]

  def _first_order(self):
    """`(J, ∇ ildj)` by one tape, for `invert` and inspection."""
    if self._first is None:
      _, jacobian, ildj_gradient = tapes.per_point_jacobian(self._fn, tf.identity(self._y), with_gradient=True)
      self._first = jacobian, ildj_gradient
    return self._first

  def __call__(self, grad, hess):
    return self._pulled_back(grad, hess)

  def then(self, layers):
    """The autodiff pullback of this layer followed by `layers` (autodiff layers and permutations), as one."""
    functions = [self._fn]
    ildj = self.ildj
    for layer in layers:
      if isinstance(layer, PermutationPullback):
        functions.append(lambda x, source=layer.source: (tf.gather(x, source, axis=-1), 0.))
      else:
        functions.append(layer._fn)  # pylint: disable=protected-access
        ildj = ildj + layer.ildj

    def composed(y):
      total = 0.
      for function in functions:
        y, log_det = function(y)
        total += log_det
      return y, total

    return AutodiffPullback(composed, self._y, layers[-1].x, ildj, layers[-1].x_layout)

  def log_prob_derivatives(self, log_prob_fn):
    """`(G, ∇G, ∇²G)` of `G(y) = F(h(y)) + ildj(y)` at every point, `F = log_prob_fn` on the flat `x`, by nested
    tapes on the composition: where the layer next to the base has no rule, it is differentiated with the base,
    as nested tapes on `log_prob` would (the base's own Hessian is then never formed)."""

    def log_prob(y):
      x, ildj = self._fn(y)
      return log_prob_fn(x) + ildj

    return tapes.per_point_hessian(log_prob, tf.identity(self._y))

  def invert(self, grad, hess):
    jacobian, ildj_gradient = self._first_order()
    return _pull_forward(jacobian, grad - ildj_gradient, hess, lambda g: self._pulled_back(g, None)[1],
                         triangle="check")

  def jacobian(self):
    return self._first_order()[0]


class BlockPullback(Pullback):
  """Separate maps of disjoint blocks of coordinates (`JointMap`): a block-diagonal Jacobian.

  Block `i` maps the flat coordinates `X_i` of `x` to `Y_i` of `y` by its own pullback `p_i` (Jacobian `J_i`).
  The incoming Hessian may couple the blocks, so

  .. math::

      ∇G_{Y_i} = p_i(∇F_{X_i}), \\qquad ∇^2G_{Y_i Y_i} = p_i(∇F_{X_i}, ∇^2F_{X_i X_i}), \\qquad
      ∇^2G_{Y_i Y_j} = J_i^T ∇^2F_{X_i X_j} J_j \\quad (i ≠ j).

  Args:
    blocks: the blocks' pullbacks, in the flat order of both events.
    x: the inverse image, the structure of `x_layout`.
    x_layout: its layout, the blocks' own layouts concatenated.
    y_sizes: the flat size of each block on the `y` side.
  """

  def __init__(self, blocks, x, x_layout, y_sizes):
    ildj = blocks[0].ildj
    for block in blocks[1:]:
      ildj = ildj + block.ildj
    super().__init__(x, ildj, x_layout)
    self.blocks = blocks
    self._x_sizes = [block.x_layout.size for block in blocks]
    self._y_sizes = list(y_sizes)

  def _apply(self, grad, hess, sizes, diagonal, off_diagonal):
    """Blocks `i` of `(grad, hess)` (of `sizes`) through `diagonal(p_i, g_i, H_ii)`, the cross blocks through
    `off_diagonal(p_i, M)` on both sides."""
    grads = tf.split(grad, sizes, axis=-1)
    rows = [tf.split(row, sizes, axis=-1) for row in tf.split(hess, sizes, axis=-2)]
    n = len(self.blocks)
    out = [[None] * n for _ in range(n)]
    out_grads = []
    for i, block in enumerate(self.blocks):
      g, out[i][i] = diagonal(block, grads[i], rows[i][i])
      out_grads.append(g)
    for i in range(n):
      for j in range(i + 1, n):
        cross = off_diagonal(self.blocks[i], rows[i][j])  # J_iᵀ H_ij
        cross = off_diagonal(self.blocks[j], tf.linalg.matrix_transpose(cross))  # J_jᵀ H_ji J_i
        out[j][i], out[i][j] = cross, tf.linalg.matrix_transpose(cross)
    out_grads = _broadcast_batches(out_grads, 1)
    flat = _broadcast_batches([block for row in out for block in row], 2)
    rows = [tf.concat(flat[i * n:(i + 1) * n], axis=-1) for i in range(n)]
    return tf.concat(out_grads, axis=-1), tf.concat(rows, axis=-2)

  def __call__(self, grad, hess):
    return self._apply(grad, hess, self._x_sizes, lambda block, g, h: block(g, h),
                       lambda block, m: block.jacobian_transpose_times(m))

  def invert(self, grad, hess):
    return self._apply(grad, hess, self._y_sizes, lambda block, g, h: block.invert(g, h),
                       lambda block, m: block.jacobian_inverse_transpose_times(m))

  def jacobian_transpose_times(self, matrix):
    parts = tf.split(matrix, self._x_sizes, axis=-2)
    return tf.concat(_broadcast_batches([b.jacobian_transpose_times(p) for b, p in zip(self.blocks, parts)], 2),
                     axis=-2)

  def jacobian_inverse_transpose_times(self, matrix):
    parts = tf.split(matrix, self._y_sizes, axis=-2)
    return tf.concat(_broadcast_batches(
        [b.jacobian_inverse_transpose_times(p) for b, p in zip(self.blocks, parts)], 2), axis=-2)


def block_pullback(blocks, x, x_layout, y_sizes):
  """The pullback of separate maps of consecutive blocks of coordinates, in its cheapest form.

  All blocks elementwise (`JointMap` of constraining bijectors): one `ElementwisePullback` of the concatenated
  derivatives. All permutations (`JointMap` of `Reshape`s): one permutation. Otherwise a `BlockPullback`.

  Args:
    blocks: the blocks' pullbacks, in the flat order of both events.
    x: the inverse image, the structure of `x_layout`.
    x_layout: its layout, the blocks' own layouts concatenated.
    y_sizes: the flat size of each block on the `y` side.
  """
  ildj = blocks[0].ildj
  for block in blocks[1:]:
    ildj = ildj + block.ildj
  if all(isinstance(block, ElementwisePullback) for block in blocks):
    terms = []
    for name, default in (("d1", 1.), ("d2", 0.), ("dlog1", 0.), ("dlog2", 0.)):
      values = [getattr(block, name) for block in blocks]
      if all(value is None for value in values):
        terms.append(None)
        continue
      values = [tf.fill(tf.shape(block.flat_x), tf.constant(default, block.flat_x.dtype)) if value is None else value
                for block, value in zip(blocks, values)]
      terms.append(tf.concat(_broadcast_batches(values, 1), axis=-1))
    return ElementwisePullback.from_flat(x, ildj, terms, x_layout)
  if all(isinstance(block, PermutationPullback) for block in blocks):
    offsets = [sum(y_sizes[:i]) for i in range(len(blocks))]
    source = tf.concat([block.source + offset for block, offset in zip(blocks, offsets)], axis=0)
    return PermutationPullback(x, ildj, source, x_layout)
  return BlockPullback(blocks, x, x_layout, y_sizes)


class InvertedPullback(Pullback):
  """The pullback of `Invert(b)`, whose inverse is `b.forward`: the inner pullback run backwards.

  With `v = b.forward(u)`, the density on `u` is `G(u) = (F - ildj_b)(v)`, so `b`'s own pullback (taken at `v`)
  maps derivatives at `u` to derivatives at `v`, and its inverse map is exactly the pullback we need. This is the
  second-order inverse-function theorem without forming `[D, D, D]` tensors.

  Args:
    inner: the pullback of `b` at `v`; its `x` is `u`.
    x: `v`, the point this pullback maps to.
    x_layout: the layout of `v`; None for a vector.
  """

  def __init__(self, inner, x, x_layout=None):
    super().__init__(x, -inner.ildj, x_layout)
    self.inner = inner

  def __call__(self, grad, hess):
    return self.inner.invert(grad, hess)

  def invert(self, grad, hess):
    return self.inner(grad, hess)

  def jacobian_transpose_times(self, matrix):
    return self.inner.jacobian_inverse_transpose_times(matrix)

  def jacobian_inverse_transpose_times(self, matrix):
    return self.inner.jacobian_transpose_times(matrix)


def _merge_autodiff(layers):
  """`layers` with each run of autodiff layers (permutations between them included) merged into one.

  Nested tapes on a run of layers cost what they cost on each layer, minus the products with the Jacobians between
  them: a flow of user-written layers then costs what nested tapes on it cost, never more.
  """
  merged = []
  pending = []  # permutations after the last autodiff layer, waiting to see whether another one follows
  for layer in layers:
    if isinstance(layer, AutodiffPullback) and merged and isinstance(merged[-1], AutodiffPullback):
      merged[-1] = merged[-1].then(pending + [layer])
      pending = []
    elif isinstance(layer, PermutationPullback) and merged and isinstance(merged[-1], AutodiffPullback):
      pending.append(layer)
    else:
      merged += pending + [layer]
      pending = []
  return merged + pending


def _fuse_permutations(layers):
  """`layers` with each permutation folded into the layer on its `y` side, where that layer can take it.

  Layers are ordered from the `y` side, so the permutation acts on its predecessor's `x`
  (`Pullback.with_output_permuted`).
  """
  fused = []
  for layer in layers:
    folded = None
    # Only a permutation between vectors: one into another layout (a `Reshape`) changes what `x` is.
    if isinstance(layer, PermutationPullback) and fused and layer.x_layout.is_vector:
      folded = fused[-1].with_output_permuted(layer.source)
    if folded is None:
      fused.append(layer)
    else:
      fused[-1] = folded
  return fused


def pull_back(layers, grad, hess):
  """`(grad, hess)` pulled back through `layers`, base side first: the sweep's chain rule (`sweep.py`).

  Args:
    layers: pullbacks ordered from the `y` side, each taken at the previous one's `x`.
    grad: `[*batch, n]` on the `x` side of the last layer.
    hess: `[*batch, n, n]` there.
  """
  frame = None  # permutations are applied where a layer needs them, composed until then (`Pullback.in_frame`)
  for layer in reversed(layers):
    grad, hess, frame = layer.in_frame(grad, hess, frame)
  if frame is not None:
    grad, hess = _permuted(grad, hess, frame)
  return grad, hess


class ComposedPullback(Pullback):
  """The pullback of a composition `h = h_K ∘ … ∘ h_1` (a `Chain`): its layers' pullbacks, base side first.

  Args:
    layers: pullbacks ordered from the `y` side, each taken at the previous one's `x`.
  """

  def __init__(self, layers):
    # Compositions of compositions are one composition: the fusions below then see across nested `Chain`s.
    layers = [inner for layer in layers for inner in (layer.layers if isinstance(layer, ComposedPullback) else [layer])]
    layers = _fuse_permutations(_merge_autodiff(layers))
    ildj = layers[0].ildj
    for layer in layers[1:]:
      ildj = ildj + layer.ildj  # Shapes differ: constant-Jacobian layers give a scalar.
    super().__init__(layers[-1].x, ildj, layers[-1].x_layout)
    self.layers = layers

  def __call__(self, grad, hess):
    return pull_back(self.layers, grad, hess)

  def invert(self, grad, hess):
    for layer in self.layers:
      grad, hess = layer.invert(grad, hess)
    return grad, hess

  def jacobian_transpose_times(self, matrix):
    for layer in reversed(self.layers):
      matrix = layer.jacobian_transpose_times(matrix)
    return matrix

  def jacobian_inverse_transpose_times(self, matrix):
    for layer in self.layers:
      matrix = layer.jacobian_inverse_transpose_times(matrix)
    return matrix


class _AffineOutputs:
  """What an affine layer `x = (y - m(y)) ⊙ a`, `a = exp(-s(y))`, computed at its points, in the pullback's
  output order: `x`, `a` and `ildj`, and the transposed Jacobians `(Jᵀ, Sᵀ)`, formed on first use.

  A permutation folded into the layer (`permuted`) reorders its outputs: `source` then maps each output to the
  network's output it is (None: the network's own order), and the Jacobians are formed from those columns of the
  network's (for a linear read-out, its kernel's columns: the permutation costs nothing).

  Args:
    x: `[*batch, D]`.
    scale: `a`, `[*batch, D]`.
    ildj: `-Σ s`, `[*batch]`.
    conditioner: `ConditionerDerivatives` with `2D` outputs, `[m, s]`, as functions of the whole `y`.
    source: output `i` is the network's output `source[i]` (an integer vector), where a permutation was folded
      in; None for none.
  """

  def __init__(self, x, scale, ildj, conditioner, source=None):
    self.x, self.scale, self.ildj = x, scale, ildj
    self.conditioner = conditioner
    self.source = source
    self._jacobians = None

  @classmethod
  def at(cls, y, conditioner):
    """The outputs at points `y`, `[*batch, D]`, from the conditioner's `(m, s)`."""
    d = y.shape[-1]
    shift, log_scale = conditioner.outputs[..., :d], conditioner.outputs[..., d:]
    scale = tf.exp(-log_scale)
    return cls((y - shift) * scale, scale, -tf.reduce_sum(log_scale, axis=-1), conditioner)

  def jacobians_transposed(self):
    """`(Jᵀ, Sᵀ, Jᵀ + Sᵀ diag(x))`, each `[*batch, D, D]` (`[..., i, k] = ∂x_k/∂y_i`), with
    `Jᵀ = (I - Mᵀ) diag(a) - Sᵀ diag(x)` (columns scaled) and `Sᵀ = (∂s/∂y)ᵀ`; the pullback needs all three."""
    if self._jacobians is None:
      d = self.x.shape[-1]
      if self.source is None:
        shifts, log_scales = slice(0, d), slice(d, 2 * d)
        # Output k is y_k's own: ∂x_k/∂y_k ∋ a_k.
        identity = tf.eye(d, dtype=self.x.dtype)
      else:
        shifts, log_scales = self.source, self.source + d
        # Output k is y_{source_k}'s: ∂x_k/∂y_i ∋ a_k δ(i, source_k), a permutation matrix.
        identity = tf.one_hot(self.source, d, axis=0, dtype=self.x.dtype)
      m_t = self.conditioner.jacobian_transpose_columns(shifts)
      s_t = self.conditioner.jacobian_transpose_columns(log_scales)
      # An elementwise pass over [*batch, D, D] costs about half a batched product here: the fewest passes that
      # give all three.
      scaled = (identity - m_t) * self.scale[..., tf.newaxis, :]
      self._jacobians = scaled - s_t * self.x[..., tf.newaxis, :], s_t, scaled
    return self._jacobians

  def permuted(self, source):
    """The outputs of this layer followed by `x ↦ gather(x, source)`, a permutation of its output.

    Only vectors are gathered; the Jacobians are formed from the network's columns in the new order, and the
    network's weights are gathered back to its own order (`Σ_i v_i ∇²x_{σ(i)} = Σ_j (v∘σ⁻¹)_j ∇²x_j`).
    """
    columns = source if self.source is None else tf.gather(self.source, source)
    return _AffineOutputs(tf.gather(self.x, source, axis=-1), tf.gather(self.scale, source, axis=-1), self.ildj,
                          self.conditioner, columns)

  def network_weights(self, grad):
    """The weights `[v ⊙ a, v ⊙ x + 1]` of the network's second derivatives for `v = grad`, in its own order."""
    weights = tf.concat([grad * self.scale, grad * self.x + 1], axis=-1)
    if self.source is None:
      return weights
    order = tf.math.invert_permutation(self.source)
    return tf.gather(weights, tf.concat([order, order + tf.size(order, out_type=order.dtype)], 0), axis=-1)


def _factored_affine_pullback(outputs, grad, hess, kernel, d1, frame=None):
  """The dense pullback of `ConditionedAffinePullback` with its Jacobian kept factored through the read-out layer.

  Where the network reads `(m, s)` out linearly from a hidden layer of `H < D` units, `a_L = σ(z_L)`, the
  Jacobian stays factored: `J = diag(a) - P B`, `S = Q B`, with `B = diag(σ'(z_L)) Z_L` (`[H, D]`, `Z_L = T_Lᵀ`
  the transpose of the network's tangents),
  `Q = W_sᵀ` and `P = diag(a) W_mᵀ + diag(x) W_sᵀ` (`[D, H]`, `W = [W_m, W_s]` the read-out kernel). With
  `T = ∇²F P + V Q`, `K = diag(a) T B` and `N = Pᵀ T + W_s diag(v ⊙ a) W_mᵀ` (`[H, H]`),

  .. math::

      ∇^2G = \\operatorname{diag}(a) ∇^2F \\operatorname{diag}(a) - K - K^T
          + Z_L^T \\big(\\operatorname{diag}(σ') N \\operatorname{diag}(σ') - \\operatorname{diag}(c_L)\\big) Z_L
          - \\sum_{l<L} Z_l^T \\operatorname{diag}(c_l) Z_l,

  `O(D²H)` per point instead of `O(D³)` (`x ⊙ S` cancels between `P` and `V X S`).

  In a frame `σ` (`Pullback.in_frame`) every term is taken in it: the vectors and the rows of the factors are
  gathered into it (`O(DH)` per point), never the Hessian, and so is the result.

  Args:
    outputs: the layer's `_AffineOutputs`, in the network's own output order.
    grad: `∇F`, `[*batch, D]` (in the frame, if any).
    hess: `∇²F`, `[*batch, D, D]` (in the frame, if any).
    kernel: `W`, the read-out kernel, `[H, 2D]`.
    d1: `σ'(z_L)`, `[*batch, H]`.
    frame: `σ`, or None for none.
  """
  d = outputs.x.shape[-1]
  a, x = outputs.scale, outputs.x
  if frame is None:
    weights = outputs.network_weights(grad)
    into_frame = lambda rows, axis: rows
  else:
    weights = outputs.network_weights(tf.gather(grad, frame, axis=-1))  # the network's own order
    inverse = tf.math.invert_permutation(frame)
    into_frame = lambda rows, axis: tf.gather(rows, inverse, axis=axis)  # y_i (or x_i) is at σ⁻¹(i)
    a, x = into_frame(a, -1), into_frame(x, -1)
  (t_last, c_last), *others = outputs.conditioner.factors(weights)  # T_L = Z_Lᵀ: [*batch, D, H] or [D, H]
  t_last = into_frame(t_last, -2)
  others = [(into_frame(tangents, -2), c) for tangents, c in others]
  m_rows = into_frame(tf.transpose(kernel[:, :d]), -2)  # W_mᵀ: [D, H]
  s_rows = into_frame(tf.transpose(kernel[:, d:]), -2)  # Q = W_sᵀ: [D, H]
  p = a[..., tf.newaxis] * m_rows + x[..., tf.newaxis] * s_rows
  t = products.matmul(hess, p) + grad[..., tf.newaxis] * s_rows
  minus_cross = conditioners.times_transpose(-a[..., tf.newaxis] * t * d1[..., tf.newaxis, :], t_last)  # -K
  middle = (products.matmul(p, t, transpose_a=True)
            + products.matmul(s_rows * (grad * a)[..., tf.newaxis], m_rows, transpose_a=True))
  middle = _add_to_diagonal(middle * _outer(d1, d1), -c_last)
  # One sum of the [D, D] terms: each binary add would read and write a whole Hessian again.
  terms = [hess * _outer(a, a), minus_cross, tf.linalg.matrix_transpose(minus_cross),
           conditioners.times_transpose(products.matmul(t_last, middle), t_last)]
  terms += [conditioners.quadratic_form(tangents, -c) for tangents, c in others]
  hess = _sum(terms)
  # ∇G = Jᵀ g - Sᵀ 1 = a ⊙ g - Bᵀ W w, the network's own adjoint at its read-out.
  adjoint = tf.tensordot(weights, kernel, [[-1], [1]])
  return a * grad - _times(t_last, d1 * adjoint), hess


class ConditionedAffinePullback(Pullback):
  """`x = (y - m(y)) ⊙ exp(-s(y))` with a conditioner network `(m, s)`: RealNVP and MAF layers.

  With `a = exp(-s)`, `M = ∂m/∂y`, `S = ∂s/∂y`, the Jacobian is `J = diag(a) - a ⊙ M - x ⊙ S` (rows scaled),
  `ildj = -Σ s`, and for an incoming gradient `v`

  .. math::

      \\sum_i v_i ∇^2 x_i + ∇^2 ildj = -(J^T V S + S^T V J + S^T \\operatorname{diag}(v ⊙ x) S)
          - \\sum_i \\big(v_i a_i ∇^2 m_i + (v_i x_i + 1) ∇^2 s_i\\big),

  `V = diag(v)`. The last sum is one contraction of the conditioner's second derivatives (`conditioners.py`):
  the network's `[2D, D, D]` Hessian is never formed. The autoregressive (MAF) or block (RealNVP) structure
  is carried by the zeros of `M` and `S`; `J` is formed once per point, transposed (`[*batch, D, D]`, the layout
  of the network's tangents, `conditioners.py`).

  With `T_l`, `c_l` the network's own factors (`Σ w ∇²o = Σ_l T_l diag(c_l) T_lᵀ`, where it has them) the
  pullback is `∇²G = Jᵀ(Jᵀ∇²F - (V S)ᵀ)ᵀ - Sᵀ(V J + V X S) - Σ_l T_l diag(c_l) T_lᵀ` (`∇²F` symmetric): batched
  products only, and none transposes its operands.
  Where the network reads `(m, s)` out linearly from fewer hidden units than `D`, `J` is never formed
  (`_factored_affine_pullback`).

  Args:
    y: `[*batch, D]`, the points; `x` and `ildj` follow from the conditioner's outputs. Unused with `outputs`.
    conditioner: `ConditionerDerivatives` with `2D` outputs, `[m, s]`, as functions of the whole `y`.
    outputs: the layer's `_AffineOutputs` where already computed (`with_output_permuted` passes those of the
      layer with a permutation folded in); None computes them from `y` and `conditioner`.
    triangle: `"lower"` or `"upper"` where `J` is known to be triangular (an autoregressive network in the
      coordinates' order or its reverse): `invert` (an IAF) then solves by triangular solves. None: unknown.
  """

  def __init__(self, y, conditioner, outputs=None, triangle=None):
    if outputs is None:
      outputs = _AffineOutputs.at(y, conditioner)
    super().__init__(outputs.x, outputs.ildj)
    self._conditioner = conditioner
    self._outputs = outputs
    self._triangle = triangle

  @property
  def conditioner(self):
    """The `ConditionerDerivatives` of the layer's network, as its rule built them."""
    return self._conditioner

  def _readout(self):
    """The conditioner's `linear_readout` where the factored pullback is the cheaper (`H < D`), else None."""
    readout = getattr(self._conditioner, "linear_readout", None)
    if readout is None or self._outputs.source is not None:
      return None
    width, size = readout[0].shape[0], self.x.shape[-1]
    if width is None or size is None or width >= size:
      return None
    return readout

  def with_output_permuted(self, source):
    """The layer's outputs permuted (`_AffineOutputs.permuted`); None where the pullback is factored
    (`_readout`), which keeps `diag(a)` apart from the rows."""
    if self._readout() is not None:
      return None
    return ConditionedAffinePullback(None, self._conditioner, self._outputs.permuted(source))

  def _curvature(self, grad):
    """`Σ_i v_i ∇²x_i + ∇² ildj` for `v = grad` (class docstring)."""
    j_t, s_t, _ = self._outputs.jacobians_transposed()
    jvs = products.matmul(j_t, s_t * grad[..., tf.newaxis, :], transpose_b=True)  # Jᵀ V S
    svs = products.matmul(s_t, s_t * (grad * self.x)[..., tf.newaxis, :], transpose_b=True)
    network = self._conditioner.contract(self._outputs.network_weights(grad))
    return -(jvs + tf.linalg.matrix_transpose(jvs) + svs + network)

  def _ildj_gradient(self):
    return -tf.reduce_sum(self._outputs.jacobians_transposed()[1], axis=-1)

  def in_frame(self, grad, hess, frame):
    readout = self._readout()
    if frame is None or readout is None:
      return super().in_frame(grad, hess, frame)
    return _factored_affine_pullback(self._outputs, grad, hess, *readout, frame=frame) + (frame,)

  def __call__(self, grad, hess):
    readout = self._readout()
    if readout is not None:
      return _factored_affine_pullback(self._outputs, grad, hess, *readout)
    j_t, s_t, j_sx_t = self._outputs.jacobians_transposed()
    v = grad[..., tf.newaxis, :]
    # Kᵀ (Q K) block by block: separate products cost the same flops as one stacked product, without copying
    # the blocks into it.
    # The terms are summed in one pass (`_sum`): each binary sum would read and write a whole Hessian again.
    hess = _sum([products.matmul(j_t, products.matmul(j_t, hess) - s_t * v, transpose_b=True),
                 products.matmul(s_t, j_sx_t * -v, transpose_b=True)]
                + _minus_contraction(self._conditioner, self._outputs.network_weights(grad)))
    return _times(j_t, grad) + self._ildj_gradient(), hess

  def invert(self, grad, hess):
    # `Jᵀ` is solved with: its triangle is the other one of `J`'s.
    triangle = {"lower": "upper", "upper": "lower"}.get(self._triangle)
    return _pull_forward(self._outputs.jacobians_transposed()[0], grad - self._ildj_gradient(), hess,
                         self._curvature, transposed=True, triangle=triangle)

  def jacobian(self):
    return tf.linalg.matrix_transpose(self._outputs.jacobians_transposed()[0])

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

      ∇^2G_{CC} &= H_{CC} + H_{CT} B + B^T q - S^T (V B + V X S) - \\sum_l T_l \\operatorname{diag}(c_l) T_l^T, \\\\
      ∇^2G_{TC} = \\operatorname{diag}(a)\\, q, \\quad
      ∇^2G_{CT} = (∇^2G_{TC})^T, \\quad
      ∇^2G_{TT} = \\operatorname{diag}(a) H_{TT} \\operatorname{diag}(a),

  the conditioner's factors taken on `y_C` only. With `|C| = |T| = D/2` these products cost about a quarter of
  the dense layer's. They are taken transposed, `Bᵀ` and `qᵀ = H_CT + Bᵀ H_TT - (V S)ᵀ` (`H` symmetric), in the
  layout of the conditioner's tangents. Everything else (``invert``, inspection, ``_curvature``) is the dense
  `ConditionedAffinePullback` of the same layer, its conditioner embedded in all of `y`; ``invert`` solves with
  `J` by triangular solves (lower where `C` comes first, upper where it comes last). `Invert` of the layer has a
  block form of its own (``inverted``: `InvertedCouplingPullback`).

  Args:
    y: `[*batch, D]`.
    conditioning: the slice `C` of coordinates the conditioner reads.
    transformed: the slice `T` of coordinates it transforms; `C` and `T` partition `range(D)`.
    conditioner: `ConditionerDerivatives` of the network on `y_C`, with outputs `[m, s]` (`2|T|`).
  """

  def __init__(self, y, conditioning, transformed, conditioner):
    # `J` is triangular: lower where the conditioning block comes first, upper where it comes last.
    super().__init__(y, conditioners.EmbeddedConditioner(conditioner, y.shape[-1], conditioning, transformed),
                     triangle="lower" if conditioning.start == 0 else "upper")
    self._blocks = conditioning, transformed
    self._coupling = conditioner

  @property
  def conditioner(self):
    return self._coupling

  @property
  def blocks(self):
    """`(C, T)`: the slices of the conditioning and the transformed coordinates."""
    return self._blocks

  def with_output_permuted(self, source):
    return None  # Folding a permutation in would break the blocks.

  def __call__(self, grad, hess):
    c, t = self._blocks
    size = t.stop - t.start
    a, x_t = self._outputs.scale[..., t], self.x[..., t]
    m_t = self._coupling.jacobian_transpose_columns(slice(0, size))  # Mᵀ, Sᵀ: [*batch, |C|, |T|]
    s_t = self._coupling.jacobian_transpose_columns(slice(size, 2 * size))
    b_t = -(m_t * a[..., tf.newaxis, :] + s_t * x_t[..., tf.newaxis, :])
    v = grad[..., t]
    rows_c, rows_t = hess[..., c, :], hess[..., t, :]
    h_cc, h_ct, h_tt = rows_c[..., c], rows_c[..., t], rows_t[..., t]
    q_t = h_ct + products.matmul(b_t, h_tt) - s_t * v[..., tf.newaxis, :]
    cc = _sum([h_cc, products.matmul(h_ct, b_t, transpose_b=True), products.matmul(b_t, q_t, transpose_b=True),
               products.matmul(s_t, (b_t + s_t * x_t[..., tf.newaxis, :]) * -v[..., tf.newaxis, :], transpose_b=True)]
              + _minus_contraction(self._coupling, tf.concat([v * a, v * x_t + 1], axis=-1)))
    grad_c = grad[..., c] + _times(b_t, v) - tf.reduce_sum(s_t, axis=-1)
    return _coupling_blocks(c, grad_c, v * a, cc, q_t * a[..., tf.newaxis, :], h_tt * _outer(a, a))

  def inverted(self, y, y_layout=None):
    # `Invert` of a coupling layer is a coupling layer: its own block form, no solves.
    return InvertedCouplingPullback(self, y, y_layout)


class InvertedCouplingPullback(InvertedPullback):
  """`Invert` of an affine coupling layer, itself a coupling layer: `x_C = u_C`, `x_T = u_T ⊙ a + m(u_C)` with
  `a = exp(s(u_C))`, by the block form of `CouplingPullback` rather than solves with the layer's Jacobian.

  Here `x = b.forward(u)` is the `Invert` layer's inverse image and `u` its points; the inner `CouplingPullback`
  (of `b`, taken at `x`) holds the conditioner's derivatives at `x_C = u_C`, which are all this needs. With
  `B = ∂x_T/∂u_C = diag(x_T - m) S + M` (`a ⊙ u_T = x_T - m`), `v = (∇F)_T` and `q = H_TC + H_TT B + V S`,

  .. math::

      ∇^2G_{CC} &= H_{CC} + H_{CT} B + B^T q - M^T V S + \\sum_p w_p ∇^2 o_p, \\quad
      w = [v,\\; v ⊙ (x_T - m) + 1], \\\\
      ∇^2G_{TC} = \\operatorname{diag}(a)\\, q, \\quad
      ∇^2G_{TT} = \\operatorname{diag}(a) H_{TT} \\operatorname{diag}(a), \\quad
      ∇G_C = (∇F)_C + B^T v + \\sum_k ∇s_k, \\quad ∇G_T = a ⊙ v,

  `o = [m, s]` the conditioner's outputs (its second derivatives through its factors, on `u_C` only). An inverted
  RealNVP layer ran its layer's pullback backwards before: three triangular solves with the `[D, D]` Jacobian per
  point (`python benchmarks/inverted_solves.py --flows realnvp --old run-backwards` measures the two). `invert`
  (the layer itself) is the inner pullback's block form.

  Args:
    inner: the `CouplingPullback` of the layer, taken at `x`.
    x: the points it was taken at, the `Invert` layer's inverse image.
    x_layout: the layout of `x`; None for a vector.
  """

  def __call__(self, grad, hess):
    inner = self.inner
    (c, t), coupling = inner.blocks, inner.conditioner
    size = t.stop - t.start
    shift, log_scale = coupling.outputs[..., :size], coupling.outputs[..., size:]
    a, w = tf.exp(log_scale), self.flat_x[..., t] - shift  # w = a ⊙ u_T
    m_t = coupling.jacobian_transpose_columns(slice(0, size))  # Mᵀ, Sᵀ: [*batch, |C|, |T|]
    s_t = coupling.jacobian_transpose_columns(slice(size, 2 * size))
    b_t = s_t * w[..., tf.newaxis, :] + m_t
    v = grad[..., t]
    rows_c, rows_t = hess[..., c, :], hess[..., t, :]
    h_cc, h_ct, h_tt = rows_c[..., c], rows_c[..., t], rows_t[..., t]
    q_t = h_ct + products.matmul(b_t, h_tt) + s_t * v[..., tf.newaxis, :]
    cc = _sum([h_cc, products.matmul(h_ct, b_t, transpose_b=True), products.matmul(b_t, q_t, transpose_b=True),
               products.matmul(m_t * -v[..., tf.newaxis, :], s_t, transpose_b=True)]
              + _minus_contraction(coupling, -tf.concat(_broadcast_batches([v, v * w + 1], 1), axis=-1)))
    grad_c = grad[..., c] + _times(b_t, v) + tf.reduce_sum(s_t, axis=-1)
    return _coupling_blocks(c, grad_c, v * a, cc, q_t * a[..., tf.newaxis, :], h_tt * _outer(a, a))


def _coupling_blocks(c, grad_c, grad_t, cc, ct, tt):
  """`(∇G, ∇²G)` of a coupling layer from its blocks (`C` the conditioning slice, first or last): the gradient's
  `(C, T)` parts and the Hessian's `CC`, `CT` and `TT` blocks (`TC = CTᵀ`)."""
  tc = tf.linalg.matrix_transpose(ct)
  # The blocks' batch shapes may differ (`jacobian()` pulls back a stack of basis vectors with one Hessian).
  blocks = cc, ct, tc, tt
  if not (cc.shape[:-2].is_fully_defined() and all(b.shape[:-2] == cc.shape[:-2] for b in blocks)):
    batch = tf.shape(cc)[:-2]
    for block in blocks[1:]:
      batch = tf.broadcast_dynamic_shape(batch, tf.shape(block)[:-2])
    cc, ct, tc, tt = (tf.broadcast_to(b, tf.concat([batch, tf.shape(b)[-2:]], 0)) for b in blocks)
  if c.start == 0:
    return tf.concat([grad_c, grad_t], -1), tf.concat([tf.concat([cc, ct], -1), tf.concat([tc, tt], -1)], -2)
  return tf.concat([grad_t, grad_c], -1), tf.concat([tf.concat([tt, tc], -1), tf.concat([ct, cc], -1)], -2)
