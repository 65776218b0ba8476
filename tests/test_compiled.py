"""Eager calls run a compiled function from the second call on: traced once per flow and input signature, reading
variables when they run, dropped with the flow, and giving what the first, op-by-op call gives (`compiled.py`)."""

import gc
import weakref

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_probability as tfp

import tfp_hessian
from tfp_hessian import compiled, reference

from cases import RTOL, assert_close

tfb = tfp.bijectors
tfd = tfp.distributions

D = 4


def _flow(scale):
  base = tfd.MultivariateNormalTriL(tf.zeros(D, tf.float64), tf.linalg.cholesky(tf.eye(D, dtype=tf.float64) + 0.4))
  return tfd.TransformedDistribution(base, tfb.Chain([tfb.Softplus(), tfb.Scale(scale), tfb.Ascending()]))


def _points(n, seed=0):
  """Points of `_flow`'s support (increasing coordinates, for `Ascending`), `[n, D]`."""
  steps = np.random.default_rng(seed).uniform(0.3, 1.5, size=(n, D))
  return tf.constant(np.cumsum(steps, axis=-1))


def _traces(flow):
  functions = compiled._FUNCTIONS[id(flow)].values()  # pylint: disable=protected-access
  return sum(function.experimental_get_tracing_count() for function in functions)


def test_first_call_runs_op_by_op_then_compiled():
  """A conditioner that creates its weights on first use (here as plain tensors in a closure) works: the first call
  builds them eagerly, and the compiled calls after it capture them."""
  rng = np.random.default_rng(0)
  weights = {}

  def shift_and_log_scale(x, units):
    if units not in weights:
      weights[units] = tf.constant(rng.normal(size=(x.shape[-1], 2 * units)) * 0.5, x.dtype)
    out = tf.tanh(tf.einsum("...i,ij->...j", x, weights[units]))
    return out[..., :units], out[..., units:]

  base = tfd.MultivariateNormalDiag(tf.zeros(D, tf.float64))
  flow = tfd.TransformedDistribution(base, tfb.RealNVP(num_masked=2, shift_and_log_scale_fn=shift_and_log_scale))
  z = _points(3)
  first = tfp_hessian.log_prob_hessian(flow, z)
  assert _traces(flow) == 0
  second = tfp_hessian.log_prob_hessian(flow, z)
  assert _traces(flow) == 1
  assert_close(first, reference.tape_hessian(flow, z), RTOL[np.float64])
  assert_close(second, first, RTOL[np.float64])


def test_traced_once_per_flow_and_signature():
  flow = _flow(tf.constant(1.3, tf.float64))
  for _ in range(4):
    tfp_hessian.log_prob_hessian(flow, _points(5))
  assert _traces(flow) == 1
  # Other batch sizes settle on one more trace with the batch dimension unknown.
  for n in (2, 3, 7, 11):
    assert_close(tfp_hessian.log_prob_hessian(flow, _points(n)), reference.tape_hessian(flow, _points(n)),
                 RTOL[np.float64])
  assert _traces(flow) == 2
  # One point, `[D]`: another rank, a function of its own.
  tfp_hessian.log_prob_hessian(flow, _points(1)[0])
  assert _traces(flow) == 3


def test_variables_are_read_when_the_call_runs():
  """A flow still training is seen as it is now: the compiled function reads the variable, not its old value."""
  scale = tf.Variable(1.3, dtype=tf.float64)
  flow = _flow(scale)
  z = _points(4)
  before = tfp_hessian.log_prob_hessian(flow, z)
  scale.assign(0.6)
  after = tfp_hessian.log_prob_hessian(flow, z)
  assert _traces(flow) == 1
  assert_close(after, reference.tape_hessian(flow, z), RTOL[np.float64])
  assert np.max(np.abs(after - before)) > 1e-2


def test_deferred_module_is_rebuilt_when_the_call_runs():
  surrogate = tfp.experimental.vi.build_affine_surrogate_posterior(
      event_shape={"a": [2], "b": []}, operators="tril", bijector={"a": tfb.Exp(), "b": tfb.Softplus()},
      dtype=tf.float64, seed=(1, 2))
  z = tf.nest.map_structure(lambda t: tf.constant(t.numpy()), surrogate.sample(3, seed=(3, 4)))
  before = tfp_hessian.log_prob_hessian(surrogate, z)
  for variable in surrogate.trainable_variables:
    variable.assign_add(tf.fill(variable.shape, tf.constant(0.3, tf.float64)))
  after = tfp_hessian.log_prob_hessian(surrogate, z)
  assert_close(after, reference.tape_hessian(surrogate, z), RTOL[np.float64])
  assert np.max(np.abs(after - before)) > 1e-3


def test_nothing_is_kept_alive_after_the_flow_is_gone():
  flow = _flow(tf.constant(1.3, tf.float64))
  tfp_hessian.log_prob_and_derivatives(flow, _points(3))
  key, reference_to_flow = id(flow), weakref.ref(flow)
  assert key in compiled._FUNCTIONS  # pylint: disable=protected-access
  del flow
  gc.collect()
  assert reference_to_flow() is None
  assert key not in compiled._FUNCTIONS and key not in compiled._CONCRETE  # pylint: disable=protected-access


def test_inside_a_users_function_nothing_is_compiled_again():
  flow = _flow(tf.constant(1.3, tf.float64))
  hessian = tf.function(lambda z: tfp_hessian.log_prob_hessian(flow, z))(_points(3))
  assert id(flow) not in compiled._FUNCTIONS  # pylint: disable=protected-access
  assert_close(hessian, reference.tape_hessian(flow, _points(3)), RTOL[np.float64])


@pytest.mark.parametrize("entry", ["log_prob_hvp", "top_eigenpairs", "sample_and_log_prob_hessian"])
def test_every_entry_point_compiles(entry):
  flow = _flow(tf.constant(1.3, tf.float64))
  z = _points(3)
  calls = {
      "log_prob_hvp": lambda: tfp_hessian.log_prob_hvp(flow, z, tf.ones_like(z)),
      "top_eigenpairs": lambda: tfp_hessian.top_eigenpairs(flow, z, k=2),
      "sample_and_log_prob_hessian": lambda: tfp_hessian.sample_and_log_prob_hessian(flow, 3, seed=(1, 2)),
  }
  op_by_op, second, third = calls[entry](), calls[entry](), calls[entry]()
  assert _traces(flow) == 1
  for a, b, c in zip(tf.nest.flatten(op_by_op), tf.nest.flatten(second), tf.nest.flatten(third)):
    np.testing.assert_array_equal(b, c)
    if a.dtype.is_floating:
      np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-10)
    else:
      np.testing.assert_array_equal(a, b)


def test_stateless_seeds_do_not_retrace():
  flow = _flow(tf.constant(1.3, tf.float64))
  samples = [tfp_hessian.sample_and_log_prob_hessian(flow, 3, seed=(seed, 0))[0] for seed in range(4)]
  assert _traces(flow) == 1
  assert not np.allclose(samples[0], samples[1])
