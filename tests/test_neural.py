"""Neural flows across dimensions, and the conditioner forms TFP users write.

The registry (`cases.py`) checks every layer at D = 5; here MAF, IAF and RealNVP chains run at D = 2, 3 (odd)
and 64, and RealNVP takes TFP's own `real_nvp_default_template`, a Keras model inside a callable, and a
`bijector_fn` returning a spline.
"""

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_probability as tfp
import tf_keras

import tfp_hessian
from tfp_hessian import reference

from cases import RTOL, _made, _real_nvp_dense, assert_close

tfb = tfp.bijectors
tfd = tfp.distributions


def _chain(dim, rng, dtype=np.float64):
  """MAF, Permute, RealNVP, Permute, IAF: every neural rule in one flow, random weights."""
  return tfb.Chain([
      tfb.MaskedAutoregressiveFlow(_made(dtype, rng, dim=dim, hidden_units=(16, 16))),
      tfb.Permute(rng.permutation(dim)),
      _real_nvp_dense(dtype, rng, dim=dim, hidden_units=(16,)),
      tfb.Permute(rng.permutation(dim)),
      tfb.Invert(tfb.MaskedAutoregressiveFlow(_made(dtype, rng, dim=dim, hidden_units=(16,)))),
  ])


def _flow(dim, bijector, rng, dtype=np.float64):
  base = tfd.MultivariateNormalDiag(tf.constant(rng.normal(size=dim) * 0.3, dtype),
                                    tf.constant(rng.uniform(0.7, 1.3, dim), dtype))
  return tfd.TransformedDistribution(base, bijector)


@pytest.mark.parametrize("dim", [2, 3, pytest.param(64, marks=pytest.mark.slow)])  # 64: the same path, larger
def test_neural_chain_across_dimensions(dim):
  rng = np.random.default_rng(dim)
  flow = _flow(dim, _chain(dim, rng), rng)
  z = tf.constant(flow.sample(3, seed=(0, dim)).numpy())
  hessian = tf.function(lambda z: tfp_hessian.log_prob_hessian(flow, z))(z)
  assert_close(hessian, reference.tape_hessian(flow, z), RTOL[np.float64], what=f"D={dim} vs nested tapes")
  if dim <= 3:
    assert_close(hessian, reference.naive_hessian(flow, z), RTOL[np.float64], what=f"D={dim} vs tf.hessians")


def _keras_model_conditioner(dim, rng):
  """A tf-keras MLP called inside the RealNVP callable, as users write it."""
  masked = dim // 2
  model = tf_keras.Sequential([tf_keras.layers.Dense(12, activation="tanh", dtype="float64"),
                               tf_keras.layers.Dense(2 * (dim - masked), dtype="float64")])
  model(tf.zeros([1, masked], tf.float64))
  model.set_weights([w * 0 + rng.normal(size=w.shape) * 0.5 for w in model.get_weights()])

  def shift_and_log_scale(x, output_units):
    shift, log_scale = tf.split(model(x), 2, axis=-1)
    return shift, 0.5 * tf.tanh(log_scale)

  return tfb.RealNVP(num_masked=masked, shift_and_log_scale_fn=shift_and_log_scale)


def _default_template(dim, rng):
  del rng
  return tfb.RealNVP(num_masked=dim // 2,
                     shift_and_log_scale_fn=tfb.real_nvp_default_template(hidden_layers=[8, 8]))


def _spline_coupling(dim, rng):
  """`bijector_fn` returning a rational-quadratic spline per coordinate (the autodiff fallback)."""
  kernel = tf.constant(rng.normal(size=(dim // 2, 3 * 4 - 1)) * 0.5)

  def bijector_fn(x, output_units):
    params = tf.matmul(x, kernel)[..., tf.newaxis, :] + tf.zeros([output_units, 1], tf.float64)
    return tfb.RationalQuadraticSpline(
        bin_widths=tf.nn.softmax(params[..., :4]) * 6, bin_heights=tf.nn.softmax(params[..., 4:8]) * 6,
        knot_slopes=tf.nn.softplus(params[..., 8:]) + 1e-2, range_min=-3.)

  return tfb.RealNVP(num_masked=dim // 2, bijector_fn=bijector_fn)


@pytest.mark.parametrize("make", [_keras_model_conditioner, _default_template,
                                  # bijector_fn takes the autodiff fallback, as MAF(bijector_fn) in CI (cases.py)
                                  pytest.param(_spline_coupling, marks=pytest.mark.slow)],
                         ids=["keras model", "real_nvp_default_template", "bijector_fn spline"])
def test_real_nvp_conditioner_forms(make):
  dim = 5
  rng = np.random.default_rng(7)
  with tf.compat.v1.variable_scope(make.__name__):  # the template creates tf1-style variables
    flow = _flow(dim, make(dim, rng), rng)
  z = tf.constant(flow.sample(4, seed=(0, 3)).numpy())
  # The reference first: TFP's bijector cache would otherwise hand the eager tapes a tensor of the traced graph.
  expected = reference.tape_hessian(flow, z)
  # In tf.function only: eagerly, the spline's dense autodiff fallback re-traces its pfor on every call (~40 s).
  assert_close(tf.function(lambda z: tfp_hessian.log_prob_hessian(flow, z))(z), expected, RTOL[np.float64])
