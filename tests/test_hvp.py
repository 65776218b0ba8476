"""`tfp_hessian.log_prob_hvp` (and `hvp.hessian_operator`) against nested tapes and the dense sweep, times `v`."""

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_probability as tfp

import tfp_hessian
from tfp_hessian import hvp, reference

from cases import BIJECTORS, DIM, DTYPES, FLOAT32_SLOW, RTOL, assert_close, flow_and_points, random_base
from factories import lower_triangular
from harness.methods import forward_over_reverse  # benchmarks/harness/ (see tests/conftest.py)

tfb, tfd = tfp.bijectors, tfp.distributions

# Elementwise + affine chain, coupling (callable and dense conditioners), MAF with a MADE, an IAF (a while loop in
# log_prob) and a layer served by the autodiff fallback.
FLOWS = ["Chain", "RealNVP", "RealNVP(DenseShiftAndLogScale)", "MAF(MADE tanh)", "IAF: Invert(MAF(MADE tanh))",
         "Ascending (fallback)"]


def _vectors(shape, dtype, seed=1):
  return tf.constant(np.random.default_rng(seed).normal(size=shape), dtype)


def _expected(hessian, v):
  return tf.linalg.matvec(hessian, v)


@pytest.mark.parametrize("dtype", FLOAT32_SLOW)
@pytest.mark.parametrize("name", FLOWS)
def test_against_tapes_and_dense_sweep(name, dtype):
  flow, z = flow_and_points(BIJECTORS[name], dtype)
  v = _vectors(z.shape, dtype)
  product = tfp_hessian.log_prob_hvp(flow, z, v)
  assert product.shape == z.shape and product.dtype == dtype
  rtol = RTOL[dtype]
  assert_close(product, _expected(reference.tape_hessian(flow, z), v), rtol, 1, what="H v vs tapes")
  assert_close(product, _expected(tfp_hessian.log_prob_hessian(flow, z), v), rtol, 1, what="H v vs sweep")


@pytest.mark.parametrize("name", ["Chain", "MAF(MADE tanh)", "IAF: Invert(MAF(MADE tanh))"])
def test_graph_matches_eager(name):
  flow, z = flow_and_points(BIJECTORS[name], np.float64)
  v = _vectors(z.shape, np.float64)
  graph = tf.function(lambda z, v: tfp_hessian.log_prob_hvp(flow, z, v), autograph=False)
  assert_close(graph(z, v), tfp_hessian.log_prob_hvp(flow, z, v), RTOL[np.float64], 1, what="graph H v")


def test_graph_with_unknown_batch_shape():
  flow, z = flow_and_points(BIJECTORS["RealNVP"], np.float64)
  v = _vectors(z.shape, np.float64)
  spec = tf.TensorSpec([None, DIM], tf.float64)
  graph = tf.function(lambda z, v: tfp_hessian.log_prob_hvp(flow, z, v), input_signature=[spec, spec])
  assert graph.get_concrete_function().structured_outputs.shape.as_list() == [None, DIM]
  assert_close(graph(z, v), _expected(reference.tape_hessian(flow, z), v), RTOL[np.float64], 1)


def _batched_flow(dtype, rng):
  """A flow with batch shape [2]: two bases' means under one chain."""
  base = random_base(dtype, rng)
  base = tfd.MultivariateNormalTriL(tf.constant(rng.normal(size=(2, DIM)), dtype), base.scale.to_dense())
  bijector = tfb.Chain([tfb.Softplus(), tfb.ScaleMatvecTriL(lower_triangular(rng, dtype, DIM, 0.4, (1., 2.),
                                                                            strict=False))])
  return tfd.TransformedDistribution(base, bijector)


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: d.__name__)
@pytest.mark.parametrize("z_shape, v_shape, out_shape", [
    ((DIM,), (DIM,), (2, DIM)),  # one point, shared by both batch members: each gets its own product
    ((3, 1, DIM), (3, 2, DIM), (3, 2, DIM)),
    ((3, 2, DIM), (DIM,), (3, 2, DIM)),  # one vector for every point
    ((4, 3, 2, DIM), (3, 1, DIM), (4, 3, 2, DIM)),
], ids=str)
def test_distribution_batch_shape_and_broadcasting(z_shape, v_shape, out_shape, dtype):
  rng = np.random.default_rng(4)
  flow = _batched_flow(dtype, rng)
  z = tf.constant(np.reshape(flow.sample(int(np.prod(z_shape[:-1])) // 2 + 1, seed=(0, 4)).numpy()
                             .reshape(-1, DIM)[:int(np.prod(z_shape[:-1]))], z_shape), dtype)
  v = _vectors(v_shape, dtype)
  product = tfp_hessian.log_prob_hvp(flow, z, v)
  assert product.shape == out_shape
  expected = _expected(reference.tape_hessian(flow, z), tf.broadcast_to(v, out_shape))
  assert_close(product, expected, RTOL[dtype], 1)


@pytest.mark.parametrize("shape", [(DIM,), (6, DIM), (2, 3, DIM)], ids=str)
def test_point_batch_shapes(shape):
  name = "MAF(MADE tanh)"
  flow, z = flow_and_points(BIJECTORS[name], np.float64, num_points=6, edges=False)
  z = tf.reshape(z, (-1, DIM))[:int(np.prod(shape[:-1]))]
  z = tf.reshape(z, shape)
  v = _vectors(shape, np.float64)
  product = tfp_hessian.log_prob_hvp(flow, z, v)
  assert product.shape == shape
  assert_close(product, _expected(reference.tape_hessian(flow, z), v), RTOL[np.float64], 1)


@pytest.mark.parametrize("name", ["Chain", "MAF(MADE tanh)"])
def test_sampled_points_are_not_cut_off(name):
  """Points straight from `flow.sample` (TFP caches their inverses) give the products of their copies."""
  flow, _ = flow_and_points(BIJECTORS[name], np.float64)
  z = flow.sample(4, seed=(0, 5))
  v = _vectors(z.shape, np.float64)
  copy = tf.constant(z.numpy())
  assert_close(tfp_hessian.log_prob_hvp(flow, z, v), tfp_hessian.log_prob_hvp(flow, copy, v), RTOL[np.float64], 1)
  assert_close(tfp_hessian.log_prob_hvp(flow, z, v), _expected(tfp_hessian.log_prob_hessian(flow, copy), v),
               RTOL[np.float64], 1)


@pytest.mark.parametrize("name, dtype", [("Chain", np.float32), ("MAF(MADE tanh)", np.float64)])
def test_hessian_operator_matches_and_runs_in_a_while_loop(name, dtype):
  flow, z = flow_and_points(BIJECTORS[name], dtype)
  vectors = [_vectors(z.shape, dtype, seed) for seed in range(3)]
  points, matvec = hvp.hessian_operator(flow, z)
  expected = [tfp_hessian.log_prob_hvp(flow, z, v) for v in vectors]
  for v, product in zip(vectors, expected):
    assert_close(matvec(v), product, RTOL[dtype], 1, what="hessian_operator H v")

  @tf.function(autograph=False)
  def power_steps(z, v):
    _, matvec = hvp.hessian_operator(flow, z)
    return tf.while_loop(lambda i, w: i < 2, lambda i, w: (i + 1, matvec(w)), (0, v))[1]

  twice = tfp_hessian.log_prob_hvp(flow, points, expected[0])
  assert_close(power_steps(z, vectors[0]), twice, RTOL[dtype], 1, what="H (H v) in a while loop")


def test_forward_over_reverse_agrees():
  """The benchmark's alternative computes the same products."""
  flow, z = flow_and_points(BIJECTORS["MAF(MADE tanh)"], np.float64)
  v = _vectors(z.shape, np.float64)
  assert_close(forward_over_reverse(flow, tf.identity(z), v), tfp_hessian.log_prob_hvp(flow, z, v),
               RTOL[np.float64], 1)


# Bad input: every check raises before any product is taken.


@pytest.fixture(name="flow")
def _flow(monkeypatch):
  flow, _ = flow_and_points(BIJECTORS["Chain"], np.float64)

  def refuse(*args):
    raise AssertionError("a product was taken before the input was checked")

  monkeypatch.setattr(hvp, "reverse_over_reverse", refuse)
  return flow


@pytest.mark.parametrize("v, error, match", [
    (np.ones((3, DIM), np.float32), TypeError, "`v` must have the points' dtype float64.*got dtype float32"),
    (np.ones((3, DIM), np.int64), TypeError, "`v` must have the points' dtype float64.*got dtype int64"),
    (np.ones((3, DIM + 1)), ValueError,
     r"`v` must have the points' shape \[\*batch, D\] = \(3, 5\).*got shape \(3, 6\)"),
    (np.ones((2, DIM)), ValueError, r"= \(3, 5\).*got shape \(2, 5\)"),
    (np.ones((4, 3, DIM)), ValueError, r"= \(3, 5\).*got shape \(4, 3, 5\)"),
    (np.float64(1.), ValueError, r"= \(3, 5\).*got shape \(\)"),
], ids=["float32", "int64", "event size", "batch", "more batch axes", "scalar"])
def test_bad_vectors(flow, v, error, match):
  with pytest.raises(error, match=match):
    tfp_hessian.log_prob_hvp(flow, np.zeros((3, DIM)), v)


def test_bad_vectors_to_the_operator():
  flow, z = flow_and_points(BIJECTORS["Chain"], np.float64)
  _, matvec = hvp.hessian_operator(flow, z)
  with pytest.raises(ValueError, match="`v` must have the points' shape"):
    matvec(np.ones((1, 2, DIM)))


@pytest.mark.parametrize("z, error, match", [
    (np.zeros((3, DIM), np.float32), TypeError, "`z` has dtype float32 but the distribution has dtype float64"),
    (np.zeros((3, DIM + 1)), ValueError, "event size D = 5"),
    (np.float64(0.), ValueError, r"\[\*batch, D\]"),
], ids=["dtype", "event size", "scalar"])
def test_bad_points(flow, z, error, match):
  with pytest.raises(error, match=match):
    tfp_hessian.log_prob_hvp(flow, z, np.ones(DIM))


def test_not_a_distribution():
  with pytest.raises(TypeError, match="must be a tfp.distributions.Distribution"):
    tfp_hessian.log_prob_hvp(tfb.Exp(), np.zeros((3, DIM)), np.ones((3, DIM)))


def test_unbroadcastable_vectors_in_graph_raise_when_run():
  flow, z = flow_and_points(BIJECTORS["Chain"], np.float64)
  spec = tf.TensorSpec([None, DIM], tf.float64)
  graph = tf.function(lambda z, v: tfp_hessian.log_prob_hvp(flow, z, v), input_signature=[spec, spec])
  with pytest.raises(tf.errors.InvalidArgumentError):
    graph(z, tf.ones([2, DIM], tf.float64))
