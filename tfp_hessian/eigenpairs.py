"""The stiffest or sloppiest eigenpairs of a log-density Hessian: Lanczos on Hessian–vector products, or for the
sloppy pairs with a Krylov space that may have to be all of R^D, shift-and-invert of the Hessian itself.

For large D the `[*batch, D, D]` Hessian of `log_prob_hessian` and its `O(D³)` eigendecomposition are out of reach,
but a few eigenpairs are not: Lanczos needs only products `H q` (`tfp_hessian.log_prob_hvp`) and `O(D·m)` memory per
point for an `m`-dimensional Krylov basis. All points iterate together: each iteration is one product on
`[*batch, D]` (for "sloppy", on `b` vectors per point).

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
  too; but it may be indefinite, and then they are *interior* eigenvalues, resolved only late. At D = 1024 the
  benchmark flows' sloppiest eigenvalues are 1e-8 to 1e-5 of `max|λ|`, inside a bulk of half the spectrum within
  1e-3 of it, and every method with products only that was measured needs most of D products there
  (BENCHMARKS.md, "Sloppy pairs at large D": Lanczos, extracting from its whole Krylov space, 736–1024; MINRES on
  `H`, the inner solve of shift-and-invert, had not reached 1e-8 after 6 D products; a Chebyshev filter separating
  the fifth from the sixth would need a degree of ~1e6). So the sloppy iteration is built for long Krylov spaces:

  *Block* Lanczos takes `b` vectors per point in each product (one batched call, `vectorized_map`): per vector a
  product of 32 costs less than half of a single one, and the basis is read once per block, not per vector.
  With `Q_m = [Q_0 … Q_{s-1}]` (`s` blocks of `b` columns, `m = s b`),

  .. math::

      H Q_m = Q_m T_m + Q_s B_{s-1} E_s^T, \\qquad
      T_m = \\begin{bmatrix} A_0 & B_0^T & & \\\\ B_0 & A_1 & \\ddots & \\\\ & \\ddots & \\ddots & B_{s-2}^T
            \\\\ & & B_{s-2} & A_{s-1} \\end{bmatrix},

  and `‖H u − θ u‖² = ‖T_m y − θ y‖² + ‖B_{s-1} y_{s-1}‖²` for `u = Q_m y`, `y_{s-1}` its last block. The pairs
  nearest zero are the Rayleigh–Ritz pairs of `T_m` of smallest `|θ|`, found by shift-and-invert *of `T_m`*:
  its LU factorization (a fraction of the cost of an eigendecomposition) and a subspace iteration on
  `(T_m − σ)⁻¹`, `σ = 0`, or the middle of the wanted values when they lie together away from zero (the end of a
  definite spectrum). A Ritz value that is spurious has a large residual, and is reported so.

  *The formed Hessian.* Where `max_iterations >= D` (the default up to D = 4096) the iteration may have to go to
  the whole space, and then its `D` products cost what one sweep does (the sweep is their pullback, all at once)
  and reorthogonalizing its basis about what `eigh` does. There the sweep forms `H` instead, in the memory the
  basis would take, and the same shift-and-invert runs on `H` itself (an LU factorization, a third of the flops of
  the tridiagonal reduction `eigh` begins with, and a subspace iteration on `H⁻¹`): at D = 1024 1.4–1.95 times as
  fast as the sweep and `eigh`, where the block iteration was 0.4–0.96 times (BENCHMARKS.md, "Sloppy pairs at large
  D"). Its residuals `‖H u − θ u‖` are computed with `H`; `num_iterations` is then D.

Breakdowns and repeated eigenvalues: when the Krylov space becomes invariant (`β ≈ 0`, or a block `B` without a
new direction), its Ritz pairs are exact and Lanczos goes on from fresh random vectors orthogonal to the basis.
From one start vector Lanczos sees one eigenvector per *distinct* eigenvalue (from a block of `b`, at most `b`
of each), so an exactly repeated eigenvalue (a Gaussian with repeated scales, say) would be found too few times;
after a breakdown the iteration therefore goes on until a completed sequence adds nothing to the wanted set.
Nearly (not exactly) repeated eigenvalues are found in turn, as in any Lanczos code.

Convergence: a pair is converged when its residual `‖H u − θ u‖ ≤ tolerance · max|θ|`, `max|θ|` the largest
`|Ritz value|` of `T_m` (an estimate of `‖H‖₂` from below; for "sloppy", itself estimated from below by power
iteration on `T_m`, which only makes the test stricter). Iteration stops when every pair of every point is
converged, or after `max_iterations` products; the residuals and a `converged` mask are returned, so an
unconverged pair is reported, never passed off. For any eigenvalue `λ` nearest to `θ`, `|θ − λ| ≤ ‖H u − θ u‖`,
so `tolerance` also bounds the eigenvalues' errors relative to `max|θ|`; the eigenvectors' errors also depend on
the gap to the neighbouring eigenvalues (`sin ∠ ≤ residual / gap`).
"""

import collections
import functools

import numpy as np
import tensorflow as tf

from tfp_hessian import compiled, hvp, private_api, sweep
from tfp_hessian.stiff_sloppy import _largest_component_positive

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
# "sloppy": interior eigenvalues near zero need Krylov spaces of 0.7–1.0 D for the benchmark flows' indefinite
# Hessians at D = 1024 (BENCHMARKS.md, "Sloppy pairs at large D"), so the default cap is D up to this many. The
# basis then takes 8 · N · D · cap bytes in float64.
SLOPPY_ITERATIONS = 4096
# "sloppy" with a Krylov cap of D (the default up to D = SLOPPY_ITERATIONS) forms the Hessian by the sweep and takes
# its pairs nearest zero directly (`_formed_nearest_zero`): the Krylov space would have to be about all of R^D,
# whose D products cost what the sweep does, and its reorthogonalization about what `eigh` does (BENCHMARKS.md,
# "Sloppy pairs at large D"). False keeps the block iteration there too.
FORM_HESSIAN = True
# Vectors per point in each batched product of the sloppy iteration: D // BLOCK_DIVISOR, between 1 and MAX_BLOCK.
# Per vector, a product of 32 vectors costs 0.2–0.4x a single one (RealNVP, MAF, D = 1024; about 1x for the
# elementwise + affine flow, whose products are triangular solves), and the basis is read once per block instead of
# once per vector; blocks of 64 were slower overall at D = 1024, and small D (few products) keeps single vectors.
BLOCK_DIVISOR = 32
MAX_BLOCK = 64
# The convergence check (an LU factorization of the projected matrix) runs after 1, 2, … block steps, then each time
# their number has grown by a quarter (at most a quarter more products than needed), or doubled while some point's
# residuals were still more than FAR times its tolerance (interior eigenvalues converge late, then suddenly: at
# D = 1024 the benchmark flows' residuals stay above 1e-6 of max|λ| up to 0.9 D).
CHECK_GROWTH = 4
MAX_CHUNKS = 8  # see `_block_lanczos_nearest_zero`
FAR = 1e4
# Inner subspace iteration on the inverse projected matrix: its width (at least 2k), at most this many iterations,
# until the wanted pairs' residuals within the projected matrix are this fraction of the tolerance.
SUBSPACE = 32
INNER_ITERATIONS = 60
INNER_ITERATIONS_BETWEEN = 6  # at a check before the last (see `_checked`)
INNER_TOLERANCE = 0.1
# The same iteration on the formed Hessian (`_formed_nearest_zero`), which no outer iteration follows.
FORMED_ITERATIONS = 200
# The shift moves to the wanted eigenvalues' middle (at most MAX_RESHIFTS times) where the rate is above this.
RESHIFT_RATE = 0.5
MAX_RESHIFTS = 3
POWER_STEPS = 8  # power iterations per check for max|θ| (warm-started: the stiffest Ritz vector converges first)
# A next block's direction this many times smaller than its largest was amplified by as much on normalization, and
# with it its rounding along the basis: it is orthogonalized once more.
REPAIR = 1e-3

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
  num_iterations: scalar int32, the Krylov dimension reached (= the number of Hessian–vector products per point;
    "sloppy" takes them `b` at a time, one batched call each); D where "sloppy" formed the Hessian.
"""


@compiled.when_eager
def top_eigenpairs(distribution, z, k, which="stiff", tolerance=None, max_iterations=None, seed=(0, 0),
                   name="top_eigenpairs", **kwargs):
  """The `k` stiffest or sloppiest eigenpairs of `∇²_z log q(z)` per point, by Lanczos on Hessian–vector products.

  Memory is `O(D · max_iterations)` per point (for "sloppy" also the projected matrix, `max_iterations²`); "stiff",
  and "sloppy" with `max_iterations < D`, never form the `D × D` Hessian. "sloppy" with `max_iterations >= D`
  (its default up to D = 4096), where the Krylov space may have to be all of R^D, forms it by the sweep instead (in
  the memory the basis would take) and takes its pairs nearest zero directly (see the module docstring). Works
  eagerly (as one compiled function, traced once per flow and input signature) and inside `tf.function`. Events of
  any structure are taken over their flat event (`tfp_hessian.flatten_event`), of size `D`.

  Args:
    distribution: as in `tfp_hessian.log_prob_hessian`.
    z: points, as `distribution.log_prob` takes them (`[*batch, D]` for vector events).
    k: number of eigenpairs, `1 <= k <= D`.
    which: "stiff" (largest `|λ|`) or "sloppy" (smallest `|λ|`: the formed Hessian where `max_iterations >= D`,
      else block Lanczos, `b = D // 32` vectors per product between 1 and 64; see the module docstring for
      indefinite Hessians).
    tolerance: relative residual tolerance, `‖H u − λ u‖ <= tolerance · max|θ|`; default 1e-10 (float64),
      1e-5 (float32).
    max_iterations: largest Krylov dimension, `k <= max_iterations`; capped at D, where the Krylov space is the
      whole space and the result exact up to rounding. Default `min(D, max(100, 20 k))` for "stiff" and
      `min(D, max(4096, 20 k))` for "sloppy", whose interior eigenvalues may need all of it: there the Hessian is
      formed, `8 D²` bytes per point in float64 (as the basis would take); set it lower for matrix-free Lanczos.
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
      max_iterations = max(MIN_ITERATIONS if which == "stiff" else SLOPPY_ITERATIONS, ITERATIONS_PER_PAIR * k)
    if not isinstance(max_iterations, (int, np.integer)) or isinstance(max_iterations, bool) or max_iterations < k:
      raise ValueError(f"`max_iterations` must be an integer >= k = {k}; got {max_iterations!r}.")
    krylov = min(int(max_iterations), size)
    iteration = functools.partial(_eigenpairs, distribution, size=size, dtype=dtype, k=k, which=which,
                                  tolerance=float(tolerance), krylov=krylov, seed=seed)
    if which == "sloppy" and tf.executing_eagerly():
      # Op by op the block iteration dispatches thousands of small ops (minutes at D = 1024). One product runs
      # eagerly, so that whatever the flow builds on first use is built outside a trace (see `compiled`) and a
      # failing `validate_args` check says eagerly which bijector failed; the iteration then runs as a function.
      hvp.log_prob_hvp(distribution, z, tf.zeros([size], dtype), **kwargs)
      return tf.function(iteration, autograph=False)(z, kwargs)
    return iteration(z, kwargs)


def _eigenpairs(distribution, z, kwargs, size, dtype, k, which, tolerance, krylov, seed):
  """`top_eigenpairs` after its checks: `Eigenpairs` of the points `z` (validated arguments)."""
  if which == "sloppy" and krylov == size and FORM_HESSIAN:
    return _formed_nearest_zero(distribution, z, kwargs, size, dtype, k, tolerance, seed)
  # The gradient is recorded once; each iteration is then one backward pass through it.
  z, hessian_times = hvp.hessian_operator(distribution, z, **kwargs)
  shape = tf.shape(z)
  num_points = tf.reduce_prod(shape[:-1])

  def matvec(q):  # [N, D] -> [N, D]
    return tf.reshape(hessian_times(tf.reshape(q, shape)), [num_points, size])

  if which == "stiff":
    pairs = _lanczos(matvec, num_points, size, dtype, k, tolerance, krylov, seed)
  else:
    pairs = _block_lanczos_nearest_zero(matvec, num_points, size, dtype, k, tolerance, krylov,
                                        _block_size(size, krylov), seed)
  return _unflattened(pairs, shape[:-1], z.shape[:-1], size, k)


def _pairs(values, vectors, residuals, converged, finite, num_iterations):
  """`Eigenpairs` of flat points (`[N, k]`, `[N, D, k]`), each eigenvector's largest component positive, NaN at
  the points whose Hessian is not `finite` (`converged` is False there)."""
  nan = tf.constant(np.nan, values.dtype)
  return Eigenpairs(tf.where(finite[:, tf.newaxis], values, nan),
                    tf.where(finite[:, tf.newaxis, tf.newaxis], _largest_component_positive(vectors), nan),
                    tf.where(finite[:, tf.newaxis], residuals, nan), converged, num_iterations)


def _unflattened(pairs, batch, static, size, k):
  """`Eigenpairs` of flat points reshaped to the points' batch shape (`batch` as a tensor, `static` as known)."""

  def unflatten(x, tail):
    return tf.ensure_shape(tf.reshape(x, tf.concat([batch, tail], 0)), static.concatenate(tail))

  return Eigenpairs(unflatten(pairs.eigenvalues, [k]), unflatten(pairs.eigenvectors, [size, k]),
                    unflatten(pairs.residuals, [k]), unflatten(pairs.converged, [k]), pairs.num_iterations)


def _formed_nearest_zero(distribution, z, kwargs, size, dtype, k, tolerance, seed):
  """The sloppy pairs from the Hessian itself: the sweep, then shift-and-invert of `H` (`_nearest_zero`).

  Where the Krylov space may have to be all of R^D, the sweep forms `H` for about the cost of the `D` products the
  iteration would take (it is their pullback, all at once), without reorthogonalizing a basis that grows to `D`,
  and in the memory of that basis. `_nearest_zero` then takes the pairs nearest zero of `H` as it does of `T_m`:
  an LU factorization (a third of the flops of the tridiagonal reduction that `eigh` starts with) and a subspace
  iteration on `H⁻¹`, checked by the residuals `‖H u − θ u‖`. A pair left unconverged is reported so.
  """
  hessian = sweep.log_prob_and_derivatives(distribution, z, **kwargs).hessian  # [*batch, D, D]
  batch, static = tf.shape(hessian)[:-2], hessian.shape[:-2]
  hessian = tf.reshape(hessian, [-1, size, size])
  num_points = tf.shape(hessian)[0]
  width = min(size, max(2 * k, SUBSPACE))
  ritz, _, _, _ = _nearest_zero(
      hessian, lambda x: tf.linalg.matmul(hessian, x), tf.zeros([num_points, 1, size], dtype), k, tolerance,
      np.finfo(dtype.as_numpy_dtype).eps, tf.zeros([num_points, size, width], dtype),
      tf.zeros([num_points, size], dtype), tf.zeros([num_points], dtype), FORMED_ITERATIONS,
      tf.convert_to_tensor(seed, tf.int32))
  pairs = _pairs(ritz.values, ritz.coefficients, ritz.residuals, ritz.converged, ritz.finite, tf.constant(size))
  return _unflattened(pairs, batch, static, size, k)


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


def _lanczos(matvec, num_points, size, dtype, k, tolerance, krylov, seed):
  """Batched Lanczos with full reorthogonalization, the stiff pairs; `Eigenpairs` flattened to `[N, ...]`."""
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
            alphas[:dimension], betas[:dimension], block_start, k, "stiff"), pending),
        lambda: pending)
    block_start = tf.where(breakdown, dimension, block_start)
    # The small eigenproblems cost O(j³) per point: checked every step at first, then every ~j/8 steps.
    check = tf.logical_and(dimension >= k, tf.equal(dimension % tf.maximum(1, dimension // 8), 0))
    done = tf.cond(
        check,
        lambda: _settled(_ritz(alphas[:dimension], betas[:dimension], k, tolerance)),
        lambda: done)
    done = tf.logical_and(done, tf.logical_not(pending))
    return dimension, basis, alphas, betas, done, block_start, pending

  dimension, basis, alphas, betas, _, _, _ = tf.while_loop(
      condition, step, (tf.constant(0), basis, alphas, betas, done, block_start, pending),
      maximum_iterations=krylov)
  ritz = _ritz(alphas[:dimension], betas[:dimension], k, tolerance)
  vectors = tf.einsum("mnd,nmk->ndk", basis[:dimension], ritz.coefficients)
  return _pairs(ritz.values, vectors, ritz.residuals, ritz.converged, ritz.finite, dimension)


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
  tridiagonal, _, _ = _tridiagonal(tf.transpose(alphas), tf.transpose(betas))
  return _invariant_block_is_wanted(tridiagonal, block_start, k, which)


def _invariant_block_is_wanted(tridiagonal, block_start, k, which):
  """`_completed_sequence_is_wanted` for a projected matrix `[N, m, m]` split at `block_start` (dense, finite)."""
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


def _ritz(alphas, betas, k, tolerance):
  """The `k` stiffest pairs of the `m`-step Lanczos relation `H Q_m = Q_{m+1} T̲_m`.

  Args:
    alphas: `[m, N]` diagonal of `T_m`.
    betas: `[m, N]` its off-diagonal, `betas[m - 1]` the entry below `T_m` in `T̲_m`.
    k, tolerance: as in `top_eigenpairs`.

  Returns:
    `_Ritz(values [N, k], coefficients [N, m, k] (of the eigenvectors in the basis Q_m), residuals [N, k],
    converged [N, k], finite [N])`, ordered by decreasing `|θ|`.
  """
  tridiagonal, betas, finite = _tridiagonal(tf.transpose(alphas), tf.transpose(betas))  # [N, m, m], [N, m]
  theta, vectors = tf.linalg.eigh(tridiagonal)  # ascending
  largest = tf.reduce_max(tf.abs(theta), axis=-1)
  order = tf.argsort(-tf.abs(theta), axis=-1, stable=True)[:, :k]
  values = tf.gather(theta, order, axis=-1, batch_dims=1)
  coefficients = tf.gather(vectors, order, axis=-1, batch_dims=1)
  # ‖H u − θ u‖ = ‖T̲_m y − θ [y; 0]‖ = sqrt(‖T_m y − θ y‖² + (β_m y_m)²).
  inside = tf.linalg.matmul(tridiagonal, coefficients) - coefficients * values[:, tf.newaxis, :]
  outside = betas[:, -1:] * coefficients[:, -1, :]
  residuals = tf.sqrt(tf.reduce_sum(tf.square(inside), axis=-2) + tf.square(outside))
  converged = tf.logical_and(residuals <= tolerance * largest[:, tf.newaxis], finite[:, tf.newaxis])
  return _Ritz(values, coefficients, residuals, converged, finite)


# ---------------------------------------------------------------------------------------------------------------
# Sloppy pairs: block Lanczos, and the Ritz pairs nearest zero by shift-and-invert of the projected matrix.


def _block_size(size, krylov):
  """Vectors per point in each product of the sloppy iteration (see `BLOCK_DIVISOR`)."""
  return max(1, min(MAX_BLOCK, size // BLOCK_DIVISOR, krylov))


_BlockState = collections.namedtuple("_BlockState", [
    "chunks", "current", "previous", "diagonal", "below", "norm", "done", "pending", "block_start",
    "next_check", "values", "coefficients", "residuals", "converged", "finite", "subspace", "power", "scale"])


def _block_lanczos_nearest_zero(matvec, num_points, size, dtype, k, tolerance, krylov, block, seed):
  """Block Lanczos with full reorthogonalization, the sloppy pairs; `Eigenpairs` flattened to `[N, ...]`.

  Args:
    matvec: `[N, D] -> [N, D]`, one Hessian–vector product per point.
    num_points, size, dtype: `N`, `D` and the dtype.
    k, tolerance: as in `top_eigenpairs`.
    krylov: the largest Krylov dimension, `k <= krylov <= D`.
    block: `b`, vectors per point in each product; the last block step is cut to `krylov`.
    seed: stateless seed of the random start block and of the fresh directions after a breakdown.
  """
  seed = tf.convert_to_tensor(seed, tf.int32)
  eps = np.finfo(dtype.as_numpy_dtype).eps
  steps = -(-krylov // block)
  # The basis is kept in chunks of about √steps blocks (at most MAX_CHUNKS), the elements of a TensorArray: updating
  # a tensor in a loop copies all of it, so a step copies one chunk, not the basis, and the projections read only the
  # chunks already written.
  chunk = max(1, int(round(np.sqrt(steps + 1))), -(-(steps + 1) // MAX_CHUNKS))
  num_chunks = -(-(steps + 1) // chunk)  # the block after the last step included
  capacity = num_chunks * chunk * block
  width = min(krylov, max(2 * k, SUBSPACE))

  def products(q):  # [N, D, b] -> [N, D, b]: the b products of every point as one batched call
    if block == 1:
      return matvec(q[:, :, 0])[:, :, tf.newaxis]
    return tf.transpose(tf.vectorized_map(matvec, tf.transpose(q, [2, 0, 1])), [1, 2, 0])

  start, _ = tf.linalg.qr(tf.random.stateless_normal([num_points, size, block], seed, dtype=dtype))
  zeros = lambda *shape, dtype=dtype: tf.zeros(shape, dtype)
  state = _BlockState(
      chunks=_put_block(tf.TensorArray(dtype, size=num_chunks, element_shape=[None, chunk * block, size],
                                       clear_after_read=False).unstack(
                                           zeros(num_chunks, num_points, chunk * block, size)), 0, start, chunk),
      current=start, previous=zeros(num_points, size, block),
      diagonal=zeros(steps, num_points, block, block), below=zeros(steps, num_points, block, block),
      norm=zeros(num_points), done=zeros(num_points, dtype=tf.bool), pending=zeros(num_points, dtype=tf.bool),
      block_start=zeros(num_points, dtype=tf.int32), next_check=tf.constant(1),
      values=zeros(num_points, k), coefficients=zeros(num_points, capacity, k), residuals=zeros(num_points, k),
      converged=zeros(num_points, k, dtype=tf.bool), finite=tf.ones([num_points], tf.bool),
      subspace=zeros(num_points, capacity, width), power=zeros(num_points, capacity), scale=zeros(num_points))

  def condition(i, state):
    return tf.logical_and(i < steps, tf.logical_not(tf.reduce_all(state.done)))

  def step(i, state):
    dimension = tf.minimum((i + 1) * block, krylov)
    # The last step may take fewer than b columns: the others are zero, and so is everything they touch.
    mask = tf.cast(tf.range(block) < dimension - i * block, dtype)
    q = state.current * mask
    hq = products(q)
    norm = tf.maximum(state.norm, tf.reduce_max(tf.norm(hq, axis=-2), axis=-1))  # ‖H‖ from below
    diagonal = tf.linalg.matmul(q, hq, transpose_a=True)
    diagonal = 0.5 * (diagonal + tf.linalg.matrix_transpose(diagonal))
    previous = tf.cast(i > 0, dtype) * state.below[tf.maximum(i - 1, 0)]  # B_{i-1} = Q_iᵀ W_{i-1}
    w = hq - tf.linalg.matmul(q, diagonal) - tf.linalg.matmul(state.previous, previous, transpose_b=True)
    bases = (state.chunks, i // chunk + 1)  # the chunks holding blocks 0 … i
    following, below, deficient = _next_block(_reorthogonalized(w * mask, bases), bases, norm, eps,
                                              seed + tf.stack([1, i + 1]))
    state = state._replace(
        chunks=_put_block(state.chunks, i + 1, following, chunk), current=following, previous=state.current,
        norm=norm,
        diagonal=tf.tensor_scatter_nd_update(state.diagonal, [[i]], diagonal[tf.newaxis]),
        below=tf.tensor_scatter_nd_update(state.below, [[i]], below[tf.newaxis]))
    # Breakdown (no new direction at all): the Krylov space is invariant, its Ritz pairs exact, and the next block
    # starts afresh; as in `_lanczos`, a multiple eigenvalue may then have copies still unseen. A partial one (some
    # directions) cannot be told apart from that, so it keeps the point going until a breakdown says otherwise.
    going_on = dimension < krylov
    full = tf.logical_and(tf.reduce_all(deficient, axis=-1), going_on)
    partial = tf.logical_and(tf.logical_and(tf.reduce_any(deficient, axis=-1), tf.logical_not(full)), going_on)
    pending = tf.cond(
        tf.reduce_any(full),
        lambda: tf.where(full, _invariant_block_is_wanted(
            _finite_or_zero(_block_tridiagonal(state.diagonal[:i + 1], state.below[:i + 1])[:, :dimension,
                                                                                             :dimension]),
            state.block_start, k, "sloppy"), state.pending),
        lambda: state.pending)
    state = state._replace(pending=tf.logical_or(pending, partial),
                           block_start=tf.where(full, dimension, state.block_start))
    last = tf.logical_not(going_on)
    check = tf.logical_and(dimension >= k, tf.logical_or(i + 1 >= state.next_check, last))
    state = tf.cond(check, lambda: _checked(state, i, dimension, block, k, tolerance, eps, last, seed),
                    lambda: state)
    far = tf.reduce_any(state.residuals > FAR * tolerance * state.scale[:, tf.newaxis])
    growth = tf.where(far, i + 1, tf.maximum(1, (i + 1) // CHECK_GROWTH))
    return i + 1, state._replace(
        next_check=tf.where(check, i + 1 + growth, state.next_check),
        done=tf.logical_and(state.done, tf.logical_not(state.pending)))

  steps_taken, state = tf.while_loop(condition, step, (tf.constant(0), state), maximum_iterations=steps)
  # The loop ends on a check: every point settled, or the last block step (checked whatever the schedule).
  basis = tf.reshape(tf.transpose(state.chunks.stack(), [1, 0, 2, 3]), [num_points, capacity, size])
  vectors = tf.einsum("nmd,nmk->ndk", basis, state.coefficients)
  return _pairs(state.values, vectors, state.residuals, state.converged, state.finite,
                tf.minimum(steps_taken * block, krylov))


def _checked(state, i, dimension, block, k, tolerance, eps, last, seed):
  """`state` with the Ritz pairs nearest zero of the first `dimension` Krylov directions, and `done` from them."""
  capacity = state.coefficients.shape[1]
  diagonal, below = state.diagonal[:i + 1], state.below[:i + 1]
  # ‖H u − θ u‖² = ‖T_m y − θ y‖² + ‖B_i y_i‖², y_i the last block of y: the rows of T̲_m below T_m.
  columns = dimension - i * block
  outside = tf.pad(state.below[i][:, :, :columns], [[0, 0], [0, 0], [i * block, 0]])  # [N, b, m]
  width = state.subspace.shape[-1]
  # Between checks the inner iteration only has to say whether the pairs have converged: a pair it leaves short of
  # its tolerance is reported as not converged (never the other way), the outer iteration goes on, and the next
  # check starts from this one's subspace.
  iterations = tf.where(last, INNER_ITERATIONS, INNER_ITERATIONS_BETWEEN)
  ritz, subspace, power, scale = _nearest_zero(
      _block_tridiagonal(diagonal, below)[:, :dimension, :dimension],
      lambda x: _block_tridiagonal_matmul(diagonal, below, x), outside, k, tolerance, eps,
      state.subspace[:, :dimension, :tf.minimum(width, dimension)], state.power[:, :dimension], state.scale,
      iterations, seed + tf.stack([2, i]))
  checked = state._replace(
      values=ritz.values, coefficients=tf.pad(ritz.coefficients, [[0, 0], [0, capacity - dimension], [0, 0]]),
      residuals=ritz.residuals, converged=ritz.converged, finite=ritz.finite,
      subspace=tf.pad(subspace, [[0, 0], [0, capacity - dimension], [0, width - tf.shape(subspace)[-1]]]),
      power=tf.pad(power, [[0, 0], [0, capacity - dimension]]), scale=scale, done=_settled(ritz))
  return tf.nest.map_structure(lambda new, old: new if isinstance(new, tf.TensorArray) else tf.ensure_shape(
      new, old.shape), checked, state)


def _nearest_zero(tridiagonal, times, outside, k, tolerance, eps, subspace, power, scale, iterations, seed):
  """The `k` Ritz pairs of smallest `|θ|` of a projected matrix `T [N, m, m]`, by subspace iteration on `(T − σ)⁻¹`.

  Subspace iteration of width `p` with a Rayleigh–Ritz step on `T` after each solve converges to the `p` eigenvalues
  of `T` nearest `σ`, the `i`-th at the rate `|θ_i − σ| / |θ_{p+1} − σ|` per solve. It starts at `σ = 0` (shifted by
  `ε · max|θ|`, off an exactly zero Ritz value): right for interior eigenvalues around zero. When the wanted ones lie
  away from zero, close together against their distance (the sloppy end of a definite Hessian), that rate is near 1,
  and `σ` moves to the middle of their current estimates (a new LU): the `k` eigenvalues nearest zero are the ones in
  `[min θ, max θ]` of the wanted, so they stay the nearest the new `σ`, now at a distance of their spread.

  Args:
    tridiagonal: `T_m [N, m, m]`, symmetric (block tridiagonal).
    times: `x [N, m, p] -> T_m x`, the same product, in `O(m b p)`.
    outside: `[N, b, m]`, the rows of `T̲_m` below `T_m`.
    k, tolerance, eps: as in `top_eigenpairs`, and the dtype's machine epsilon.
    subspace: `[N, m, p]` previous subspace (rows and columns beyond its size zero), or zeros.
    power: `[N, m]` previous estimate of the stiffest Ritz vector, or zeros.
    scale: `[N]` previous `max|θ|` (it only grows with `m`, by interlacing).
    iterations: scalar int32, the most solves.
    seed: stateless seed for the start of new subspace columns.

  Returns:
    `(_Ritz ordered by decreasing |θ| (the sloppiest last), subspace, power, scale)`; `max|θ|` is estimated from
    below (power iteration), so `converged` never claims more than `residual <= tolerance · max|θ|`.
  """
  dtype = tridiagonal.dtype
  finite = tf.logical_and(tf.reduce_all(tf.math.is_finite(tridiagonal), axis=[-2, -1]),
                          tf.reduce_all(tf.math.is_finite(outside), axis=[-2, -1]))
  size = tf.shape(tridiagonal)[-1]
  identity = tf.eye(size, batch_shape=[1], dtype=dtype)
  # Points whose products were not finite get the identity: harmless, and reported as not finite by the caller.
  tridiagonal = tf.where(finite[:, tf.newaxis, tf.newaxis], tridiagonal, identity)
  outside = tf.where(finite[:, tf.newaxis, tf.newaxis], outside, tf.zeros_like(outside))
  keep = lambda x: tf.where(finite[:, tf.newaxis, tf.newaxis], x, tf.zeros_like(x))
  product = lambda x: tf.where(finite[:, tf.newaxis, tf.newaxis], times(keep(x)), x)  # T x, the identity's at those

  fresh = lambda shape, i: tf.random.stateless_normal(shape, seed + tf.stack([0, i]), dtype=dtype)
  power = tf.where(tf.reduce_any(tf.not_equal(power, 0), -1, keepdims=True), power, fresh(tf.shape(power), 0))
  power = tf.while_loop(lambda i, _: i < POWER_STEPS, lambda i, v: (i + 1, _normalize_columns(product(v))),
                        (tf.constant(0), power[:, :, tf.newaxis]))[1]
  scale = tf.maximum(scale, tf.norm(product(power)[:, :, 0], axis=-1))
  offset = eps * tf.where(scale > 0, scale, tf.ones_like(scale))
  target = INNER_TOLERANCE * tolerance * scale

  def factored(shift):
    return tf.linalg.lu(tridiagonal - (shift + offset)[:, tf.newaxis, tf.newaxis] * identity)

  def solve(factors, x):  # (T - σ) x' = x
    lu, permutation = factors
    lower = tf.linalg.set_diag(lu, tf.ones_like(lu[:, 0]))  # L has a unit diagonal, not stored
    y = tf.gather(x, permutation, axis=-2, batch_dims=1)
    y = tf.linalg.triangular_solve(lu, tf.linalg.triangular_solve(lower, y, lower=True), lower=False)
    # An exactly singular T − σ (σ on an eigenvalue to the last bit) keeps the subspace rather than turn it to NaN.
    return tf.where(tf.reduce_all(tf.math.is_finite(y), axis=[-2, -1], keepdims=True), y, x)

  def iterate(i, subspace, shift, factors, shifted, theta, inside):
    del theta, inside
    subspace, _ = tf.linalg.qr(solve(factors, subspace))
    image = product(subspace)
    projected = tf.linalg.matmul(subspace, image, transpose_a=True)
    theta, rotation = tf.linalg.eigh(0.5 * (projected + tf.linalg.matrix_transpose(projected)))
    order = tf.argsort(tf.abs(theta), axis=-1, stable=True)  # nearest zero first
    theta = tf.gather(theta, order, axis=-1, batch_dims=1)
    rotation = tf.gather(rotation, order, axis=-1, batch_dims=1)
    subspace, image = tf.linalg.matmul(subspace, rotation), tf.linalg.matmul(image, rotation)
    inside = tf.ensure_shape(tf.norm(image[:, :, :k] - subspace[:, :, :k] * theta[:, tf.newaxis, :k], axis=-2),
                             [None, k])
    # The rate now, and at the middle of the wanted estimates (the subspace's farthest value bounds θ_{p+1} − σ).
    settled = tf.logical_or(tf.reduce_all(inside <= target[:, tf.newaxis], axis=-1), tf.logical_not(finite))
    wanted = theta[:, :k]
    middle = 0.5 * (tf.reduce_min(wanted, axis=-1) + tf.reduce_max(wanted, axis=-1))
    rate = lambda at: (tf.reduce_max(tf.abs(wanted - at[:, tf.newaxis]), axis=-1)
                       / tf.reduce_max(tf.abs(theta - at[:, tf.newaxis]), axis=-1))
    move = tf.logical_and(tf.logical_not(settled), tf.logical_and(rate(shift) > RESHIFT_RATE,
                                                                  rate(middle) < 0.5 * rate(shift)))
    reshift = tf.logical_and(tf.reduce_any(move), shifted < MAX_RESHIFTS)
    shift = tf.where(tf.logical_and(move, reshift), middle, shift)
    factors = tf.cond(reshift, lambda: factored(shift), lambda: factors)
    return i + 1, subspace, shift, factors, shifted + tf.cast(reshift, tf.int32), theta, inside

  def unsettled(i, subspace, shift, factors, shifted, theta, inside):
    del subspace, shift, factors, shifted, theta
    settled = tf.logical_or(tf.reduce_all(inside <= target[:, tf.newaxis], axis=-1), tf.logical_not(finite))
    return tf.logical_and(i < tf.maximum(iterations, 1), tf.logical_not(tf.reduce_all(settled)))

  used = tf.reduce_any(tf.not_equal(subspace, 0), axis=-2, keepdims=True)
  subspace, _ = tf.linalg.qr(tf.where(used, subspace, fresh(tf.shape(subspace), 1)))
  shift = tf.zeros_like(scale)
  infinite = tf.fill(tf.stack([tf.shape(scale)[0], k]), tf.constant(np.inf, dtype))  # unsettled: no solve yet
  start = (tf.constant(0), subspace, shift, factored(shift), tf.constant(0), tf.zeros_like(subspace[:, 0]),
           infinite)
  _, subspace, _, _, _, theta, inside = tf.while_loop(unsettled, iterate, start, maximum_iterations=INNER_ITERATIONS)
  wanted = tf.reverse(subspace[:, :, :k], axis=[-1])  # by decreasing |θ|, the sloppiest last
  values = tf.reverse(theta[:, :k], axis=[-1])
  inside = tf.reverse(inside, axis=[-1])
  residuals = tf.sqrt(tf.square(inside) + tf.reduce_sum(tf.square(tf.linalg.matmul(outside, wanted)), axis=-2))
  converged = tf.logical_and(residuals <= tolerance * scale[:, tf.newaxis], finite[:, tf.newaxis])
  return _Ritz(values, wanted, residuals, converged, finite), subspace, power[:, :, 0], scale


def _normalize_columns(x):
  return tf.math.divide_no_nan(x, tf.norm(x, axis=-2, keepdims=True))


def _next_block(w, bases, norm, eps, seed):
  """`(Q_{i+1} [N, D, b], B_i [N, b, b], deficient [N, b])` with `W = Q_{i+1} B_i` up to the deficient directions.

  Rank-revealing: `W = Q R` (Householder), `R = U Σ Vᵀ`; the directions with `σ <= BREAKDOWN · ε · ‖H‖` are no
  directions (the Krylov space is invariant along them) and are replaced by fresh random ones, orthogonal to the
  basis. `B_i = Q_{i+1}ᵀ W` is taken after any replacement, so the relation holds with what is kept.
  """
  householder, triangle = tf.linalg.qr(w)
  singular, left, _ = tf.linalg.svd(triangle)  # descending
  following = tf.linalg.matmul(householder, left)
  deficient = singular <= BREAKDOWN * eps * norm[:, tf.newaxis]
  amplified = singular < REPAIR * singular[:, :1]

  def repaired():
    fresh = tf.random.stateless_normal(tf.shape(following), seed, dtype=following.dtype)
    replaced = tf.where(deficient[:, tf.newaxis, :], fresh, following)
    replaced = _project_out(_project_out(replaced, bases), bases)
    return tf.linalg.qr(replaced)[0]

  following = tf.cond(tf.reduce_any(tf.logical_or(deficient, amplified)), repaired, lambda: following)
  return following, tf.linalg.matmul(following, w, transpose_a=True), deficient


def _project_out(w, bases):
  """`w [N, D, b]` minus its projection on the basis (classical Gram–Schmidt, one pass).

  Args:
    w: `[N, D, b]`.
    bases: `(chunks, filled)`: the basis as a TensorArray of chunks `[N, r, D]` of orthonormal (or zero) rows, of
      which the first `filled` (a scalar tensor) hold any; the others are not read.
  """
  chunks, filled = bases

  def add(j, projection):  # `Qᵀ Q w` as `(C Q)ᵀ`, `C = wᵀ Qᵀ`: the products with Q transposed took twice as long
    chunk = chunks.read(j)
    coefficients = tf.linalg.matmul(w, chunk, transpose_a=True, transpose_b=True)  # [N, b, r]
    return j + 1, projection + tf.linalg.matrix_transpose(tf.linalg.matmul(coefficients, chunk))

  _, projection = tf.while_loop(lambda j, _: j < filled, add, (tf.constant(0), tf.zeros_like(w)))
  return w - projection


def _reorthogonalized(w, bases):
  """`w` orthogonal to the basis to working precision: one pass, and a second where it cancelled much of `w`.

  After the local three-term subtraction `w` has only rounding along the basis, and one classical Gram–Schmidt pass
  removes it; where the pass shrinks a column below `1/√2` of its norm, that column was mostly along the basis and a
  second pass is needed (Daniel, Gragg, Kaufman & Stewart 1976).
  """
  before = tf.norm(w, axis=-2)
  w = _project_out(w, bases)
  cancelled = tf.reduce_any(tf.norm(w, axis=-2) < before / np.sqrt(2.))
  return tf.cond(cancelled, lambda: _project_out(w, bases), lambda: w)


def _finite_or_zero(matrices):
  """`[N, m, m]` with the points that hold a non-finite entry zeroed (their eigenvalues are not wanted anyway)."""
  finite = tf.reduce_all(tf.math.is_finite(matrices), axis=[-2, -1], keepdims=True)
  return tf.where(finite, matrices, tf.zeros_like(matrices))


def _put_block(chunks, index, q, chunk):
  """The basis `chunks` with block `index` set to the columns of `q [N, D, b]` (only its chunk is rewritten)."""
  width = q.shape[-1]
  rows = tf.linalg.matrix_transpose(q)
  indices = tf.stack(tf.meshgrid(tf.range(tf.shape(rows)[0]), (index % chunk) * width + tf.range(width),
                                 indexing="ij"), axis=-1)  # [N, b, 2]
  return chunks.write(index // chunk, tf.tensor_scatter_nd_update(chunks.read(index // chunk), indices, rows))


def _block_tridiagonal(diagonal, below):
  """`T [N, s b, s b]` from its diagonal blocks `diagonal [s, N, b, b]` and the blocks below them `below` (the last
  below `T`, unused): `T[j, j] = A_j`, `T[j + 1, j] = B_j`, `T[j, j + 1] = B_jᵀ`."""
  steps = tf.shape(diagonal)[0]
  width = diagonal.shape[-1]
  diagonal, below = tf.transpose(diagonal, [1, 0, 2, 3]), tf.transpose(below, [1, 0, 2, 3])
  same = tf.eye(steps, dtype=diagonal.dtype)
  next_ = tf.pad(tf.eye(steps - 1, dtype=diagonal.dtype), [[1, 0], [0, 1]])  # [j + 1, j]
  dense = (tf.einsum("st,nsac->nsatc", same, diagonal) + tf.einsum("st,ntac->nsatc", next_, below)
           + tf.einsum("ts,nsca->nsatc", next_, below))
  return tf.reshape(dense, [tf.shape(dense)[0], steps * width, steps * width])


def _block_tridiagonal_matmul(diagonal, below, x):
  """`T x` for `T` as in `_block_tridiagonal` and `x [N, m, p]`, `m <= s b` (the rows of `T` beyond `m` unused)."""
  steps, width = tf.shape(diagonal)[0], diagonal.shape[-1]
  size = tf.shape(x)[-2]
  x = tf.pad(x, [[0, 0], [0, steps * width - size], [0, 0]])
  x = tf.reshape(x, [tf.shape(x)[0], steps, width, tf.shape(x)[-1]])  # [N, s, b, p]
  diagonal, below = tf.transpose(diagonal, [1, 0, 2, 3]), tf.transpose(below, [1, 0, 2, 3])
  y = (tf.linalg.matmul(diagonal, x)
       + tf.pad(tf.linalg.matmul(below[:, :-1], x[:, :-1]), [[0, 0], [1, 0], [0, 0], [0, 0]])
       + tf.pad(tf.linalg.matmul(below[:, :-1], x[:, 1:], transpose_a=True), [[0, 0], [0, 1], [0, 0], [0, 0]]))
  return tf.reshape(y, [tf.shape(y)[0], steps * width, tf.shape(y)[-1]])[:, :size]
