"""`BatchNormalization`: inference mode is served analytically (cases.py); training mode is refused up front."""

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_probability as tfp
import tf_keras

import tfp_hessian
from tfp_hessian import bijectors as hb
from tfp_hessian import reference, registry
from tfp_hessian.pullback import ElementwisePullback

from cases import BIJECTORS, DIM, RTOL, assert_close, random_base

tfb = tfp.bijectors
tfd = tfp.distributions


def _inference_bijector():
  return BIJECTORS["BatchNormalization"].make(np.float64, np.random.default_rng(0))


def _training_flows():
  """Flows whose BatchNormalization is in training mode, stock and wrapped, directly and inside structure."""
  rng = np.random.default_rng(0)
  base = random_base(np.float64, rng)
  layer = _inference_bijector().batchnorm
  training = tfb.BatchNormalization(layer, training=True)
  return layer, {
      "stock": tfd.TransformedDistribution(base, training),
      "wrapped": tfd.TransformedDistribution(base, hb.BatchNormalization(layer)),  # TFP's default is training.
      "in a Chain": tfd.TransformedDistribution(base, tfb.Chain([tfb.Shift(tf.ones(DIM, tf.float64)), training])),
      # `forward` uses the moving statistics, but TFP's log-det of the inverted flow is the batch's.
      "Invert": tfd.TransformedDistribution(base, tfb.Invert(training)),
      "training as a variable": tfd.TransformedDistribution(
          base, tfb.BatchNormalization(layer, training=tf.Variable(False))),
  }


@pytest.mark.parametrize("name", ["stock", "wrapped", "in a Chain", "Invert", "training as a variable"])
def test_training_mode_raises_before_touching_the_layer(name):
  layer, flows = _training_flows()
  flow = flows[name]
  before = [v.numpy().copy() for v in layer.variables]
  z = tf.constant(np.random.default_rng(1).normal(size=(4, DIM)))
  with pytest.raises(ValueError, match=r"inference mode only.*training=False"):
    tfp_hessian.log_prob_hessian(flow, z)
  for old, variable in zip(before, layer.variables):
    np.testing.assert_array_equal(variable.numpy(), old, err_msg=f"{variable.name} changed")


class _CountingShift(tfb.Shift):
  """A `Shift` that counts its inverse calls (overriding `_inverse` sends it to the fallback, harmlessly)."""

  calls = 0

  def _inverse(self, y):
    type(self).calls += 1
    return super()._inverse(y)


def test_training_mode_is_refused_before_any_layer_runs():
  """The check is static, in the sweep's structure pass: layers on the `z` side are not inverted first."""
  layer, _ = _training_flows()
  flow = tfd.TransformedDistribution(random_base(np.float64, np.random.default_rng(0)), tfb.Chain(
      [_CountingShift(tf.ones(DIM, tf.float64)), tfb.Invert(tfb.BatchNormalization(layer, training=True))]))
  with pytest.raises(ValueError, match=r"inference mode only"):
    tfp_hessian.log_prob_hessian(flow, tf.zeros([3, DIM], tf.float64))
  assert _CountingShift.calls == 0


def test_training_mode_is_truly_batch_dependent():
  """Why it is refused: TFP's own log density of a training-mode flow at a point depends on the other points."""
  _, flows = _training_flows()
  flow = flows["stock"]
  z = tf.constant(np.random.default_rng(1).normal(size=(4, DIM)))
  assert not np.allclose(flow.log_prob(tf.identity(z))[:1], flow.log_prob(tf.identity(z[:1])))


def test_inference_mode_is_elementwise_and_analytic():
  bijector = _inference_bijector()
  z = tf.constant(np.random.default_rng(1).normal(size=(4, DIM)))
  assert registry.has_analytic_rule(bijector)
  assert isinstance(hb.hessian_pullback(bijector, z), ElementwisePullback)
  assert isinstance(hb.hessian_pullback(tfb.Invert(bijector), z), ElementwisePullback)


def test_unbuilt_layer_in_inference_mode():
  """A fresh layer (built by the first call, with its initial statistics) needs no special care."""
  base = random_base(np.float64, np.random.default_rng(0))
  layer = tf_keras.layers.BatchNormalization(dtype=tf.float64)
  flow = tfd.TransformedDistribution(base, tfb.BatchNormalization(layer, training=False))
  z = tf.constant(np.random.default_rng(1).normal(size=(4, DIM)))
  assert not layer.built
  assert_close(tfp_hessian.log_prob_hessian(flow, z), reference.tape_hessian(flow, z), RTOL[np.float64])


def test_normalising_another_axis_is_not_supported():
  layer = tf_keras.layers.BatchNormalization(axis=0, dtype=tf.float64)
  bijector = tfb.BatchNormalization(layer, training=False)
  with pytest.raises(NotImplementedError, match="event axis"):
    hb.hessian_pullback(bijector, tf.zeros([4, DIM], tf.float64))


def test_points_of_another_rank_than_the_layer_was_built_for():
  """Keras fixes the layer's input rank when it is built; the rule says so instead of failing inside Keras."""
  bijector = _inference_bijector()  # Built on [1, D].
  with pytest.raises(ValueError, match="built for points of rank 2"):
    hb.hessian_pullback(bijector, tf.zeros([2, 3, DIM], tf.float64))
