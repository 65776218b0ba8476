"""Whole flows against both references: every base family, deep mixed chains, nested flows, batch shapes.

`FLOWS` is the one registry of flow cases: `(dtype, rng) -> (distribution, z)`, random parameters that are not
near the identity, `z` sampled from the flow (copied to a constant, so TFP's cache of sampled tensors plays no
part except in the test written for it). Every case is checked for value, gradient and Hessian against nested
tapes, and its Hessian against `tf.hessians` (in float64; in CI one flow per code path, `TF_HESSIANS_CASES`); the
other tests reuse the registry for graph mode, sampled points (including `sample_and_log_prob_derivatives`), point
batch shapes and `tfp_hessian.TransformedDistribution`.
"""

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_probability as tfp

import tfp_hessian
from tfp_hessian import bijectors as hb
from tfp_hessian import execution, pullback, reference, registry, sweep

from cases import (BIJECTORS, DIM, DTYPES, FLOAT32_SLOW, RTOL, BoxMap, Shear, _made, _real_nvp_dense, assert_close,
                   random_base)
from cases import _batch_norm as cases_batch_norm
from factories import lower_triangular

tfb = tfp.bijectors
tfd = tfp.distributions

D = DIM  # The event size of the bijector registry's cases, so its MADE-based layers fit.
B = 2  # a distribution's own batch size
NUM_POINTS = 3
SEED = (7, 11)  # a stateless sampling seed: the same points on every run


# -- parameters ---------------------------------------------------------------------------------------------


def _vec(rng, dtype, low, high, size=D):  # noqa: D103
  return tf.constant(rng.uniform(low, high, size=size), dtype)


def _tril(rng, dtype, size=D):
  """Lower triangular, positive diagonal well away from 0 and 1, so also a valid MVN scale."""
  return lower_triangular(rng, dtype, size, 0.5, (0.6, 1.6))


def _lu(rng, dtype):
  m = rng.normal(size=(D, D)) * 0.4 + np.diag(rng.choice([-1., 1.], D) * rng.uniform(0.8, 1.4, D))
  lower_upper, permutation = tf.linalg.lu(tf.constant(m, tf.float64))
  return tf.cast(lower_upper, dtype), permutation


def _sinh_arcsinh(rng, dtype, size=D):
  return tfb.SinhArcsinh(skewness=_vec(rng, dtype, -0.8, 0.8, size), tailweight=_vec(rng, dtype, 0.7, 1.3, size))


def _real_nvp(rng, dtype, num_masked=2, size=D):
  """RealNVP with a tiny random-weight conditioner: a plain callable, so no network structure to exploit."""
  kernel = tf.constant(rng.normal(size=(num_masked, 2 * (size - num_masked))) * 0.8, dtype)
  bias = tf.constant(rng.normal(size=2 * (size - num_masked)) * 0.3, dtype)

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


def _mvn_tril(rng, dtype, batch=(), size=D):
  return tfd.MultivariateNormalTriL(tf.constant(rng.normal(size=batch + (size,)), dtype), _tril(rng, dtype, size))


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


# `pullback._CONGRUENCE_GEMM_SIZE`: from there a shared matrix is applied by GEMMs over all points. At the
# threshold itself, to keep CI in time (tf.hessians' cost grows with D²; D = 128 cost 5.6 s per dtype).
LARGE_D = pullback._CONGRUENCE_GEMM_SIZE


def _large_affine(dtype, rng, size=LARGE_D):
  """Dense affine layers at D = LARGE_D between elementwise ones, one inverted: their shared matrices are applied by
  GEMMs over all points there (`pullback._congruence`), in the pullback and in `invert`. Diagonally dominant
  triangular factors (off-diagonal entries of scale `0.3/√D`), so the flow stays well conditioned at this size."""
  assert size >= pullback._CONGRUENCE_GEMM_SIZE  # the case exists for that path

  def tril():
    return lower_triangular(rng, dtype, size, 0.3 / np.sqrt(size), (0.7, 1.3))

  bijector = tfb.Chain([
      tfb.Shift(_vec(rng, dtype, -1., 1., size)),
      tfb.ScaleMatvecTriL(tril()),
      _sinh_arcsinh(rng, dtype, size),
      tfb.Invert(tfb.ScaleMatvecTriL(tril())),
      tfb.Softplus(),
  ])
  base = tfd.MultivariateNormalDiag(_vec(rng, dtype, -1., 1., size), _vec(rng, dtype, 0.5, 1.5, size))
  flow = tfd.TransformedDistribution(base, bijector)
  return flow, _points(flow)


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


DEEP = 8  # nested TransformedDistributions in the deeply nested flow


def _deeply_nested(dtype, rng):
  """`DEEP` TransformedDistributions, each over the last, one elementwise or affine layer each, a batch [B] `Shift`
  at the fifth. TFP's own `batch_shape` (and so `sample`) takes `2^DEEP` times one level's time on it: its points
  are the base's draws pushed through the layers, as `sample` would give them."""
  base = _mvn_diag(rng, dtype)
  layers = [lambda: tfb.Shift(_vec(rng, dtype, -1., 1.)), lambda: tfb.Scale(_vec(rng, dtype, 0.7, 1.3)),
            lambda: tfb.SinhArcsinh(_vec(rng, dtype, -.5, .5), _vec(rng, dtype, .8, 1.2))]
  flow, points = base, base.sample([NUM_POINTS, 1], seed=SEED)  # [N, 1, D]: [N, B, D] from the batch [B] layer on
  for level in range(DEEP):
    bijector = (tfb.Shift(tf.constant(rng.normal(size=(B, D)), dtype)) if level == 4 else layers[level % 3]())
    flow, points = tfd.TransformedDistribution(flow, bijector), bijector.forward(points)
  return flow, tf.constant(points.numpy())


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


# -- events of other ranks and structures -------------------------------------------------------------------


def _structure_points(distribution, sample_shape=(NUM_POINTS,), **kwargs):
  """Points of any structure sampled from `distribution`, as fresh constants (no cached inverse)."""
  sample = distribution.sample(sample_shape, seed=SEED, **kwargs)
  return tf.nest.map_structure(lambda t: tf.constant(t.numpy()), sample)


def _matrix_sample(dtype, rng):
  """`Sample(Normal, [3, 2])`: matrix events, a coordinatewise base of rank 2, elementwise and scalar layers."""
  base = tfd.Sample(tfd.Normal(tf.constant(rng.normal(), dtype), tf.constant(rng.uniform(0.5, 2.), dtype)), [3, 2])
  flow = tfd.TransformedDistribution(base, tfb.Chain([tfb.Exp(), tfb.Scale(_vec(rng, dtype, 0.5, 2., (3, 2))),
                                                      _sinh_arcsinh_matrix(rng, dtype)]))
  return flow, _structure_points(flow)


def _sinh_arcsinh_matrix(rng, dtype):
  return tfb.SinhArcsinh(skewness=_vec(rng, dtype, -0.8, 0.8, (3, 2)), tailweight=_vec(rng, dtype, 0.7, 1.3, (2,)))


def _reshape(dtype, rng):
  """A vector base reshaped to matrices, with an affine layer before and a rank-2 fallback layer after."""
  base = _mvn_tril(rng, dtype, size=6)
  flow = tfd.TransformedDistribution(base, tfb.Chain([
      tfb.Softplus(), tfb.Permute([1, 0], axis=-2), tfb.Reshape([2, 3]), tfb.ScaleMatvecTriL(_tril(rng, dtype, 6))]))
  return flow, _structure_points(flow)


def _transpose_and_row_layer(dtype, rng):
  """Matrix events through `Transpose`, and a vector layer (`ScaleMatvecTriL`) applied to each row: the fallback."""
  base = tfd.Sample(tfd.Normal(tf.constant(0., dtype), tf.constant(1., dtype)), [2, 3])
  flow = tfd.TransformedDistribution(base, tfb.Chain([
      tfb.Sigmoid(), tfb.ScaleMatvecTriL(_tril(rng, dtype, 2)), tfb.Transpose(perm=[1, 0]), tfb.Sinh()]))
  return flow, _structure_points(flow)


def _split_and_joint_map(dtype, rng):
  """`Split` of a correlated vector into a list, each part constrained by its own bijector (`JointMap`)."""
  bijector = tfb.Chain([tfb.JointMap([tfb.Exp(), tfb.Sigmoid(), tfb.Identity()]), tfb.Split([2, 2, 1]),
                        tfb.ScaleMatvecTriL(_tril(rng, dtype))])
  flow = tfd.TransformedDistribution(_mvn_tril(rng, dtype), bijector)
  return flow, _structure_points(flow)


def _restructure_to_dict(dtype, rng):
  """A dict of a matrix and a vector from one vector: `Split`, `Restructure`, per-part `Reshape` and constraints, and
  a coupling layer (`JointMap` of a RealNVP part)."""
  bijector = tfb.Chain([
      tfb.JointMap({"scale": tfb.Softplus(), "w": tfb.Chain([tfb.Tanh(), tfb.Reshape([2, 2])]),
                    "z": _real_nvp(rng, dtype, num_masked=1, size=3)}),
      tfb.Restructure({"scale": 0, "w": 1, "z": 2}),
      tfb.Split([1, 4, 3]),
      tfb.ScaleMatvecTriL(_tril(rng, dtype, 8))])
  flow = tfd.TransformedDistribution(_mvn_tril(rng, dtype, size=8), bijector)
  return flow, _structure_points(flow)


def _block_operator(dtype, rng):
  """`ScaleMatvecLinearOperatorBlock` on a list of vectors (the surrogate posteriors' correlated affine layer)."""
  operator = tf.linalg.LinearOperatorBlockLowerTriangular([
      [tf.linalg.LinearOperatorLowerTriangular(_tril(rng, dtype, 2))],
      [tf.linalg.LinearOperatorFullMatrix(tf.constant(rng.normal(size=(3, 2)) * 0.5, dtype)),
       tf.linalg.LinearOperatorLowerTriangular(_tril(rng, dtype, 3))]])
  bijector = tfb.Chain([tfb.JointMap([tfb.Softplus(), tfb.Sinh()]), tfb.ScaleMatvecLinearOperatorBlock(operator),
                        tfb.Split([2, 3])])
  flow = tfd.TransformedDistribution(_mvn_tril(rng, dtype), bijector)
  return flow, _structure_points(flow)


def _inverted_structure(dtype, rng):
  """`Invert(JointMap)` and `Invert(Split)` over a list-structured base of independent parts (block-diagonal)."""
  base = tfd.JointDistributionSequential([
      tfd.Independent(tfd.LogNormal(_vec(rng, dtype, -0.5, 0.5, 2), _vec(rng, dtype, 0.5, 1., 2)), 1),
      _mvn_tril(rng, dtype, size=3)])
  bijector = tfb.Chain([_sinh_arcsinh(rng, dtype), tfb.Invert(tfb.Split([2, 3])),
                        tfb.Invert(tfb.JointMap([tfb.Exp(), tfb.Sinh()]))])
  flow = tfd.TransformedDistribution(base, bijector)
  return flow, _structure_points(flow)


def _scalar_events(dtype, rng):
  """Scalar events: a flow of a scalar `Normal`; the Hessian is `[N, 1, 1]`."""
  flow = tfd.TransformedDistribution(tfd.Normal(tf.constant(rng.normal(), dtype), tf.constant(1.3, dtype)),
                                     tfb.Chain([tfb.Softplus(), tfb.Scale(tf.constant(0.7, dtype))]))
  return flow, _structure_points(flow)


def _event_size_changing(dtype, rng):
  """`IteratedSigmoidCentered` maps R^(D-1) onto the simplex in R^D: a rectangular Jacobian (the fallback)."""
  base = _mvn_tril(rng, dtype, size=D - 1)
  flow = tfd.TransformedDistribution(base, tfb.IteratedSigmoidCentered())
  return flow, _structure_points(flow)


def _half_normal(dtype, scale):
  return tfd.HalfNormal(tf.constant(scale, dtype))


def _joint_named_hierarchical(dtype, rng):
  """`scale ~ HalfNormal`, `w | scale ~ Normal(0, scale)` (a vector), `y | w, scale`: every cross term."""
  loc = tf.constant(rng.normal(size=3), dtype)
  model = tfd.JointDistributionNamed(dict(
      scale=_half_normal(dtype, 1.5),
      w=lambda scale: tfd.Independent(tfd.Normal(loc, scale[..., tf.newaxis]), 1),
      y=lambda w, scale: tfd.Normal(tf.reduce_sum(w, -1), scale + 0.5)))
  return model, _structure_points(model)


def _joint_sequential(dtype, rng):
  loc = tf.constant(rng.normal(), dtype)
  model = tfd.JointDistributionSequential([_half_normal(dtype, 1.), lambda s: tfd.Sample(tfd.Normal(loc, s), 2)])
  return model, _structure_points(model)


def _joint_coroutine(dtype, rng):
  root = tfd.JointDistributionCoroutine.Root
  loc = tf.constant(rng.normal(size=2), dtype)

  def model():
    scale = yield root(tfd.LogNormal(tf.constant(0., dtype), tf.constant(0.5, dtype), name="scale"))
    yield tfd.Independent(tfd.Normal(loc, scale[..., tf.newaxis]), 1, name="w")

  distribution = tfd.JointDistributionCoroutine(model)
  return distribution, _structure_points(distribution)


def _joint_auto_batched(dtype, rng):
  weights = tf.constant(rng.normal(size=3), dtype)
  model = tfd.JointDistributionSequentialAutoBatched([
      tfd.Normal(tf.constant(rng.normal(), dtype), tf.constant(1., dtype)),
      lambda a: tfd.Normal(a * weights, tf.constant(0.8, dtype))])
  return model, _structure_points(model)


def _joint_named_auto_batched(dtype, rng):
  weights = tf.constant(rng.normal(size=2), dtype)
  model = tfd.JointDistributionNamedAutoBatched(dict(
      scale=tfd.LogNormal(tf.constant(0., dtype), tf.constant(0.4, dtype)),
      w=lambda scale: tfd.Normal(weights, scale)))
  return model, _structure_points(model)


def _joint_coroutine_auto_batched(dtype, rng):
  loc = tf.constant(rng.normal(size=2), dtype)

  def model():
    scale = yield tfd.HalfNormal(tf.constant(1., dtype), name="scale")
    yield tfd.Normal(loc, scale + 0.3, name="w")

  distribution = tfd.JointDistributionCoroutineAutoBatched(model)
  return distribution, _structure_points(distribution)


def _posterior_flow_over_joint(dtype, rng):
  """A flow over a JointDistribution's parameters: `JointMap` of constraining bijectors over the joint."""
  prior = tfd.JointDistributionNamed(dict(
      log_rate=tfd.Normal(tf.constant(0., dtype), tf.constant(1., dtype)),
      w=lambda log_rate: tfd.Independent(tfd.Normal(tf.zeros(2, dtype), tf.exp(log_rate)[..., tf.newaxis]), 1)))
  flow = tfd.TransformedDistribution(prior, tfb.JointMap(dict(log_rate=tfb.Exp(), w=_sinh_arcsinh_pair(rng, dtype))))
  return flow, _structure_points(flow)


def _sinh_arcsinh_pair(rng, dtype):
  return tfb.SinhArcsinh(skewness=_vec(rng, dtype, -0.8, 0.8, 2), tailweight=_vec(rng, dtype, 0.7, 1.3, 2))


def _surrogate_posterior(dtype, rng):
  """What `tfp.experimental.vi.build_affine_surrogate_posterior` returns: a `DeferredModule` over named parts."""
  surrogate = tfp.experimental.vi.build_affine_surrogate_posterior(
      event_shape={"scale": [], "w": [2], "c": [2, 2]}, operators="tril",
      bijector={"scale": tfb.Softplus(), "w": tfb.Identity(), "c": tfb.Exp()}, dtype=dtype,
      seed=(int(rng.integers(1000)), 1))
  # Away from the initialisation's near-identity: random locations and a random lower triangle.
  for variable in surrogate.trainable_variables:
    variable.assign(rng.normal(size=variable.shape) * 0.4 + (0.8 if "diag" in variable.name else 0.))
  return surrogate, _structure_points(surrogate)


# -- conditional flows (`bijector_kwargs`) ------------------------------------------------------------------

C = 3  # the size of a condition


def _condition(rng, dtype, *shape):
  return tf.constant(rng.normal(size=shape + (C,)), dtype)


def _conditional_maf_chain(dtype, rng, layers="all_layers"):
  """Two conditional MAFs (`AutoregressiveNetwork(conditional=True)`) with a `Permute` between, one condition per
  point, keyed by bijector name as TFP's `Chain` takes it."""
  made = lambda: _made(dtype, rng, dim=D, conditional_size=C, conditional_layers=layers)  # noqa: E731
  bijector = tfb.Chain([tfb.MaskedAutoregressiveFlow(made(), name="maf_a"), tfb.Permute(rng.permutation(D)),
                        tfb.MaskedAutoregressiveFlow(made(), name="maf_b"), tfb.Shift(_vec(rng, dtype, -1., 1.))])
  flow = tfd.TransformedDistribution(_mvn_diag(rng, dtype), bijector)
  condition = _condition(rng, dtype, NUM_POINTS)
  kwargs = dict(bijector_kwargs={"maf_a": dict(conditional_input=condition),
                                 "maf_b": dict(conditional_input=condition[::-1])})
  return flow, _structure_points(flow, **kwargs), kwargs


def _conditional_maf_one_condition(dtype, rng):
  """A bare conditional MAF (condition added at the first layer only) and one condition `[C]` for every point."""
  flow = tfd.TransformedDistribution(_mvn_tril(rng, dtype), tfb.MaskedAutoregressiveFlow(
      _made(dtype, rng, dim=D, conditional_size=C, conditional_layers="first_layer")))
  kwargs = dict(bijector_kwargs=dict(conditional_input=_condition(rng, dtype)))
  return flow, _structure_points(flow, **kwargs), kwargs


def _conditional_maf_one_point(dtype, rng):
  """One point `[D]` and conditions `[N, C]`: the condition gives the batch, one Hessian per condition."""
  flow = tfd.TransformedDistribution(_mvn_diag(rng, dtype), tfb.MaskedAutoregressiveFlow(
      _made(dtype, rng, dim=D, conditional_size=C)))
  kwargs = dict(bijector_kwargs=dict(conditional_input=_condition(rng, dtype, NUM_POINTS)))
  return flow, _structure_points(flow, **kwargs)[0], kwargs


def _conditional_iaf(dtype, rng):
  """An IAF of a conditional network: `Invert(MAF)` takes its condition through `forward`."""
  flow = tfd.TransformedDistribution(_mvn_diag(rng, dtype), tfb.Chain([tfb.Shift(_vec(rng, dtype, -1., 1.)), tfb.Invert(
      tfb.MaskedAutoregressiveFlow(_made(dtype, rng, dim=D, conditional_size=C)), name="iaf")]))
  kwargs = dict(bijector_kwargs={"iaf": dict(conditional_input=_condition(rng, dtype, NUM_POINTS))})
  return flow, _structure_points(flow, **kwargs), kwargs


def _conditional_inverted_real_nvp(dtype, rng):
  """`Invert` of a conditional RealNVP: its condition reaches the coupling's conditioner through `forward`."""
  flow = tfd.TransformedDistribution(_mvn_diag(rng, dtype), tfb.Chain([tfb.Shift(_vec(rng, dtype, -1., 1.)), tfb.Invert(
      _real_nvp_dense(dtype, rng, dim=D, conditional_size=C), name="inverted_coupling")]))
  kwargs = dict(bijector_kwargs={"inverted_coupling": dict(conditional_input=_condition(rng, dtype, NUM_POINTS))})
  return flow, _structure_points(flow, **kwargs), kwargs


def _conditional_real_nvp(dtype, rng):
  """RealNVP with the package's dense conditioner reading `[y_C, c]`, and one with a callable conditioner."""
  condition = _condition(rng, dtype, NUM_POINTS)
  kernel = tf.constant(rng.normal(size=(2 + C, 2 * (D - 2))) * 0.6, dtype)

  def shift_and_log_scale(x, output_units, conditional_input):
    inputs = tf.concat([x, tf.broadcast_to(conditional_input, tf.concat([tf.shape(x)[:-1], [C]], 0))], -1)
    hidden = tf.tanh(tf.einsum("...i,ij->...j", inputs, kernel))
    return hidden[..., :output_units], 0.5 * hidden[..., output_units:]

  bijector = tfb.Chain([
      _real_nvp_dense(dtype, rng, dim=D, conditional_size=C, name="coupling_a"), tfb.Permute(rng.permutation(D)),
      tfb.RealNVP(num_masked=2, shift_and_log_scale_fn=shift_and_log_scale, name="coupling_b")])
  flow = tfd.TransformedDistribution(_mvn_tril(rng, dtype), bijector)
  kwargs = dict(bijector_kwargs={"coupling_a": dict(conditional_input=condition),
                                 "coupling_b": dict(conditional_input=condition[:1])})
  return flow, _structure_points(flow, **kwargs), kwargs


def _conditional_nested(dtype, rng):
  """A conditional flow as the base of another: the condition reaches it through `distribution_kwargs`."""
  inner = tfd.TransformedDistribution(_mvn_diag(rng, dtype), tfb.MaskedAutoregressiveFlow(
      _made(dtype, rng, dim=D, conditional_size=C), name="inner_maf"))
  flow = tfd.TransformedDistribution(
      inner, tfb.Chain([_sinh_arcsinh(rng, dtype), tfb.ScaleMatvecTriL(_tril(rng, dtype))]))
  kwargs = dict(distribution_kwargs=dict(bijector_kwargs=dict(conditional_input=_condition(rng, dtype, NUM_POINTS))))
  return flow, _structure_points(flow, **kwargs), kwargs


# -- user-written bijectors, and the forms users write ------------------------------------------------------


def _research_style(dtype, rng):
  """MAF stages with `Permute` and `BatchNormalization` between, a post-affine layer and a hand-written map onto
  a box: what published research code builds (the box map and `Shear` have no rule)."""
  # The post-affine layer keeps what reaches the box map O(1), as a trained flow's would be.
  layers = [BoxMap(tf.constant(-2., dtype), tf.constant(3., dtype)), tfb.Shift(_vec(rng, dtype, -0.5, 0.5)),
            tfb.Scale(tf.constant(0.06, dtype)), tfb.ScaleMatvecTriL(_tril(rng, dtype))]
  for stage in range(2):
    layers += [tfb.MaskedAutoregressiveFlow(_made(dtype, rng, dim=D), name=f"maf{stage}"),
               tfb.Permute(rng.permutation(D))]
  layers += [Shear(tf.constant(rng.normal(size=(D, D)) * 0.7, dtype)), cases_batch_norm(dtype, rng)]
  flow = tfd.TransformedDistribution(_mvn_diag(rng, dtype), tfb.Chain(layers))
  return flow, _structure_points(flow)


def _batched_parameters(dtype, rng):
  """Bijector parameters with a batch of their own (`[B, 1]` and `[B, D]`), points `[N, 1, D]` broadcast against
  them, and scalar parameters as Python numbers."""
  bijector = tfb.Chain([tfb.Scale(_vec(rng, dtype, 0.5, 2., (B, 1))),
                        tfb.Softplus(hinge_softness=_vec(rng, dtype, 0.5, 1.5, (B, D))),
                        tfb.Shift(np.asarray(rng.normal(), dtype)), tfb.ScaleMatvecTriL(_tril(rng, dtype))])
  flow = tfd.TransformedDistribution(_mvn_diag(rng, dtype), bijector)
  return flow, _structure_points(flow)[:, :1]


def _batch_norm_under_batched_parameters(dtype, rng):
  """A `BatchNormalization` layer built for points `[N, B, D]`, in a flow with a batch `[B]` of parameters (a
  `[B, D]` scale and an MVN batch): every layer sees points `[N, B, D]`, and this layer was built for them. (One
  built for `[N, D]` cannot be in such a flow: TFP itself raises, `BijectorCase.unbatched_points`.)"""
  bijector = tfb.Chain([tfb.Scale(_vec(rng, dtype, 0.5, 2., (B, D))), cases_batch_norm(dtype, rng, points=(1, B)),
                        _sinh_arcsinh(rng, dtype)])
  flow = tfd.TransformedDistribution(_mvn_diag(rng, dtype, batch=(B,)), bijector)
  return flow, _points(flow)


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
    f"{DEEP} nested, a batch [B] Shift at the 5th": _deeply_nested,
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
    "batch [B, 1] and [B, D] parameters, points [N, 1, D]": _batched_parameters,
    "BatchNormalization built for [N, B, D], batch [B] of parameters": _batch_norm_under_batched_parameters,
    # Events of other ranks and structures: Hessians over the flat event.
    "matrix events: Sample(Normal, [3, 2])": _matrix_sample,
    "Reshape to matrices, Permute(axis=-2)": _reshape,
    "Transpose, vector layer on matrix rows (fallback)": _transpose_and_row_layer,
    "Split into a list, JointMap": _split_and_joint_map,
    "Restructure into a dict, JointMap with RealNVP": _restructure_to_dict,
    "ScaleMatvecLinearOperatorBlock": _block_operator,
    "Invert(JointMap), Invert(Split) over a JointDistributionSequential": _inverted_structure,
    "scalar events": _scalar_events,
    "IteratedSigmoidCentered (event size changes)": _event_size_changing,
    "JointDistributionNamed (hierarchical)": _joint_named_hierarchical,
    "JointDistributionSequential": _joint_sequential,
    "JointDistributionCoroutine": _joint_coroutine,
    "JointDistributionSequentialAutoBatched": _joint_auto_batched,
    "JointDistributionNamedAutoBatched": _joint_named_auto_batched,
    "JointDistributionCoroutineAutoBatched": _joint_coroutine_auto_batched,
    "JointMap over a JointDistributionNamed": _posterior_flow_over_joint,
    "build_affine_surrogate_posterior (DeferredModule)": _surrogate_posterior,
    # Conditional flows.
    "conditional MAFs in a Chain, [N, C] conditions": _conditional_maf_chain,
    "conditional MAF, one [C] condition": _conditional_maf_one_condition,
    "conditional MAF, one point and [N, C] conditions": _conditional_maf_one_point,
    "conditional IAF": _conditional_iaf,
    "conditional RealNVPs (dense and callable conditioners)": _conditional_real_nvp,
    "conditional inverted RealNVP": _conditional_inverted_real_nvp,
    "conditional flow as a base (distribution_kwargs)": _conditional_nested,
    # User-written bijectors.
    "research-style: MAF stages, BatchNorm, box map, shear": _research_style,
    # Large D: the shared matrices' GEMM path.
    f"dense affine layers at D = {LARGE_D}": _large_affine,
}
NAMES = sorted(FLOWS)

# One flow per code path that graph mode could change, also called in a user's own `tf.function`: closed-form,
# diagonal-autodiff and full-autodiff bases, fallback layers, Invert, nesting, broadcasting against the
# distribution's batch, structures and conditions.
GRAPH = ["MultivariateNormalTriL", "Sample(StudentT) (diagonal autodiff)", "MultivariateStudentT (full autodiff)",
         "mixed chain", "chain with Ascending and Invert(RealNVP)", "nested x3 over MultivariateStudentT",
         "batch [D] Sample(Normal), one point [D]", "batch [B, 1] fallback layer, points [N, 1, D]",
         "Restructure into a dict, JointMap with RealNVP", "JointDistributionNamed (hierarchical)",
         "build_affine_surrogate_posterior (DeferredModule)", "conditional MAFs in a Chain, [N, C] conditions",
         "conditional MAF, one point and [N, C] conditions", "research-style: MAF stages, BatchNorm, box map, shear"]

# Flows of the registry whose every op XLA compiles well, at the registry's few points (`execution.py`; their
# triangular solves too, of at most `execution._MAX_SIZE_SOLVES` coordinates): their sweeps are compiled, every
# other flow's sweep runs as traced (`test_flow_matches_references` checks both).
COMPILED = ["conditional MAFs in a Chain, [N, C] conditions", "conditional MAF, one point and [N, C] conditions",
            "matrix events: Sample(Normal, [3, 2])", "scalar events", "batch [D] Sample(Normal), one point [D]",
            "BatchNormalization built for [N, B, D], batch [B] of parameters",
            f"{DEEP} nested, a batch [B] Shift at the 5th",
            # Triangular solves (affine layers, `MultivariateNormalTriL` bases) of at most 16 coordinates.
            "Independent(Logistic) (diagonal autodiff)", "Independent(Normal)",
            "Independent(Uniform) (constant density)",
            "MultivariateNormalDiag", "MultivariateNormalFullCovariance", "MultivariateNormalTriL",
            "Reshape to matrices, Permute(axis=-2)", "Sample(Normal)", "ScaleMatvecLinearOperatorBlock",
            "Split into a list, JointMap", "bare MultivariateNormalTriL",
            "batch [B, 1] and [B, D] parameters, points [N, 1, D]", "batch [B] MVN, one point [D]",
            "batch [B], points [N, B, D]", "build_affine_surrogate_posterior (DeferredModule)",
            "conditional MAF, one [C] condition", "conditional flow as a base (distribution_kwargs)",
            "tfp_hessian.TransformedDistribution",
            # An inverted coupling layer's block form solves nothing.
            "conditional inverted RealNVP",
            # `ScaleMatvecLU` (its permutation's `GatherNd`, its triangular solves).
            "mixed chain", "nested", "stock over tfp_hessian.TransformedDistribution"]

# Flows of the registry whose sweep as a whole is not compiled (a triangular solve of more than 16 coordinates in
# the inverse pass) but whose pull-back is, alone, at the registry's points (`execution.pull_back`): enough
# coordinates to pay.
PULL_BACK_COMPILED = [f"dense affine layers at D = {LARGE_D}"]

# Every flow runs in float64 in CI, the precision the package's exactness is checked in; float32 runs there for the
# GRAPH flows (one per code path) and for all flows in the full suite (`slow`: CI_RUN_SLOW=1), to keep CI in time.
FLOW_CASES = [pytest.param(name, dtype, id=f"{name}-{dtype.__name__}",
                           marks=() if dtype is np.float64 or name in GRAPH else pytest.mark.slow)
              for name in NAMES for dtype in DTYPES]
# `tf.hessians` and nested tapes differentiate the same `log_prob` by TensorFlow's autodiff (a graph's symbolic
# gradients, a recorded tape) and agree with each other to rounding, while tracing `tf.hessians` takes a third to
# a half of a flow's time. Every flow is compared with nested tapes in CI (`test_flow_matches_references`), and
# with `tf.hessians` (float64) in the full suite; CI keeps one flow per code path (GRAPH).
TF_HESSIANS_CASES = [pytest.param(name, marks=() if name in GRAPH else pytest.mark.slow) for name in NAMES]


def make_flow(name, dtype, seed=0):
  """`(distribution, z, kwargs)` of the case: `kwargs` are `log_prob`'s (empty for unconditional flows)."""
  made = FLOWS[name](dtype, np.random.default_rng(seed))
  return made if len(made) == 3 else made + ({},)


def _batch_shape(distribution, z, kwargs=None):
  return tf.TensorShape(distribution.log_prob(z, **(kwargs or {})).shape)


def assert_matches_references(distribution, z, result, dtype, what="", kwargs=None, jit_compile=False):
  """Value, gradient and Hessian of `result` against nested tapes and `log_prob` at `z` (the Hessian against
  `tf.hessians`: `test_flow_matches_tf_hessians`); with `jit_compile`, nested tapes and `log_prob` compiled by
  XLA, which rounds otherwise than the graph (for a compiled `result`)."""
  kwargs = kwargs or {}
  rtol = RTOL[dtype]
  batch = _batch_shape(distribution, z, kwargs)
  size = tfp_hessian.flatten_event(distribution, z).shape[-1]
  assert result.hessian.shape == batch.concatenate([size, size])
  assert result.gradient.shape == batch.concatenate([size])
  assert result.log_prob.shape == batch
  for value in result:
    assert value.dtype == dtype
  def references(z, kwargs):
    return (*reference.tape_derivatives(distribution, z, **kwargs), distribution.log_prob(z, **kwargs))

  if jit_compile:
    references = tf.function(references, jit_compile=True)
  gradient, hessian, log_prob = references(z, kwargs)
  assert_close(result.hessian, hessian, rtol, what=f"{what}Hessian vs tapes")
  assert_close(result.gradient, gradient, rtol, 1, what=f"{what}gradient")
  expected_log_prob = tf.broadcast_to(log_prob, batch)
  assert_close(result.log_prob[..., None], expected_log_prob[..., None], rtol, 1, what=f"{what}log_prob")


def assert_same_derivatives(actual, expected, rtol, what):
  assert_close(actual.log_prob[..., None], expected.log_prob[..., None], rtol, 1, what=f"{what} log_prob")
  assert_close(actual.gradient, expected.gradient, rtol, 1, what=f"{what} gradient")
  assert_close(actual.hessian, expected.hessian, rtol, 2, what=f"{what} Hessian")
  for a, e in zip(actual, expected):
    assert a.shape == e.shape and a.dtype == e.dtype


# -- tests --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name, dtype", FLOW_CASES)
def test_flow_matches_references(name, dtype):
  distribution, z, kwargs = make_flow(name, dtype)
  result = tfp_hessian.log_prob_and_derivatives(distribution, z, **kwargs)
  assert_matches_references(distribution, z, result, dtype, kwargs=kwargs)
  np.testing.assert_array_equal(result.hessian, tf.linalg.matrix_transpose(result.hessian))
  # The first eager call runs op by op, the later ones a compiled function (`compiled.py`): the same derivatives,
  # and `log_prob_hessian` is the compiled function's Hessian, bit for bit.
  plans = []
  with execution.observe(plans.append):
    compiled = tfp_hessian.log_prob_and_derivatives(distribution, z, **kwargs)
  # Its sweep was traced once, compiled by XLA exactly for the flows in COMPILED, its pull-back alone for those in
  # PULL_BACK_COMPILED, and the plan says why.
  assert [(plan.xla, plan.pull_back_xla) for plan in plans] == [
      (name in COMPILED, name in COMPILED + PULL_BACK_COMPILED)], [plan.reason for plan in plans]
  expected = ("XLA-compiled" if name in COMPILED else "pull-back XLA-compiled" if name in PULL_BACK_COMPILED
              else "not compiled")
  assert plans[0].reason.startswith(expected), plans[0].reason
  if dtype is np.float32 and plans[0].pull_back_xla:
    # XLA rounds otherwise than the graph: in float32 a compiled sweep is compared with the references compiled
    # the same way (the affine surrogate posterior's ill-conditioned gradient is 1.6e-4 apart compiled and op by
    # op, as nested tapes are from nested tapes compiled); its accuracy against float64, point by point, in
    # `test_execution.test_compiled_float32_no_less_accurate_than_tapes`.
    assert_matches_references(distribution, z, compiled, dtype, "compiled: ", kwargs, jit_compile=True)
  else:
    assert_same_derivatives(compiled, result, RTOL[dtype], "compiled vs op by op:")
  np.testing.assert_array_equal(tfp_hessian.log_prob_hessian(distribution, z, **kwargs), compiled.hessian)
  if name in GRAPH and dtype is np.float64:
    # The call inside a user's own `tf.function` agrees with both eager ones.
    graph = tf.function(lambda z, kwargs: tfp_hessian.log_prob_and_derivatives(distribution, z, **kwargs))(z, kwargs)
    assert_same_derivatives(graph, compiled, RTOL[dtype], "graph vs eager:")


@pytest.mark.parametrize("name", TF_HESSIANS_CASES)
def test_flow_matches_tf_hessians(name):
  distribution, z, kwargs = make_flow(name, np.float64)
  assert_close(tfp_hessian.log_prob_hessian(distribution, z, **kwargs),
               reference.naive_hessian(distribution, z, **kwargs), RTOL[np.float64], what="Hessian vs tf.hessians")


@pytest.mark.parametrize("name", ["batch [B] Independent(Logistic), points [N, 1, D]",
                                  "batch [B, 1] fallback layer, points [N, 1, D]"])
def test_graph_with_unknown_batch_shape(name):
  """Points of statically unknown batch shape (`input_signature`), broadcast at run time."""
  distribution, z, _ = make_flow(name, np.float64)
  signature = [tf.TensorSpec([None] * (z.shape.rank - 1) + [D], z.dtype)]
  sweep = tf.function(lambda z: tfp_hessian.log_prob_and_derivatives(distribution, z), input_signature=signature)
  traced = sweep.get_concrete_function().structured_outputs.hessian.shape
  assert traced.rank == _batch_shape(distribution, z).rank + 2 and traced[-2:] == [D, D]
  assert_matches_references(distribution, z, sweep(z), np.float64)


# The flows where a cached inverse could cut `z` off a tape: coupling and fallback layers, nesting, autodiff bases.
SAMPLED = ["chain with RealNVP", "chain with Ascending and Invert(RealNVP)", "nested"]


@pytest.mark.parametrize("dtype", FLOAT32_SLOW)
@pytest.mark.parametrize("name", SAMPLED)
def test_sampled_points_match_copies(name, dtype):
  """`z` straight from `sample()` (TFP caches its inverse) gives what a copy of it gives."""
  distribution, _, _ = make_flow(name, dtype)
  sampled = distribution.sample(NUM_POINTS, seed=SEED)
  copy = tf.constant(sampled.numpy())
  result = tfp_hessian.log_prob_and_derivatives(distribution, sampled)
  assert_matches_references(distribution, copy, result, dtype, what="sampled: ")
  copied = tfp_hessian.log_prob_and_derivatives(distribution, tf.identity(sampled))
  assert_same_derivatives(result, copied, RTOL[dtype], "sampled vs tf.identity copy:")


@pytest.mark.parametrize("name", SAMPLED)
def test_sampled_points_in_graph(name):
  """Sampling and the sweep in one `tf.function`: the cache is keyed by graph tensors there."""
  distribution, _, _ = make_flow(name, np.float64)

  @tf.function
  def sample_and_derivatives():
    z = distribution.sample(NUM_POINTS, seed=SEED)
    return z, tfp_hessian.log_prob_and_derivatives(distribution, z)

  z, result = sample_and_derivatives()
  assert_matches_references(distribution, tf.constant(z.numpy()), result, np.float64, what="graph sampled: ")


@pytest.mark.parametrize("dtype", FLOAT32_SLOW)
@pytest.mark.parametrize("name", ["chain with IAF", "nested x3 over MultivariateStudentT",
                                  "batch [B], points [N, B, D]"])
def test_sample_and_log_prob_derivatives(name, dtype):
  """The sweep over the sampling pass's cached inverses (an IAF's sequential inverse never runs) gives what the
  references give at a copy of `z`."""
  distribution, _, _ = make_flow(name, dtype)
  z, result = tfp_hessian.sample_and_log_prob_derivatives(distribution, NUM_POINTS, seed=SEED)
  assert z.shape == tf.TensorShape([NUM_POINTS]).concatenate(distribution.batch_shape).concatenate([D])
  copy = tf.constant(z.numpy())
  assert_matches_references(distribution, copy, result, dtype, what="sample_and_log_prob_derivatives: ")
  # Later eager calls run a compiled function (`compiled.py`): the same points, the same Hessians to rounding. The
  # graph runs the kernels grappler's remapper fuses, which round differently from eager dispatch: in float32 the
  # IAF chain's points differ by 7e-7 (1.2e-6 relative; identical with the remapper off, session 32).
  z_again, hessian = tfp_hessian.sample_and_log_prob_hessian(distribution, NUM_POINTS, seed=SEED)
  assert_close(z_again, z, RTOL[dtype], 1, what="compiled vs op by op, points")
  assert_close(hessian, result.hessian, RTOL[dtype], what="compiled vs op by op")


@pytest.mark.parametrize("shape", [(D,), (6, D), (2, 3, D)], ids=lambda s: str(list(s)))
@pytest.mark.parametrize("name", ["nested x3 over MultivariateStudentT", "Sample(StudentT) (diagonal autodiff)"])
def test_point_batch_shapes(name, shape):
  """`z` of shape `[D]` (no batch), `[N, D]` and `[A, B, D]` give `[*batch, D, D]`, point by point."""
  distribution, _, _ = make_flow(name, np.float64)
  z = tf.reshape(_points(distribution, (6,)), (-1, D))[:int(np.prod(shape[:-1]))]
  z = tf.reshape(z, shape)
  result = tfp_hessian.log_prob_and_derivatives(distribution, z)
  assert_matches_references(distribution, z, result, np.float64)


@pytest.mark.parametrize("dtype", FLOAT32_SLOW)
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
  compiled = flow.log_prob_and_derivatives(z)  # the first eager call runs op by op, later ones compiled
  np.testing.assert_array_equal(flow.log_prob_hessian(z), compiled.hessian)
  graph = tf.function(flow.log_prob_hessian)(z)
  assert_close(graph, result.hessian, RTOL[dtype], what="graph log_prob_hessian")


def test_batch_shape_asks_each_nested_base_once(monkeypatch):
  """`sweep.batch_shape` walks nested distributions once: TFP's own asks each base twice per level (and its cache
  of `batch_shape` never hits), `2^DEEP` times at the deeply nested flow's base."""
  distribution, z, _ = make_flow(f"{DEEP} nested, a batch [B] Shift at the 5th", np.float64)
  assert distribution.log_prob(z).shape == [NUM_POINTS, B]
  base = distribution
  while isinstance(base, tfd.TransformedDistribution):
    base = base.distribution
  calls = []
  original = type(base)._batch_shape
  monkeypatch.setattr(type(base), "_batch_shape", lambda self: calls.append(self) or original(self))
  assert sweep.batch_shape(distribution) == [B]
  assert calls == [base]


# Nested flows, batch shapes from the base and from layers, structured events and a conditional base (every flow's
# Hessian has the batch shape of its `log_prob`: `test_flow_matches_references`). TFP's own `batch_shape` takes
# seconds at the deeply nested flow (12 s at depth 8, `benchmarks/nested_depth.py`), minutes at depth 10.
BATCH_SHAPE_CASES = ["nested", "nested x3 over MultivariateStudentT", "batch [B], points [N, B, D]",
                     "batch [B, 1] fallback layer, points [N, 1, D]",
                     "BatchNormalization built for [N, B, D], batch [B] of parameters",
                     "Restructure into a dict, JointMap with RealNVP", "JointDistributionNamed (hierarchical)",
                     "conditional flow as a base (distribution_kwargs)"]


@pytest.mark.parametrize("name", BATCH_SHAPE_CASES)
def test_batch_shape_is_tfps(name):
  distribution, _, _ = make_flow(name, np.float64)
  assert sweep.batch_shape(distribution) == distribution.batch_shape


def test_fallback_flows_have_fallback_layers():
  """The flows named for a fallback layer have one: neither Ascending nor Softfloor has an analytic rule."""
  assert not registry.has_analytic_rule(tfb.Ascending())
  assert not registry.has_analytic_rule(tfb.Softfloor(1.))
