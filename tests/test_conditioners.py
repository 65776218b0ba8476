"""Conditioner derivatives from kernels agree with autodiff of the same network; the rules use them."""

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_probability as tfp

from tfp_hessian import bijectors as hb
from tfp_hessian import conditioners

from cases import BIJECTORS, RTOL, assert_close, flow_and_points

tfb = tfp.bijectors

ACTIVATIONS = ["tanh", "sigmoid", "softplus", "elu", "swish", "relu", "linear"]


@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_dense_network_derivatives_match_autodiff(activation):
  rng = np.random.default_rng(0)
  sizes = [5, 9, 7, 6]
  layers = []
  for k, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:])):
    derivatives = conditioners.activation_derivatives(activation) if k + 2 < len(sizes) else None
    layers.append((tf.constant(rng.normal(size=(n_in, n_out))), tf.constant(rng.normal(size=n_out)), derivatives))

  def network(y):
    for kernel, bias, derivatives in layers:
      y = tf.tensordot(y, kernel, [[-1], [0]]) + bias
      if derivatives is not None:
        y = derivatives(y)[0]
    return y

  # [A, B, D] points, off every ReLU kink.
  y = tf.constant(rng.normal(size=(2, 3, 5)))
  weights = tf.constant(rng.normal(size=(2, 3, 6)))
  analytic = conditioners.DenseNetworkDerivatives(layers, y)
  tape = conditioners.AutodiffDerivatives(network, y)
  assert_close(analytic.outputs, tape.outputs, RTOL[np.float64], 1, what="outputs")
  assert_close(analytic.jacobian + tf.zeros_like(tape.jacobian), tape.jacobian, RTOL[np.float64], 2,
               what="jacobian")
  # Some outputs in another order (a permutation folded into a layer), and a block of them (a slice).
  columns = tf.constant([4, 0, 5, 2])
  for selected in (columns, slice(1, 4)):
    expected = conditioners.ConditionerDerivatives.jacobian_transpose_columns(tape, selected)
    assert_close(analytic.jacobian_transpose_columns(selected) + tf.zeros_like(expected), expected,
                 RTOL[np.float64], 2, what=f"jacobian columns {selected}")
  contraction = analytic.contract(weights)
  if activation in ("relu", "linear"):
    # Piecewise linear: the Hessian is zero wherever it exists.
    np.testing.assert_array_equal(contraction, np.zeros_like(contraction))
  assert_close(contraction, tape.contract(weights), RTOL[np.float64], 2, what="contraction")


@pytest.mark.parametrize("name", ["MAF(MADE tanh)", "MAF(MADE softplus, 1 layer)", "RealNVP(DenseShiftAndLogScale)"])
def test_known_networks_are_differentiated_from_their_kernels(name):
  flow, z = flow_and_points(BIJECTORS[name], np.float64)
  pullback = hb.hessian_pullback(flow.bijector, z)
  assert isinstance(pullback.conditioner, conditioners.DenseNetworkDerivatives)


@pytest.mark.parametrize("name", ["MAF(callable)", "RealNVP"])
def test_opaque_callables_are_differentiated_by_tapes(name):
  flow, z = flow_and_points(BIJECTORS[name], np.float64)
  pullback = hb.hessian_pullback(flow.bijector, z)
  assert isinstance(pullback.conditioner, conditioners.AutodiffDerivatives)


def test_conditioner_output_of_the_wrong_size_is_refused():
  def shift_and_log_scale(x, output_units):
    del output_units
    return x[..., :1], x[..., :1]  # one unit, broadcast silently by TFP

  coupling = tfb.RealNVP(num_masked=2, shift_and_log_scale_fn=shift_and_log_scale)
  flow = tfp.distributions.TransformedDistribution(
      tfp.distributions.MultivariateNormalDiag(tf.zeros(5, tf.float64)), coupling)
  with pytest.raises(ValueError, match=r"returned shift of shape .*expected its last dimension to match"):
    hb.hessian_pullback(coupling, tf.zeros([3, 5], tf.float64))
  del flow


def test_unknown_activation_is_refused_by_the_dense_conditioner():
  with pytest.raises(ValueError, match="`activation` must be one of"):
    conditioners.DenseShiftAndLogScale([4], activation="hard_sigmoid")
