"""`tfp_hessian.top_eigenpairs` (Lanczos on Hessian–vector products) against `tfp_hessian.spectrum` of the dense sweep.

The flows have event size `D = 24`, more than the iterations the stiff pairs need, so Lanczos stops on its own
convergence test there; the sloppy pairs of indefinite Hessians are interior eigenvalues, which Lanczos resolves
only when the Krylov space is (nearly) all of R^D.
"""

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_probability as tfp

import tfp_hessian
from tfp_hessian import eigenpairs as eigenpairs_lib

from cases import BIJECTORS, DIM, DTYPES, RTOL, _made, _real_nvp_dense, flow_and_points, random_base

tfb, tfd = tfp.bijectors, tfp.distributions

D = 24
K = 3


def _tril(rng, dtype):
  return tf.constant(np.tril(rng.normal(size=(D, D)) * 0.3, -1) + np.diag(rng.uniform(0.5, 2., D)), dtype)


def _elementwise_affine(dtype, rng):
  return tfb.Chain([tfb.Shift(tf.constant(rng.normal(size=D), dtype)),
                    tfb.SinhArcsinh(tf.constant(rng.uniform(-1., 1., D), dtype),
                                    tf.constant(rng.uniform(0.6, 1.6, D), dtype)),
                    tfb.ScaleMatvecTriL(_tril(rng, dtype))])


def _real_nvp(dtype, rng):
  return tfb.Chain([_real_nvp_dense(dtype, rng, dim=D), tfb.Permute(rng.permutation(D)),
                    _real_nvp_dense(dtype, rng, dim=D)])


def _maf(dtype, rng):
  return tfb.Chain([tfb.MaskedAutoregressiveFlow(_made(dtype, rng, dim=D)), tfb.ScaleMatvecTriL(_tril(rng, dtype))])


# The Hessians of these flows at the sampled points are indefinite (asserted in the sloppy test).
FLOWS = {"elementwise+affine": _elementwise_affine, "RealNVP": _real_nvp, "MAF": _maf}


def _flow_and_points(name, dtype, num_points=3, seed=0):
  rng = np.random.default_rng(seed)
  flow = tfd.TransformedDistribution(random_base(dtype, rng, dim=D), FLOWS[name](dtype, rng))
  return flow, tf.constant(flow.sample(num_points, seed=(1, seed)).numpy())


def _gaussian(dtype, scales):
  """`N(0, diag(scales²))`: Hessian `-diag(1/scales²)`, a known spectrum."""
  return tfd.MultivariateNormalDiag(tf.zeros(len(scales), dtype), tf.constant(scales, dtype))


def _assert_pairs_match(pairs, hessian, which, rtol):
  """Eigenvalues, residuals, eigenvectors (within the Davis–Kahan bound of their gap) and sign convention."""
  hessian = np.asarray(hessian, np.float64)
  reference = tfp_hessian.spectrum(hessian)
  values, vectors = np.asarray(reference.eigenvalues), np.asarray(reference.eigenvectors)
  k = pairs.eigenvalues.shape[-1]
  wanted = slice(0, k) if which == "stiff" else slice(values.shape[-1] - k, None)
  scale = np.max(np.abs(values), axis=-1, keepdims=True)
  got_values = np.asarray(pairs.eigenvalues, np.float64)
  got_vectors = np.asarray(pairs.eigenvectors, np.float64)
  assert np.all(np.asarray(pairs.converged)), f"not converged: residuals {pairs.residuals}"
  error = np.abs(got_values - values[..., wanted]) / scale
  assert np.max(error) <= rtol, f"eigenvalues: {got_values} vs {values[..., wanted]}, error {np.max(error):.3g}"
  # True residuals, from the dense Hessian, match the reported ones and are within the tolerance.
  true = np.linalg.norm(hessian @ got_vectors - got_vectors * got_values[..., None, :], axis=-2)
  assert np.max(true / scale) <= rtol, f"residuals ‖H u − λ u‖ / max|λ| = {true / scale}"
  assert np.max(np.abs(true - np.asarray(pairs.residuals)) / scale) <= rtol
  np.testing.assert_allclose(np.linalg.norm(got_vectors, axis=-2), 1., rtol=rtol)
  # Each eigenvector is within residual / gap of the reference's (sin θ theorem), sign convention included.
  gaps = np.abs(values[..., :, None] - values[..., None, :]) + np.diag(np.full(values.shape[-1], np.inf))
  gap = np.min(gaps, axis=-1)[..., wanted]
  bound = 2 * rtol * scale / gap + rtol
  distance = np.max(np.abs(got_vectors - vectors[..., wanted]), axis=-2)
  assert np.all(distance <= bound), f"eigenvectors off by {distance} > bound {bound}"


@pytest.mark.parametrize("which", eigenpairs_lib.WHICH)
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: d.__name__)
@pytest.mark.parametrize("name", sorted(FLOWS))
def test_against_dense_spectrum(name, dtype, which):
  flow, z = _flow_and_points(name, dtype)
  pairs = tfp_hessian.top_eigenpairs(flow, z, K, which=which)
  assert pairs.eigenvalues.shape == (3, K) and pairs.eigenvectors.shape == (3, D, K)
  assert pairs.residuals.shape == (3, K) and pairs.converged.shape == (3, K)
  assert pairs.eigenvalues.dtype == dtype and pairs.eigenvectors.dtype == dtype
  hessian = tfp_hessian.log_prob_hessian(flow, z)
  _assert_pairs_match(pairs, hessian, which, RTOL[dtype])
  if which == "stiff":
    assert pairs.num_iterations < D, "the stiff pairs should converge before the Krylov space is all of R^D"
  else:  # Indefinite Hessians, whose sloppiest eigenvalues are interior ones.
    values = np.linalg.eigvalsh(np.asarray(hessian, np.float64))
    sloppy = np.asarray(pairs.eigenvalues)
    interior = (np.min(sloppy, axis=-1) > values[:, 0]) & (np.max(sloppy, axis=-1) < values[:, -1])
    assert np.all((values[:, 0] < 0) & (values[:, -1] > 0)) and np.any(interior)


def test_negative_definite_sloppy_converges_early():
  """Definite Hessian: the sloppy pairs are at an end of the spectrum, and converge like the stiff ones."""
  rng = np.random.default_rng(3)
  # Eigenvalues -1, -2, -3 (sloppy) apart from the others, in [-10, -9]; rotated so that H is not diagonal.
  curvatures = np.concatenate([[1., 2., 3.], rng.uniform(9., 10., D - 3)])
  rotation, _ = np.linalg.qr(rng.normal(size=(D, D)))
  flow = tfd.TransformedDistribution(_gaussian(np.float64, curvatures**-0.5), tfb.ScaleMatvecLinearOperator(
      tf.linalg.LinearOperatorFullMatrix(tf.constant(rotation))))
  z = flow.sample([2, 2], seed=(0, 3))
  pairs = tfp_hessian.top_eigenpairs(flow, z, K, which="sloppy")
  assert pairs.eigenvalues.shape == (2, 2, K)
  assert pairs.num_iterations < D
  _assert_pairs_match(pairs, tfp_hessian.log_prob_hessian(flow, z), "sloppy", RTOL[np.float64])


def test_invariant_krylov_space_restarts():
  """`H` with three distinct eigenvalues: Lanczos breaks down after 3 steps and must go on for k = 5."""
  scales = np.repeat([0.5, 1., 3.], [2, 3, D - 5])
  rng = np.random.default_rng(5)
  flow = _gaussian(np.float64, scales[rng.permutation(D)])
  z = tf.constant(rng.normal(size=(2, D)))
  pairs = tfp_hessian.top_eigenpairs(flow, z, 5, which="stiff")
  np.testing.assert_allclose(pairs.eigenvalues, [[-4., -4., -1., -1., -1.]] * 2, rtol=1e-12)
  assert int(pairs.num_iterations) == 9  # three sequences to see -1 three times, a fourth to know it is all
  hessian = np.asarray(tfp_hessian.log_prob_hessian(flow, z))
  vectors = np.asarray(pairs.eigenvectors)
  np.testing.assert_allclose(np.swapaxes(vectors, -1, -2) @ vectors, np.broadcast_to(np.eye(5), (2, 5, 5)),
                             atol=1e-12)
  np.testing.assert_allclose(hessian @ vectors, vectors * np.asarray(pairs.eigenvalues)[:, None, :], atol=1e-12)
  assert np.all(np.asarray(pairs.converged))


@pytest.mark.parametrize("which", eigenpairs_lib.WHICH)
def test_k_equal_to_d_is_the_whole_spectrum(which):
  flow, z = flow_and_points(BIJECTORS["Chain"], np.float64)
  pairs = tfp_hessian.top_eigenpairs(flow, z, DIM, which=which)
  assert int(pairs.num_iterations) == DIM
  _assert_pairs_match(pairs, tfp_hessian.log_prob_hessian(flow, z), which, RTOL[np.float64])


@pytest.mark.parametrize("which", eigenpairs_lib.WHICH)
def test_distribution_batch_shape_and_point_batch(which):
  """Points `[A, 1, D]` against a distribution of batch shape `[2]`: `[A, 2]` points, each its own."""
  rng = np.random.default_rng(6)
  scale_tril = random_base(np.float64, rng, D).scale.to_dense()
  base = tfd.MultivariateNormalTriL(tf.constant(rng.normal(size=(2, D))), scale_tril)
  flow = tfd.TransformedDistribution(base, _elementwise_affine(np.float64, rng))
  z = tf.constant(flow.sample(3, seed=(0, 6)).numpy()[:, :1])  # [3, 1, D]
  pairs = tfp_hessian.top_eigenpairs(flow, z, K, which=which)
  assert pairs.eigenvalues.shape == (3, 2, K) and pairs.eigenvectors.shape == (3, 2, D, K)
  _assert_pairs_match(pairs, tfp_hessian.log_prob_hessian(flow, z), which, RTOL[np.float64])


def test_graph_with_unknown_batch_shape_matches_eager():
  flow, z = _flow_and_points("MAF", np.float64)
  graph = tf.function(lambda z: tfp_hessian.top_eigenpairs(flow, z, K), input_signature=[
      tf.TensorSpec([None, D], tf.float64)])
  eager = tfp_hessian.top_eigenpairs(flow, z, K)
  result = graph(z)
  assert result.eigenvectors.shape == (3, D, K)
  assert int(result.num_iterations) == int(eager.num_iterations)
  np.testing.assert_allclose(result.eigenvalues, eager.eigenvalues, rtol=1e-10)
  np.testing.assert_allclose(result.eigenvectors, eager.eigenvectors, atol=1e-8)


def test_too_few_iterations_are_reported_not_passed_off():
  flow, z = _flow_and_points("elementwise+affine", np.float64)
  pairs = tfp_hessian.top_eigenpairs(flow, z, K, which="sloppy", max_iterations=6)
  assert int(pairs.num_iterations) == 6
  converged = np.asarray(pairs.converged)
  assert not np.all(converged)
  hessian = np.asarray(tfp_hessian.log_prob_hessian(flow, z))
  vectors, values = np.asarray(pairs.eigenvectors), np.asarray(pairs.eigenvalues)
  true = np.linalg.norm(hessian @ vectors - vectors * values[..., None, :], axis=-2)
  scale = np.max(np.abs(np.linalg.eigvalsh(hessian)), axis=-1, keepdims=True)
  np.testing.assert_allclose(pairs.residuals, true, atol=1e-10 * np.max(scale))
  assert np.all(true[~converged] > 1e-10 * np.broadcast_to(scale, true.shape)[~converged])


def test_points_outside_the_support_are_nan_and_not_converged():
  rng = np.random.default_rng(8)
  flow = tfd.TransformedDistribution(random_base(np.float64, rng, D), tfb.Softplus())
  z = np.abs(rng.normal(size=(3, D))) + 0.1
  z[1, 4] = -1.  # outside softplus' range
  pairs = tfp_hessian.top_eigenpairs(flow, z, K)
  assert np.all(np.isnan(pairs.eigenvalues[1])) and np.all(np.isnan(pairs.eigenvectors[1]))
  np.testing.assert_array_equal(np.asarray(pairs.converged), [[True] * K, [False] * K, [True] * K])
  keep = np.array([0, 2])
  _assert_pairs_match(pairs._replace(**{f: np.asarray(getattr(pairs, f))[keep] for f in
                                        ("eigenvalues", "eigenvectors", "residuals", "converged")}),
                      tfp_hessian.log_prob_hessian(flow, z[keep]), "stiff", RTOL[np.float64])


# Bad input: all raise before any product.


@pytest.fixture(name="flow")
def _flow(monkeypatch):
  flow, _ = _flow_and_points("elementwise+affine", np.float64, num_points=1)

  def refuse(*args, **kwargs):
    raise AssertionError("the flow was differentiated before the input was checked")

  monkeypatch.setattr(eigenpairs_lib.hvp, "hessian_operator", refuse)
  return flow


@pytest.mark.parametrize("kwargs, error, match", [
    (dict(k=0), ValueError, r"`k` must be an integer in \[1, D\] = \[1, 24\]; got 0"),
    (dict(k=-2), ValueError, "`k` must be an integer in"),
    (dict(k=D + 1), ValueError, r"= \[1, 24\]; got 25"),
    (dict(k=2.), ValueError, "`k` must be an integer in"),
    (dict(k=True), ValueError, "`k` must be an integer in"),
    (dict(k=2, which="stiffest"), ValueError, r"`which` must be one of \('stiff', 'sloppy'\); got 'stiffest'"),
    (dict(k=2, which=None), ValueError, "`which` must be one of"),
    (dict(k=2, tolerance=0.), ValueError, "`tolerance` must be a positive number; got 0.0"),
    (dict(k=2, tolerance=-1e-3), ValueError, "`tolerance` must be a positive number"),
    (dict(k=3, max_iterations=2), ValueError, "`max_iterations` must be an integer >= k = 3; got 2"),
    (dict(k=3, max_iterations=10.), ValueError, "`max_iterations` must be an integer"),
])
def test_bad_arguments(flow, kwargs, error, match):
  with pytest.raises(error, match=match):
    tfp_hessian.top_eigenpairs(flow, np.zeros((2, D)), **kwargs)


@pytest.mark.parametrize("z, error, match", [
    (np.zeros((2, D), np.float32), TypeError, "`z` has dtype float32 but the distribution has dtype float64"),
    (np.zeros((2, D + 1)), ValueError, "event size D = 24"),
], ids=["dtype", "event size"])
def test_bad_points(flow, z, error, match):
  with pytest.raises(error, match=match):
    tfp_hessian.top_eigenpairs(flow, z, 2)
