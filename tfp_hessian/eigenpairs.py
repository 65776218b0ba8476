"""The stiffest or sloppiest eigenpairs of a log-density Hessian, matrix-free: Lanczos on Hessian–vector products.

For large D the `[*batch, D, D]` Hessian of `log_prob_hessian` and its `O(D³)` eigendecomposition are out of reach,
but a few eigenpairs are not: Lanczos needs only products `H q` (`tfp_hessian.log_prob_hvp`) and `O(D·m)` memory per
point for an `m`-dimensional Krylov basis. All points iterate together: each iteration is one product on
`[*batch, D]`.

Lanczos with full reorthogonalization builds an orthonormal basis `Q_m = [q_1 … q_m]` of the Krylov space
`span{q_1, H q_1, …, H^{m-1} q_1}` (`q_1` random) with

.. math::

    H Q_m = Q_{m+1} \\underline{T}_m, \\qquad
    \\underline{T}_m = \\begin{bmatrix} T_m \\\\ β_m e_m^T \\end{bmatrix},

`T_m` tridiagonal (`α` on the diagonal, `β` beside it). Every vector `u = Q_m y` then has the exact residual norm
`‖H u − θ u‖ = ‖\\underline{T}_m y − θ [y; 0]‖`, computed in `m + 1` dimensions.

- **stiff** (largest `|λ|`, the ends of the spectrum, where Lanczos converges first): the Ritz pairs of `T_m`
  with largest `|θ|`.
- **sloppy** (smallest `|λ|`): a log-density Hessian is usually negative definite, and then these are at an end
  too; but it may be indefinite, and then they are *interior* eigenvalues, where Ritz values of `T_m` can be
  spurious. So the sloppy pairs are extracted from `H²` instead, whose smallest eigenvalues `λ²` are at its end:
  the `k` vectors of the Krylov space minimizing `‖H u‖` are the right singular vectors of `\\underline{T}_m` with the
  smallest singular values (`‖H Q_m y‖ = ‖\\underline{T}_m y‖`: no extra product, and the SVD keeps the accuracy
  that squaring `H` would lose). A Rayleigh–Ritz step of `T_m` within their span then gives the signed
  eigenvalues `θ ≈ λ` (it also separates a pair `±λ` that `H²` cannot tell apart) and the vectors.

Breakdowns and repeated eigenvalues: when the Krylov space becomes invariant (`β ≈ 0`), its Ritz pairs are exact
and Lanczos goes on from a fresh random vector orthogonal to the basis. From one start vector Lanczos sees one
eigenvector per *distinct* eigenvalue, so an exactly repeated eigenvalue (a Gaussian with repeated scales, say)
would be found too few times; after a breakdown the iteration therefore goes on until a completed sequence adds
nothing to the wanted set. Nearly (not exactly) repeated eigenvalues are found in turn, as in any Lanczos code.

Convergence: a pair is converged when its residual `‖H u − θ u‖ ≤ tolerance · max|θ|`, `max|θ|` the largest
`|Ritz value|` of `T_m` (an estimate of `‖H‖₂` from below). Iteration stops when every pair of every point is
converged, or after `max_iterations` products; the residuals and a `converged` mask are returned, so an
unconverged pair is reported, never passed off. For any eigenvalue `λ` nearest to `θ`, `|θ − λ| ≤ ‖H u − θ u‖`,
so `tolerance` also bounds the eigenvalues' errors relative to `max|θ|`; the eigenvectors' errors also depend on
the gap to the neighbouring eigenvalues (`sin ∠ ≤ residual / gap`).
"""

import collections

import numpy as np
import tensorflow as tf

from tfp_hessian import compiled, hvp, private_api, sweep
from tfp_hessian.spectrum import _largest_component_positive

__all__ = ["Eigenpairs", "top_eigenpairs"]

WHICH = ("stiff", "sloppy")
# Default relative residual tolerances: in float64 well above the products' rounding (~1e-14 of ‖H‖ for the tested
# flows) and below what eigenvalues are tested to (1e-8); float32's products through deep flows carry relative
# errors of ~1e-6 themselves, so residuals much below that are out of reach.
TOLERANCE = {tf.float64: 1e-10, tf.float32: 1e-5}
# Default Krylov dimension cap, max(MIN_ITERATIONS, ITERATIONS_PER_PAIR · k), at most D. There is no restart: the
# cap bounds the memory, O(D · cap) per point.
MIN_ITERATIONS = 100
# A new Lanczos vector smaller than this many ulps of ‖T‖ is rounding, not a direction: the Krylov space is invariant.
BREAKDOWN = 64
ITERATIONS_PER_PAIR = 20

Eigenpairs = collections.namedtuple("Eigenpairs",
                                    ["eigenvalues", "eigenvectors", "residuals", "converged", "num_iterations"])
Eigenpairs.__doc__ = """`k` eigenpairs of log-density Hessians per point, ordered as in `tfp_hessian.Spectrum`.

Attributes:
  eigenvalues: `[*batch, k]`, by decreasing `|λ|`: for `which="stiff"` the `k` largest `|λ|` (the first `k` of
    `Spectrum.eigenvalues`), for `which="sloppy"` the `k` smallest (the last `k` of `Spectrum.eigenvalues`, the
    sloppiest last). NaN at points where the Hessian–vector products are not finite.
  eigenvectors: `[*batch, D, k]`, unit eigenvectors as *columns*, each column's largest-magnitude component
    positive (as `Spectrum`).
  residuals: `[*batch, k]`, `‖H u − λ u‖` of each pair (absolute; exact in exact arithmetic, from the Lanczos
    relation, no further product).
  converged: `[*batch, k]` bool, `residuals <= tolerance · max|θ|` per point.
  num_iterations: scalar int32, the Krylov dimension reached (= the number of batched Hessian–vector products).
"""


@compiled.when_eager
def top_eigenpairs(distribution, z, k, which="stiff", tolerance=None, max_iterations=None, seed=(0, 0),
                   name="top_eigenpairs", **kwargs):
  """The `k` stiffest or sloppiest eigenpairs of `∇²_z log q(z)` per point, by Lanczos on Hessian–vector products.

  Never forms a `D × D` matrix: memory is `O(D · max_iterations)` per point. Works eagerly (as one compiled
  function, traced once per flow and input signature) and inside `tf.function`. Events of any structure are
  taken over their flat event (`tfp_hessian.flatten_event`), of size `D`.

  Args:
    distribution: as in `tfp_hessian.log_prob_hessian`.
    z: points, as `distribution.log_prob` takes them (`[*batch, D]` for vector events).
    k: number of eigenpairs, `1 <= k <= D`.
    which: "stiff" (largest `|λ|`) or "sloppy" (smallest `|λ|`; see the module docstring for indefinite
      Hessians).
    tolerance: relative residual tolerance, `‖H u − λ u‖ <= tolerance · max|θ|`; default 1e-10 (float64),
      1e-5 (float32).
    max_iterations: largest Krylov dimension, `k <= max_iterations`; capped at D, where the Krylov space is the
      whole space and the result exact up to rounding. Default `min(D, max(100, 20 k))`.
    seed: stateless seed (a pair of integers) of the random starting vectors.
    name: name scope of the ops.
    **kwargs: as `distribution.log_prob` takes them (`bijector_kwargs`, `distribution_kwargs`).

  Returns:
    `Eigenpairs(eigenvalues [*batch, k], eigenvectors [*batch, D, k], residuals [*batch, k],
    converged [*batch, k], num_iterations [])`, `*batch` the broadcast of `z`'s batch shape and the
    distribution's. With `which="stiff"` they agree with the first `k` of `tfp_hessian.spectrum(hessian)`, with
    `which="sloppy"` with its last `k` (up to the tolerance; eigenvectors where eigenvalues are not degenerate).

  Raises:
    TypeError: if `z` is not of the distribution's dtype.
    ValueError: if `z` is not `[*batch, D]`, `k` is not an integer in `[1, D]`, `which` is neither "stiff" nor
      "sloppy", `tolerance` is not positive, or `max_iterations < k`.

  >>> pairs = top_eigenpairs(flow, z, k=10, which="stiff")   # z: [N, D]
  >>> pairs.eigenvalues.shape, pairs.eigenvectors.shape        # ([N, 10], [N, D, 10])
  """
  with tf.name_scope(name):
    size = sweep.points(private_api.resolve_deferred(distribution), z, kwargs)[1].size
    if not isinstance(k, (int, np.integer)) or isinstance(k, bool) or not 1 <= k <= size:
      raise ValueError(f"`k` must be an integer in [1, D] = [1, {size}]; got {k!r}.")
    if which not in WHICH:
      raise ValueError(f"`which` must be one of {WHICH}; got {which!r}.")
    dtype = sweep.dtype_of(private_api.resolve_deferred(distribution))
    tolerance = TOLERANCE[dtype] if tolerance is None else tolerance
    if not isinstance(tolerance, (float, int, np.floating, np.integer)) or not tolerance > 0:
      raise ValueError(f"`tolerance` must be a positive number; got {tolerance!r}.")
    if max_iterations is None:
      max_iterations = max(MIN_ITERATIONS, ITERATIONS_PER_PAIR * k)
    if not isinstance(max_iterations, (int, np.integer)) or isinstance(max_iterations, bool) or max_iterations < k:
      raise ValueError(f"`max_iterations` must be an integer >= k = {k}; got {max_iterations!r}.")
    krylov = min(int(max_iterations), size)

    # The gradient is recorded once; each iteration is then one backward pass through it.
    z, hessian_times = hvp.hessian_operator(distribution, z, **kwargs)
    shape = tf.shape(z)
    num_points = tf.reduce_prod(shape[:-1])

    def matvec(q):  # [N, D] -> [N, D]
      return tf.reshape(hessian_times(tf.reshape(q, shape)), [num_points, size])

    pairs = _lanczos(matvec, num_points, size, dtype, k, which, float(tolerance), krylov, seed)
    batch = shape[:-1]
    static = z.shape[:-1]

    def unflatten(x, tail):
      return tf.ensure_shape(tf.reshape(x, tf.concat([batch, tail], 0)), static.concatenate(tail))

    return Eigenpairs(unflatten(pairs.eigenvalues, [k]), unflatten(pairs.eigenvectors, [size, k]),
                      unflatten(pairs.residuals, [k]), unflatten(pairs.converged, [k]), pairs.num_iterations)


def _orthogonalize(w, basis):
  """`w [N, D]` minus its projection on the rows of `basis [M, N, D]` (orthonormal or zero), twice.

  One classical Gram–Schmidt pass leaves errors of the order of the cancellation; a second one makes `w`
  orthogonal to working precision ("twice is enough", Giraud et al. 2005).
  """
  for _ in range(2):
    w = w - tf.einsum("mn,mnd->nd", tf.einsum("mnd,nd->mn", basis, w), basis)
  return w


def _normalize(w):
  return tf.math.divide_no_nan(w, tf.norm(w, axis=-1, keepdims=True))


def _lanczos(matvec, num_points, size, dtype, k, which, tolerance, krylov, seed):
  """Batched Lanczos with full reorthogonalization; `Eigenpairs` flattened to `[N, ...]`."""
  seed = tf.convert_to_tensor(seed, tf.int32)
  eps = np.finfo(dtype.as_numpy_dtype).eps
  first = _normalize(tf.random.stateless_normal([num_points, size], seed, dtype=dtype))
  basis = tf.tensor_scatter_nd_update(tf.zeros([krylov + 1, num_points, size], dtype), [[0]], first[tf.newaxis])
  alphas = tf.zeros([krylov, num_points], dtype)
  betas = tf.zeros([krylov, num_points], dtype)
  done = tf.zeros([num_points], tf.bool)
  # Where the current Lanczos sequence started (after the last breakdown), and whether the sequence completed by
  # that breakdown held a wanted eigenvalue (then eigenvalues of multiplicity > 1 may have copies still unseen).
  block_start = tf.zeros([num_points], tf.int32)
  pending = tf.zeros([num_points], tf.bool)

  def condition(j, basis, alphas, betas, done, block_start, pending):
    del basis, alphas, betas, block_start, pending
    return tf.logical_and(j < krylov, tf.logical_or(j < k, tf.logical_not(tf.reduce_all(done))))

  def step(j, basis, alphas, betas, done, block_start, pending):
    q = basis[j]
    w = matvec(q)
    alpha = tf.reduce_sum(q * w, axis=-1)
    previous_beta = tf.where(j > 0, betas[tf.maximum(j - 1, 0)], tf.zeros_like(alpha))
    w = w - alpha[:, tf.newaxis] * q - previous_beta[:, tf.newaxis] * basis[tf.maximum(j - 1, 0)]
    w = _orthogonalize(w, basis)
    beta = tf.norm(w, axis=-1)
    scale = tf.maximum(tf.reduce_max(tf.abs(alphas) + betas, axis=0), tf.abs(alpha) + previous_beta)
    # Breakdown: the Krylov space is invariant (H has fewer distinct eigenvalues along q_1 than iterations). Its
    # Ritz pairs are then exact; the iteration goes on from a fresh random direction, with β = 0 in T.
    breakdown = beta <= BREAKDOWN * eps * scale
    fresh = tf.random.stateless_normal([num_points, size], seed + tf.stack([0, j + 1]), dtype=dtype)
    w = tf.where(breakdown[:, tf.newaxis], fresh, w)
    beta = tf.where(breakdown, tf.zeros_like(beta), beta)
    # Normalized, then orthogonalized once more: a small `w` (near breakdown) loses orthogonality when scaled up.
    following = _normalize(_orthogonalize(_normalize(w), basis))
    basis = tf.tensor_scatter_nd_update(basis, [[j + 1]], following[tf.newaxis])
    alphas = tf.tensor_scatter_nd_update(alphas, [[j]], alpha[tf.newaxis])
    betas = tf.tensor_scatter_nd_update(betas, [[j]], beta[tf.newaxis])
    dimension = j + 1
    pending = tf.cond(
        tf.reduce_any(breakdown),
        lambda: tf.where(breakdown, _completed_sequence_is_wanted(
            alphas[:dimension], betas[:dimension], block_start, k, which), pending),
        lambda: pending)
    block_start = tf.where(breakdown, dimension, block_start)
    # The small eigenproblems cost O(j³) per point: checked every step at first, then every ~j/8 steps.
    check = tf.logical_and(dimension >= k, tf.equal(dimension % tf.maximum(1, dimension // 8), 0))
    done = tf.cond(
        check,
        lambda: _settled(_ritz(alphas[:dimension], betas[:dimension], k, which, tolerance)),
        lambda: done)
    done = tf.logical_and(done, tf.logical_not(pending))
    return dimension, basis, alphas, betas, done, block_start, pending

  dimension, basis, alphas, betas, _, _, _ = tf.while_loop(
      condition, step, (tf.constant(0), basis, alphas, betas, done, block_start, pending),
      maximum_iterations=krylov)
  ritz = _ritz(alphas[:dimension], betas[:dimension], k, which, tolerance)
  vectors = tf.einsum("mnd,nmk->ndk", basis[:dimension], ritz.coefficients)
  vectors = _largest_component_positive(vectors)
  nan = tf.constant(np.nan, dtype)
  finite = ritz.finite
  return Eigenpairs(tf.where(finite[:, tf.newaxis], ritz.values, nan),
                    tf.where(finite[:, tf.newaxis, tf.newaxis], vectors, nan),
                    tf.where(finite[:, tf.newaxis], ritz.residuals, nan),
                    ritz.converged, dimension)


_Ritz = collections.namedtuple("_Ritz", ["values", "coefficients", "residuals", "converged", "finite"])


def _settled(ritz):
  """`[N]` bool: every pair converged, or the point's products are not finite (no iteration will help it)."""
  return tf.logical_or(tf.reduce_all(ritz.converged, axis=-1), tf.logical_not(ritz.finite))


def _tridiagonal(alphas, betas):
  """`T_m [N, m, m]` from `alphas`, `betas` `[N, m]` (the last β, below `T_m`, unused), non-finite points zeroed."""
  finite = tf.logical_and(tf.reduce_all(tf.math.is_finite(alphas), -1), tf.reduce_all(tf.math.is_finite(betas), -1))
  # Non-finite points are decomposed as zeros (eigh of NaN is undefined) and reported as such by the caller.
  alphas = tf.where(finite[:, tf.newaxis], alphas, tf.zeros_like(alphas))
  betas = tf.where(finite[:, tf.newaxis], betas, tf.zeros_like(betas))
  tridiagonal = tf.linalg.diag(alphas) + tf.linalg.diag(betas[:, :-1], k=-1) + tf.linalg.diag(betas[:, :-1], k=1)
  return tridiagonal, betas, finite


def _completed_sequence_is_wanted(alphas, betas, block_start, k, which):
  """`[N]` bool: whether the Lanczos sequence just ended by a breakdown holds an eigenvalue wanted over the others.

  A breakdown means the sequence from `block_start` spans an invariant subspace, so `T_m` is block diagonal and that
  block's eigenvalues are exact: one per distinct eigenvalue of `H` that the sequence's start vector touched. A
  start vector orthogonal to the earlier sequences touches every eigenspace not exhausted by them, so once a
  completed sequence holds no eigenvalue better (larger `|λ|` for "stiff", smaller for "sloppy") than the `k`-th
  best of the others, no copy of a multiple eigenvalue is missing from the wanted set. Until then it may be: Lanczos
  from one start vector sees one eigenvector per distinct eigenvalue.

  Args:
    alphas, betas: `[m, N]`, as in `_ritz`.
    block_start: `[N]` int32, where the completed sequence starts.
    k, which: as in `top_eigenpairs`.
  """
  tridiagonal, betas, _ = _tridiagonal(tf.transpose(alphas), tf.transpose(betas))
  size = tf.shape(tridiagonal)[-1]
  inside = tf.range(size)[tf.newaxis, :] >= block_start[:, tf.newaxis]  # [N, m]
  # The other block's rows and columns are replaced by a sentinel eigenvalue that is never wanted.
  if which == "stiff":
    sentinel = tf.zeros_like(tridiagonal[:, 0, :1])
  else:
    sentinel = 1 + 2 * tf.reduce_max(tf.abs(tridiagonal), axis=[-2, -1])[:, tf.newaxis]

  def magnitudes(keep):
    mask = tf.cast(keep, tridiagonal.dtype)
    masked = tridiagonal * mask[:, :, tf.newaxis] * mask[:, tf.newaxis, :]
    masked += tf.linalg.diag(tf.where(keep, tf.zeros_like(masked[:, 0]), sentinel))
    return tf.abs(tf.linalg.eigvalsh(masked))

  block, others = magnitudes(inside), magnitudes(tf.logical_not(inside))
  others = tf.concat([others, tf.repeat(sentinel, k, axis=-1)], axis=-1)  # k of the others, however few there are
  if which == "stiff":
    return tf.reduce_max(block, axis=-1) > tf.math.top_k(others, k).values[:, -1]
  return tf.reduce_min(block, axis=-1) < -tf.math.top_k(-others, k).values[:, -1]


def _ritz(alphas, betas, k, which, tolerance):
  """The `k` wanted pairs of the `m`-step Lanczos relation `H Q_m = Q_{m+1} T̲_m`.

  Args:
    alphas: `[m, N]` diagonal of `T_m`.
    betas: `[m, N]` its off-diagonal, `betas[m - 1]` the entry below `T_m` in `T̲_m`.
    k, which, tolerance: as in `top_eigenpairs`.

  Returns:
    `_Ritz(values [N, k], coefficients [N, m, k] (of the eigenvectors in the basis Q_m), residuals [N, k],
    converged [N, k], finite [N])`, ordered by decreasing `|θ|`.
  """
  tridiagonal, betas, finite = _tridiagonal(tf.transpose(alphas), tf.transpose(betas))  # [N, m, m], [N, m]
  alphas = tf.linalg.diag_part(tridiagonal)
  theta, vectors = tf.linalg.eigh(tridiagonal)  # ascending
  largest = tf.reduce_max(tf.abs(theta), axis=-1)
  if which == "stiff":
    order = tf.argsort(-tf.abs(theta), axis=-1, stable=True)[:, :k]
    values = tf.gather(theta, order, axis=-1, batch_dims=1)
    coefficients = tf.gather(vectors, order, axis=-1, batch_dims=1)
  else:
    last = tf.one_hot(tf.shape(alphas)[-1] - 1, tf.shape(alphas)[-1], dtype=alphas.dtype)  # e_m
    extended = tf.concat([tridiagonal, (betas[:, -1:] * last)[:, tf.newaxis, :]], axis=-2)  # T̲_m, [N, m+1, m]
    _, _, right = tf.linalg.svd(extended)  # singular values descending
    smallest = right[:, :, -k:]  # [N, m, k], minimizing ‖H Q_m y‖ = ‖T̲_m y‖
    projected = tf.linalg.matmul(smallest, tf.linalg.matmul(tridiagonal, smallest), transpose_a=True)
    projected_values, rotation = tf.linalg.eigh(0.5 * (projected + tf.linalg.matrix_transpose(projected)))
    order = tf.argsort(-tf.abs(projected_values), axis=-1, stable=True)
    values = tf.gather(projected_values, order, axis=-1, batch_dims=1)
    coefficients = tf.linalg.matmul(smallest, tf.gather(rotation, order, axis=-1, batch_dims=1))
  # ‖H u − θ u‖ = ‖T̲_m y − θ [y; 0]‖ = sqrt(‖T_m y − θ y‖² + (β_m y_m)²).
  inside = tf.linalg.matmul(tridiagonal, coefficients) - coefficients * values[:, tf.newaxis, :]
  outside = betas[:, -1:] * coefficients[:, -1, :]
  residuals = tf.sqrt(tf.reduce_sum(tf.square(inside), axis=-2) + tf.square(outside))
  converged = tf.logical_and(residuals <= tolerance * largest[:, tf.newaxis], finite[:, tf.newaxis])
  return _Ritz(values, coefficients, residuals, converged, finite)
