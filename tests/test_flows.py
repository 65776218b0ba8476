"""Whole flows against both references: every base family, deep mixed chains, nested flows, batch shapes.

`FLOWS` is the one registry of flow cases: `(dtype, rng) -> (distribution, z)`, random parameters that are not
near the identity, `z` sampled from the flow (copied to a constant, so TFP's cache of sampled tensors plays no
part except in the test written for it). Every case is checked for value, gradient and Hessian against
`tf.hessians` and nested tapes; the other tests reuse the registry for graph mode, sampled points (including
`sample_and_log_prob_derivatives`), point batch shapes and `tfp_hessian.TransformedDistribution`.
"""

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_probability as tfp

import tfp_hessian
from tfp_hessian import bijectors as hb
from tfp_hessian import reference, registry

from cases import BIJECTORS, DIM, DTYPES, RTOL, assert_close, random_base

tfb = tfp.bijectors
tfd = tfp.distributions

D = DIM  # The event size of the bijector registry's cases, so its MADE-based layers fit.
B = 2  # a distribution's own batch size
NUM_POINTS = 3
SEED = (7, 11)  # a stateless sampling seed: the same points on every run


# -- parameters ---------------------------------------------------------------------------------------------


def _vec(rng, dtype, low, high, size=D):
  return tf.constant(rng.uniform(low, high, size=size), dtype)


def _tril(rng, dtype, size=D):
  """Lower triangular, positive diagonal well away from 0 and 1, so also a valid MVN scale."""
  m = np.tril(rng.normal(size=(size, size)) * 0.5, -1) + np.diag(rng.uniform(0.6, 1.6, size))
  return tf.constant(m, dtype)


def _lu(rng, dtype):
  m = rng.normal(size=(D, D)) * 0.4 + np.diag(rng.choice([-1., 1.], D) * rng.uniform(0.8, 1.4, D))
  lower_upper, permutation = tf.linalg.lu(tf.constant(m, tf.float64))
  return tf.cast(lower_upper, dtype), permutation


def _sinh_arcsinh(rng, dtype):
  return tfb.SinhArcsinh(skewness=_vec(rng, dtype, -0.8, 0.8), tailweight=_vec(rng, dtype, 0.7, 1.3))


def _real_nvp(rng, dtype, num_masked=2):
  """RealNVP with a tiny random-weight conditioner: a plain callable, so no network structure to exploit."""
  kernel = tf.constant(rng.normal(size=(num_masked, 2 * (D - num_masked))) * 0.8, dtype)
  bias = tf.constant(rng.normal(size=2 * (D - num_masked)) * 0.3, dtype)

  def shift_and_log_scale(x, output_units):
    hidden = tf.tanh(tf.einsum("...i,ij->...j", x, kernel) + bias)
    return hidden[..., :output_units], 0.6 * hidden[..., output_units:]

  return tfb.RealNVP(num_masked=num_masked, shift_and_log_scale_fn=shift_and_log_scale)


def _short_chain(rng, dtype):
  """Elementwise, dense affine and shift: enough to make any base's Hessian dense and point-dependent."""
  return tfb.Chain([tfb.Shift(_vec(rng, dtype, -1., 1.)), _sinh_arcsinh(rng, dtype),
                    tfb.ScaleMatvecTriL(_tril(rng, dtype))])


# -- bases --------------------------------------------------------------------------------------------------


def _mvn_diag(rng, dtype, batch=()):
  return tfd.MultivariateNormalDiag(tf.constant(rng.normal(size=batch + (D,)), dtype),
                                    _vec(rng, dtype, 0.5, 2.))


def _mvn_tril(rng, dtype, batch=()):
  return tfd.MultivariateNormalTriL(tf.constant(rng.normal(size=batch + (D,)), dtype), _tril(rng, dtype))


def _mvn_full_covariance(rng, dtype):
  # MultivariateNormalFullCovariance still exists in TFP 0.25 (deprecated); it is an MVN TriL of cholesky(Σ).
  a = rng.normal(size=(D, D))
  covariance = tf.constant(a @ a.T * 0.5 + np.eye(D) * 0.5, dtype)
  return tfd.MultivariateNormalFullCovariance(_vec(rng, dtype, -1., 1.), covariance)


def _mvn_low_rank(rng, dtype):
  return tfd.MultivariateNormalDiagPlusLowRankCovariance(
      _vec(rng, dtype, -1., 1.), cov_diag_factor=_vec(rng, dtype, 0.5, 1.5),
      cov_perturb_factor=tf.constant(rng.normal(size=(D, 2)) * 0.7, dtype))


def _multivariate_student_t(rng, dtype, batch=()):
  """No closed form here: the base's derivatives come from nested tapes."""
  return tfd.MultivariateStudentTLinearOperator(
      df=tf.constant(4.5, dtype), loc=tf.constant(rng.normal(size=batch + (D,)), dtype),
      scale=tf.linalg.LinearOperatorLowerTriangular(_tril(rng, dtype)))


def _independent_normal(rng, dtype):
  return tfd.Independent(tfd.Normal(_vec(rng, dtype, -1., 1.), _vec(rng, dtype, 0.5, 2.)), 1)


def _sample_normal(rng, dtype):
  return tfd.Sample(tfd.Normal(tf.constant(rng.normal(), dtype), tf.constant(rng.uniform(0.5, 2.), dtype)), D)


def _independent_logistic(rng, dtype, batch=()):
  """A diagonal Hessian from elementwise autodiff."""
  return tfd.Independent(tfd.Logistic(tf.constant(rng.normal(size=batch + (D,)), dtype),
                                      _vec(rng, dtype, 0.5, 2.)), 1)


def _sample_student_t(rng, dtype):
  return tfd.Sample(tfd.StudentT(tf.constant(3.5, dtype), tf.constant(rng.normal(), dtype),
                                 tf.constant(rng.uniform(0.5, 2.), dtype)), D)


def _independent_uniform(rng, dtype):
  """A constant log density: its derivatives by autodiff are zero, never unconnected."""
  low = _vec(rng, dtype, -2., -1.)
  return tfd.Independent(tfd.Uniform(low, low + _vec(rng, dtype, 1., 3.)), 1)


# -- the registry -------------------------------------------------------------------------------------------


def _points(distribution, sample_shape=(NUM_POINTS,)):
  """Points sampled from `distribution`, as a fresh constant (no cached inverse)."""
  return tf.constant(distribution.sample(sample_shape, seed=SEED).numpy())


def _under_short_chain(make_base):
  def make(dtype, rng):
    flow = tfd.TransformedDistribution(make_base(rng, dtype), _short_chain(rng, dtype))
    return flow, _points(flow)

  return make


def _uniform_flow(dtype, rng):
  base = _independent_uniform(rng, dtype)
  low, high = base.distribution.low, base.distribution.high
  flow = tfd.TransformedDistribution(
      base, tfb.Chain([tfb.ScaleMatvecTriL(_tril(rng, dtype)), tfb.Invert(tfb.Sigmoid(low=low, high=high))]))
  return flow, _points(flow)


def _mixed_chain(dtype, rng):
  """Elementwise, dense affine (LU and TriL), permutation and Invert, seven layers deep."""
  bijector = tfb.Chain([
      tfb.Shift(_vec(rng, dtype, -2., 2.)),
      tfb.ScaleMatvecLU(*_lu(rng, dtype)),
      tfb.Invert(tfb.Softplus()),
      tfb.Exp(),
      tfb.Permute(rng.permutation(D)),
      tfb.ScaleMatvecTriL(_tril(rng, dtype)),
      _sinh_arcsinh(rng, dtype),
  ])
  base = random_base(dtype, rng, dim=D)
  # The references differentiate TFP's softplus twice at Exp's output, and its second derivative overflows to
  # NaN there past ~88 in float32 (~709 in float64): `tf.hessians` is not finite at such points (ours is). Only
  # sampled points well inside that are used.
  omega = base.sample(6 * NUM_POINTS, seed=SEED)
  exp_output = tfb.Chain(bijector.bijectors[3:]).forward(omega)
  keep = np.flatnonzero(np.max(exp_output, axis=-1) < 50.)[:NUM_POINTS]
  assert len(keep) == NUM_POINTS
  return tfd.TransformedDistribution(base, bijector), tf.constant(bijector.forward(tf.gather(omega, keep)).numpy())


def _chain_with_real_nvp(dtype, rng):
  """A coupling layer between elementwise, permutation and dense affine ones."""
  bijector = tfb.Chain([tfb.Sinh(), _real_nvp(rng, dtype), tfb.Permute(rng.permutation(D)),
                        tfb.ScaleMatvecLU(*_lu(rng, dtype)), tfb.Softplus()])
  flow = tfd.TransformedDistribution(_mvn_diag(rng, dtype), bijector)
  return flow, _points(flow)


def _chain_with_ascending_and_inverted_fallback(dtype, rng):
  """A fallback layer (Ascending has no rule) and an inverted coupling layer (IAF-like) in one chain."""
  bijector = tfb.Chain([tfb.Scale(_vec(rng, dtype, 0.5, 2.)), tfb.Ascending(), tfb.Invert(_real_nvp(rng, dtype)),
                        tfb.ScaleMatvecTriL(_tril(rng, dtype))])
  flow = tfd.TransformedDistribution(_independent_logistic(rng, dtype), bijector)
  return flow, _points(flow)


def _iaf_chain(dtype, rng):
  """An inverse autoregressive flow (`Invert(MAF)` of a MADE) between elementwise and affine layers."""
  iaf = BIJECTORS["IAF: Invert(MAF(MADE tanh))"].make(dtype, rng)
  bijector = tfb.Chain([tfb.Sinh(), iaf, tfb.Permute(rng.permutation(D)), tfb.ScaleMatvecTriL(_tril(rng, dtype))])
  flow = tfd.TransformedDistribution(_mvn_diag(rng, dtype), bijector)
  return flow, _points(flow)


def _nested(dtype, rng):
  """A TransformedDistribution whose base is one (whose base, an MVN, is one too, in TFP)."""
  inner = tfd.TransformedDistribution(_mvn_tril(rng, dtype),
                                      tfb.Chain([tfb.Sinh(), tfb.ScaleMatvecTriL(_tril(rng, dtype))]))
  flow = tfd.TransformedDistribution(
      inner, tfb.Chain([tfb.Softplus(), tfb.Permute(rng.permutation(D)), tfb.ScaleMatvecLU(*_lu(rng, dtype))]))
  return flow, _points(flow)


def _nested_three_over_student_t(dtype, rng):
  flow = tfd.TransformedDistribution(_multivariate_student_t(rng, dtype), _sinh_arcsinh(rng, dtype))
  flow = tfd.TransformedDistribution(flow, tfb.ScaleMatvecLU(*_lu(rng, dtype)))
  flow = tfd.TransformedDistribution(flow, tfb.Chain([tfb.Shift(_vec(rng, dtype, -1., 1.)), _real_nvp(rng, dtype)]))
  return flow, _points(flow)


def _package_flow(dtype, rng):
  """`tfp_hessian.TransformedDistribution` of the package's own bijector subclasses."""
  bijector = hb.Chain([hb.Softplus(), hb.ScaleMatvecTriL(_tril(rng, dtype)), hb.Permute(rng.permutation(D)),
                       hb.Sinh()])
  flow = tfp_hessian.TransformedDistribution(_mvn_diag(rng, dtype), bijector)
  return flow, _points(flow)


def _stock_over_package_flow(dtype, rng):
  inner = tfp_hessian.TransformedDistribution(_sample_normal(rng, dtype), hb.Tanh())
  flow = tfd.TransformedDistribution(inner, tfb.ScaleMatvecLU(*_lu(rng, dtype)))
  return flow, _points(flow)


def _bare(make_base):
  def make(dtype, rng):
    base = make_base(rng, dtype)
    return base, _points(base)

  return make


def _batched_mvn(dtype, rng):
  """A distribution batch `[B]`, points `[N, B, D]`."""
  flow = tfd.TransformedDistribution(_mvn_tril(rng, dtype, batch=(B,)), _short_chain(rng, dtype))
  return flow, _points(flow)


def _one_point(make_distribution):
  """A distribution batch `[B]` against a single point `[D]`: the result has batch shape `[B]`."""

  def make(dtype, rng):
    flow = make_distribution(rng, dtype)
    return flow, _points(flow, ())[0]

  return make


def _broadcast_points(dtype, rng):
  """Points `[N, 1, D]` against a distribution batch `[B]`: the result has batch shape `[N, B]`."""
  flow = tfd.TransformedDistribution(_independent_logistic(rng, dtype, batch=(B,)), tfb.Chain([
      tfb.ScaleMatvecTriL(_tril(rng, dtype)), _real_nvp(rng, dtype)]))
  return flow, _points(flow)[:, :1]


def _batched_fallback_layer(dtype, rng):
  """A fallback layer (Softfloor has no rule) with its own batch `[B, 1]`, against points `[N, 1, D]`."""
  temperature = tf.constant(rng.uniform(0.5, 1.5, size=(B, 1)), dtype)
  flow = tfd.TransformedDistribution(_mvn_tril(rng, dtype), tfb.Chain([tfb.Softfloor(temperature),
                                                                      _sinh_arcsinh(rng, dtype)]))
  return flow, _points(flow)[:, :1]


FLOWS = {
    # Each base family under a short chain of stock bijectors.
    "MultivariateNormalDiag": _under_short_chain(_mvn_diag),
    "MultivariateNormalTriL": _under_short_chain(_mvn_tril),
    "MultivariateNormalFullCovariance": _under_short_chain(_mvn_full_covariance),
    "MultivariateNormalDiagPlusLowRankCovariance": _under_short_chain(_mvn_low_rank),
    "Independent(Normal)": _under_short_chain(_independent_normal),
    "Sample(Normal)": _under_short_chain(_sample_normal),
    "Independent(Logistic) (diagonal autodiff)": _under_short_chain(_independent_logistic),
    "Sample(StudentT) (diagonal autodiff)": _under_short_chain(_sample_student_t),
    "MultivariateStudentT (full autodiff)": _under_short_chain(_multivariate_student_t),
    "Independent(Uniform) (constant density)": _uniform_flow,
    # Bases on their own: not a TransformedDistribution at all.
    "bare MultivariateNormalTriL": _bare(_mvn_tril),
    "bare MultivariateStudentT": _bare(_multivariate_student_t),
    # Deep and mixed chains, fallback layers, nesting.
    "mixed chain": _mixed_chain,
    "chain with RealNVP": _chain_with_real_nvp,
    "chain with Ascending and Invert(RealNVP)": _chain_with_ascending_and_inverted_fallback,
    "chain with IAF": _iaf_chain,
    "nested": _nested,
    "nested x3 over MultivariateStudentT": _nested_three_over_student_t,
    "tfp_hessian.TransformedDistribution": _package_flow,
    "stock over tfp_hessian.TransformedDistribution": _stock_over_package_flow,
    # Batch shapes of the distribution, and points broadcasting against them.
    "batch [B], points [N, B, D]": _batched_mvn,
    "batch [B] MVN, one point [D]": _one_point(lambda rng, dtype: tfd.TransformedDistribution(
        _mvn_diag(rng, dtype, batch=(B,)), _short_chain(rng, dtype))),
    "batch [B] MultivariateStudentT, one point [D]": _one_point(lambda rng, dtype: tfd.TransformedDistribution(
        _multivariate_student_t(rng, dtype, batch=(B,)), tfb.Sinh())),
    # A batch equal to the event size: the wrong layout would still broadcast, silently.
    "batch [D] Sample(Normal), one point [D]": _one_point(lambda rng, dtype: tfd.TransformedDistribution(
        tfd.Sample(tfd.Normal(_vec(rng, dtype, -1., 1.), _vec(rng, dtype, 0.5, 2.)), D), tfb.Sinh())),
    "batch [B] Independent(Logistic), points [N, 1, D]": _broadcast_points,
    "batch [B, 1] fallback layer, points [N, 1, D]": _batched_fallback_layer,
}
NAMES = sorted(FLOWS)


def make_flow(name, dtype, seed=0):
  return FLOWS[name](dtype, np.random.default_rng(seed))


def _batch_shape(distribution, z):
  return tf.broadcast_static_shape(z.shape[:-1], distribution.batch_shape)


def assert_matches_references(distribution, z, result, dtype, what=""):
  """Value, gradient and Hessian of `result` against `tf.hessians`, nested tapes and `log_prob` at `z`."""
  rtol = RTOL[dtype]
  batch = _batch_shape(distribution, z)
  assert result.hessian.shape == batch.concatenate([D, D])
  assert result.gradient.shape == batch.concatenate([D])
  assert result.log_prob.shape == batch
  for value in result:
    assert value.dtype == dtype
  assert_close(result.hessian, reference.naive_hessian(distribution, z), rtol, what=f"{what}Hessian vs tf.hessians")
  assert_close(result.hessian, reference.tape_hessian(distribution, z), rtol, what=f"{what}Hessian vs tapes")
  assert_close(result.gradient, reference.tape_gradient(distribution, z), rtol, 1, what=f"{what}gradient")
  expected_log_prob = tf.broadcast_to(distribution.log_prob(z), batch)
  assert_close(result.log_prob[..., None], expected_log_prob[..., None], rtol, 1, what=f"{what}log_prob")


def assert_same_derivatives(actual, expected, rtol, what):
  assert_close(actual.log_prob[..., None], expected.log_prob[..., None], rtol, 1, what=f"{what} log_prob")
  assert_close(actual.gradient, expected.gradient, rtol, 1, what=f"{what} gradient")
  assert_close(actual.hessian, expected.hessian, rtol, 2, what=f"{what} Hessian")
  for a, e in zip(actual, expected):
    assert a.shape == e.shape and a.dtype == e.dtype


# -- tests --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: d.__name__)
@pytest.mark.parametrize("name", NAMES)
def test_flow_matches_references(name, dtype):
  distribution, z = make_flow(name, dtype)
  result = tfp_hessian.log_prob_and_derivatives(distribution, z)
  assert_matches_references(distribution, z, result, dtype)
  np.testing.assert_array_equal(result.hessian, tf.linalg.matrix_transpose(result.hessian))
  np.testing.assert_array_equal(tfp_hessian.log_prob_hessian(distribution, z), result.hessian)


# One flow per code path that graph mode could change: closed-form, diagonal-autodiff and full-autodiff bases,
# fallback layers, Invert, nesting, and broadcasting against the distribution's batch.
GRAPH = ["MultivariateNormalTriL", "Sample(StudentT) (diagonal autodiff)", "MultivariateStudentT (full autodiff)",
         "mixed chain", "chain with Ascending and Invert(RealNVP)", "nested x3 over MultivariateStudentT",
         "batch [D] Sample(Normal), one point [D]", "batch [B, 1] fallback layer, points [N, 1, D]"]


@pytest.mark.parametrize("name", GRAPH)
def test_graph_matches_eager(name):
  distribution, z = make_flow(name, np.float64)
  eager = tfp_hessian.log_prob_and_derivatives(distribution, z)
  graph = tf.function(lambda z: tfp_hessian.log_prob_and_derivatives(distribution, z))(z)
  assert_same_derivatives(graph, eager, RTOL[np.float64], "graph vs eager:")


@pytest.mark.parametrize("name", ["batch [B] Independent(Logistic), points [N, 1, D]",
                                  "batch [B, 1] fallback layer, points [N, 1, D]"])
def test_graph_with_unknown_batch_shape(name):
  """Points of statically unknown batch shape (`input_signature`), broadcast at run time."""
  distribution, z = make_flow(name, np.float64)
  signature = [tf.TensorSpec([None] * (z.shape.rank - 1) + [D], z.dtype)]
  sweep = tf.function(lambda z: tfp_hessian.log_prob_and_derivatives(distribution, z), input_signature=signature)
  traced = sweep.get_concrete_function().structured_outputs.hessian.shape
  assert traced.rank == _batch_shape(distribution, z).rank + 2 and traced[-2:] == [D, D]
  assert_matches_references(distribution, z, sweep(z), np.float64)


# The flows where a cached inverse could cut `z` off a tape: coupling and fallback layers, nesting, autodiff bases.
SAMPLED = ["chain with RealNVP", "chain with Ascending and Invert(RealNVP)", "nested"]


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: d.__name__)
@pytest.mark.parametrize("name", SAMPLED)
def test_sampled_points_match_copies(name, dtype):
  """`z` straight from `sample()` (TFP caches its inverse) gives what a copy of it gives."""
  distribution, _ = make_flow(name, dtype)
  sampled = distribution.sample(NUM_POINTS, seed=SEED)
  copy = tf.constant(sampled.numpy())
  result = tfp_hessian.log_prob_and_derivatives(distribution, sampled)
  assert_matches_references(distribution, copy, result, dtype, what="sampled: ")
  copied = tfp_hessian.log_prob_and_derivatives(distribution, tf.identity(sampled))
  assert_same_derivatives(result, copied, RTOL[dtype], "sampled vs tf.identity copy:")


@pytest.mark.parametrize("name", SAMPLED)
def test_sampled_points_in_graph(name):
  """Sampling and the sweep in one `tf.function`: the cache is keyed by graph tensors there."""
  distribution, _ = make_flow(name, np.float64)

  @tf.function
  def sample_and_derivatives():
    z = distribution.sample(NUM_POINTS, seed=SEED)
    return z, tfp_hessian.log_prob_and_derivatives(distribution, z)

  z, result = sample_and_derivatives()
  assert_matches_references(distribution, tf.constant(z.numpy()), result, np.float64, what="graph sampled: ")


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: d.__name__)
@pytest.mark.parametrize("name", ["chain with IAF", "nested x3 over MultivariateStudentT",
                                  "batch [B], points [N, B, D]"])
def test_sample_and_log_prob_derivatives(name, dtype):
  """The sweep over the sampling pass's cached inverses (an IAF's sequential inverse never runs) gives what the
  references give at a copy of `z`."""
  distribution, _ = make_flow(name, dtype)
  z, result = tfp_hessian.sample_and_log_prob_derivatives(distribution, NUM_POINTS, seed=SEED)
  assert z.shape == tf.TensorShape([NUM_POINTS]).concatenate(distribution.batch_shape).concatenate([D])
  copy = tf.constant(z.numpy())
  assert_matches_references(distribution, copy, result, dtype, what="sample_and_log_prob_derivatives: ")
  z_again, hessian = tfp_hessian.sample_and_log_prob_hessian(distribution, NUM_POINTS, seed=SEED)
  np.testing.assert_array_equal(z_again, z)
  np.testing.assert_array_equal(hessian, result.hessian)


@pytest.mark.parametrize("shape", [(D,), (6, D), (2, 3, D)], ids=lambda s: str(list(s)))
@pytest.mark.parametrize("name", ["nested x3 over MultivariateStudentT", "Sample(StudentT) (diagonal autodiff)"])
def test_point_batch_shapes(name, shape):
  """`z` of shape `[D]` (no batch), `[N, D]` and `[A, B, D]` give `[*batch, D, D]`, point by point."""
  distribution, _ = make_flow(name, np.float64)
  z = tf.reshape(_points(distribution, (6,)), (-1, D))[:int(np.prod(shape[:-1]))]
  z = tf.reshape(z, shape)
  result = tfp_hessian.log_prob_and_derivatives(distribution, z)
  assert_matches_references(distribution, z, result, np.float64)


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: d.__name__)
def test_transformed_distribution_methods(dtype):
  """`tfp_hessian.TransformedDistribution` keeps its class with a non-CompositeTensor bijector (RealNVP), and
  its methods are the sweep's functions."""
  rng = np.random.default_rng(3)
  flow = tfp_hessian.TransformedDistribution(
      _mvn_tril(rng, dtype), tfb.Chain([tfb.Softplus(), _real_nvp(rng, dtype), tfb.ScaleMatvecLU(*_lu(rng, dtype))]))
  assert isinstance(flow, tfp_hessian.TransformedDistribution)
  z = _points(flow)
  result = flow.log_prob_and_derivatives(z)
  assert_matches_references(flow, z, result, dtype)
  np.testing.assert_array_equal(flow.log_prob_hessian(z), result.hessian)
  graph = tf.function(flow.log_prob_hessian)(z)
  assert_close(graph, result.hessian, RTOL[dtype], what="graph log_prob_hessian")


def test_fallback_flows_have_fallback_layers():
  """The flows named for a fallback layer have one: neither Ascending nor Softfloor has an analytic rule."""
  assert not registry.has_analytic_rule(tfb.Ascending())
  assert not registry.has_analytic_rule(tfb.Softfloor(1.))
