"""Bad input: each misuse raises a clear error before any bijector runs; bad values follow TFP's own rules.

Static misuse (what the shapes and dtypes alone show) raises `ValueError`/`TypeError`, or `NotImplementedError`
for structure the sweep does not support, before a single layer is inverted: a spy bijector on the `z` side
counts its calls. Values outside a bijector's support are TFP's business: with `validate_args=True` on that
bijector its assertion raises `tf.errors.InvalidArgumentError` (eagerly, or when the `tf.function` runs);
without it the log density and its derivatives at that point are NaN, exactly as `log_prob` is, and the other
points are untouched.
"""

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_probability as tfp

import tfp_hessian

from cases import SpyExp

tfb = tfp.bijectors
tfd = tfp.distributions

D = 4


def _flow(base=None, bijector=None, dtype=tf.float32):
  base = base if base is not None else tfd.MultivariateNormalDiag(tf.zeros(D, dtype))
  return tfd.TransformedDistribution(base, bijector if bijector is not None else SpyExp())


def _assert_no_layer_ran(flow):
  while isinstance(flow, tfd.TransformedDistribution):
    if isinstance(flow.bijector, SpyExp):
      assert flow.bijector.calls == 0, "a layer was inverted before the error"
    flow = flow.distribution


# -- points -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(D + 1,), (3, D - 1), (2, 1, 1)], ids=lambda s: str(list(s)))
def test_wrong_event_size(shape):
  flow = _flow()
  with pytest.raises(ValueError, match=rf"event size D = {D}.*event size {shape[-1]}"):
    tfp_hessian.log_prob_hessian(flow, tf.ones(shape))
  _assert_no_layer_ran(flow)


def test_wrong_event_size_known_only_at_run_time():
  """With `D` unknown when traced, the run-time shape check names the expected shape."""
  flow = _flow()
  hessian = tf.function(lambda z: tfp_hessian.log_prob_hessian(flow, z),
                        input_signature=[tf.TensorSpec([None, None], tf.float32)])
  with pytest.raises(tf.errors.InvalidArgumentError, match=rf"not compatible with expected shape \[\?,{D}\]"):
    hessian(tf.ones([2, D - 1]))


@pytest.mark.parametrize("z", [np.ones([2, D], np.int64), tf.ones([2, D], tf.int32), np.ones([2, D], bool)],
                         ids=["numpy int64", "tf int32", "bool"])
def test_non_float_points(z):
  """Integer and bool `z` are refused, not cast (a Python list of ints is converted to the flow's dtype)."""
  flow = _flow()
  with pytest.raises(TypeError, match=r"`z` must be a floating-point tensor of dtype float32; got dtype"):
    tfp_hessian.log_prob_hessian(flow, z)
  _assert_no_layer_ran(flow)


@pytest.mark.parametrize("z", [np.ones([2, D]), tf.ones([2, D], tf.float64)], ids=["numpy", "tf"])
def test_float64_points_into_float32_flow(z):
  flow = _flow()
  with pytest.raises(TypeError, match=r"`z` has dtype float64 but the distribution has dtype float32"):
    tfp_hessian.log_prob_and_derivatives(flow, z)
  _assert_no_layer_ran(flow)


@pytest.mark.parametrize("z", [1., tf.constant(1.)], ids=["python", "tensor"])
def test_scalar_points(z):
  flow = _flow()
  with pytest.raises(ValueError, match=rf"`z` must have shape \[\*batch, D\] with D = {D}; got shape \(\)"):
    tfp_hessian.log_prob_hessian(flow, z)
  _assert_no_layer_ran(flow)


def test_points_of_unknown_rank():
  hessian = tf.function(lambda z: tfp_hessian.log_prob_hessian(_flow(), z),
                        input_signature=[tf.TensorSpec(None, tf.float32)])
  with pytest.raises(ValueError, match=r"`z` must have shape \[\*batch, D\].*got shape <unknown>"):
    hessian.get_concrete_function()


def test_batch_shapes_that_do_not_broadcast():
  flow = _flow(tfd.MultivariateNormalDiag(tf.zeros([2, D])))
  with pytest.raises(ValueError, match=r"batch shape \(3,\), which does not broadcast against the "
                                       r"distribution's batch shape \(2,\)"):
    tfp_hessian.log_prob_hessian(flow, tf.ones([3, D]))
  _assert_no_layer_ran(flow)


# -- distributions ------------------------------------------------------------------------------------------


def test_integer_distribution():
  with pytest.raises(TypeError, match=r"supports float32 and float64 distributions; 'OneHotCategorical' has "
                                      r"dtype int32"):
    tfp_hessian.log_prob_hessian(tfd.OneHotCategorical(logits=tf.zeros(D), dtype=tf.int32), tf.ones([D]))


def test_not_a_distribution():
  with pytest.raises(TypeError, match=r"`distribution` must be a tfp.distributions.Distribution.*; got Exp"):
    tfp_hessian.log_prob_hessian(tfb.Exp(), tf.ones([D]))


# -- values outside the support -----------------------------------------------------------------------------
#
# `tfb.Square` stands for a bijector that validates its inverse's domain. `tfb.Softplus(validate_args=True)`
# would not do: in TFP 0.25 its validation checks only `hinge_softness != 0`, and its inverse at y <= 0 is NaN
# with or without it.

# After the shift by -1, the second point's second coordinate leaves Square's support [0, ∞).
OUTSIDE = [[1.5, 2., 1.25, 3.], [1.5, 0.5, 2., 1.25]]


def _square_flow(validate_args):
  # Square's inverse sits under an affine layer, so the invalid value reaches it from inside the chain.
  return tfd.TransformedDistribution(
      tfd.MultivariateNormalDiag(tf.zeros(D, tf.float64), tf.fill([D], tf.constant(1.5, tf.float64))),
      tfb.Chain([tfb.Shift(tf.constant(1., tf.float64)), tfb.Square(validate_args=validate_args)]))


def test_outside_support_with_validation_raises_eagerly():
  with pytest.raises(tf.errors.InvalidArgumentError, match="must be non-negative"):
    tfp_hessian.log_prob_hessian(_square_flow(True), tf.constant(OUTSIDE, tf.float64))


def test_outside_support_with_validation_raises_in_graph():
  flow = _square_flow(True)
  hessian = tf.function(lambda z: tfp_hessian.log_prob_hessian(flow, z))
  np.testing.assert_array_equal(np.isfinite(hessian(tf.constant(OUTSIDE[:1], tf.float64))), True)
  with pytest.raises(tf.errors.InvalidArgumentError, match="must be non-negative"):
    hessian(tf.constant(OUTSIDE, tf.float64))


def test_outside_support_without_validation_is_nan():
  """NaN at the invalid point (as `log_prob` gives), finite at the other: points do not mix."""
  flow = _square_flow(False)
  z = tf.constant(OUTSIDE, tf.float64)
  result = tfp_hessian.log_prob_and_derivatives(flow, z)
  assert np.isnan(flow.log_prob(z)[1])
  assert np.isnan(result.log_prob[1])
  assert np.all(np.isnan(result.gradient[1, 1])) and np.all(np.isnan(result.hessian[1, 1, :]))
  for value in result:
    assert np.all(np.isfinite(value[0]))


def test_python_numbers_take_the_distribution_dtype():
  """A Python list states no dtype, so it takes the flow's (ints included); arrays and tensors never are cast."""
  flow = _flow(bijector=tfb.Identity())
  np.testing.assert_array_equal(tfp_hessian.log_prob_hessian(flow, [[1, 2, 3, 4]]),
                                tfp_hessian.log_prob_hessian(flow, tf.constant([[1., 2., 3., 4.]])))


# -- conditions and structures ------------------------------------------------------------------------------


def _conditional_flow(dtype=tf.float64, size=3):
  """A `Chain` of a spy (on the `z` side) and a conditional MAF named "maf" (condition of `size`)."""
  made = tfb.AutoregressiveNetwork(params=2, event_shape=[D], hidden_units=[6], conditional=True,
                                   conditional_event_shape=[size], dtype=dtype)
  base = tfd.MultivariateNormalDiag(tf.zeros(D, dtype))
  return tfd.TransformedDistribution(base, tfb.Chain([SpyExp(), tfb.MaskedAutoregressiveFlow(made, name="maf")]))


@pytest.mark.parametrize("kwargs, error, match", [
    (dict(bijector_kwargs={"maf": dict(conditional_input=tf.ones([2, 4], tf.float64))}), ValueError,
     r"MaskedAutoregressiveFlow 'maf' \(a conditional AutoregressiveNetwork\) takes `conditional_input` of shape "
     r"\[\*batch, 3\] \(or \[3\], one condition for every point\); got shape \(2, 4\)"),
    (dict(bijector_kwargs={"maf": dict(conditional_input=tf.ones([2, 3], tf.float32))}), TypeError,
     r"takes `conditional_input` of dtype float64; got dtype float32"),
    (dict(bijector_kwargs={"maf": {}}), ValueError,
     r"'maf' \(a conditional AutoregressiveNetwork\) needs its condition: pass .*keyed by this bijector's name"),
    (dict(), ValueError, r"needs its condition"),
    (dict(bijector_kwargs={"maff": dict(conditional_input=tf.ones([2, 3], tf.float64))}), ValueError,
     r"bijector_kwargs for Chain 'chain_of_spy_exp_of_maf' name \['maff'\], which are not among its bijectors "
     r"\['spy_exp', 'maf'\]. TFP passes a composition's kwargs to its members by name"),
    (dict(bijector_kwargs={"conditional_input": tf.ones([2, 3], tf.float64)}), ValueError,
     r"name \['conditional_input'\], which are not among its bijectors"),
], ids=["condition shape", "condition dtype", "no condition for maf", "no kwargs", "unknown name",
        "condition not keyed by name"])
def test_bad_condition_is_refused_before_any_layer_runs(kwargs, error, match):
  flow = _conditional_flow()
  z = tf.ones([2, D], tf.float64)
  for entry in (tfp_hessian.log_prob_hessian, tfp_hessian.log_prob_and_derivatives,
                lambda flow, z, **kwargs: tfp_hessian.log_prob_hvp(flow, z, z, **kwargs)):
    with pytest.raises(error, match=match):
      entry(flow, z, **kwargs)
  _assert_no_layer_ran(flow)


def _named_posterior():
  return tfd.JointDistributionNamed(dict(
      scale=tfd.HalfNormal(tf.constant(1., tf.float64)),
      w=lambda scale: tfd.Independent(tfd.Normal(tf.zeros([2, 3], tf.float64), scale[..., None, None]), 2)))


@pytest.mark.parametrize("z, match", [
    (dict(scale=tf.ones([4], tf.float64)),
     r"Expected a value of the event's structure \{'scale': \[\], 'w': \[2, 3\]\}; got \{'scale': a tensor of "
     r"shape \[4\]\}"),
    ([tf.ones([4], tf.float64), tf.ones([4, 2, 3], tf.float64)], r"Expected a value of the event's structure"),
    (dict(scale=tf.ones([4], tf.float64), w=tf.ones([4, 3, 2], tf.float64)),
     r"part 1 of `z` \(in tf.nest.flatten order\) must have shape \[\*batch, 2, 3\] \(the distribution's event "
     r"\{'scale': \[\], 'w': \[2, 3\]\}\); got shape \(4, 3, 2\)"),
    (tf.ones([4, 7], tf.float64), r"Expected a value of the event's structure"),
], ids=["missing part", "list for a dict", "part of the wrong shape", "flat vector"])
def test_points_that_do_not_match_a_structured_event(z, match):
  with pytest.raises(ValueError, match=match):
    tfp_hessian.log_prob_hessian(_named_posterior(), z)


def test_matrix_event_of_the_wrong_shape():
  flow = _flow(tfd.Sample(tfd.Normal(tf.constant(0.), 1.), [3, 2]), tfb.Exp())
  with pytest.raises(ValueError, match=r"`z` must have shape \[\*batch, 3, 2\] \(the distribution's event \[3, 2\]\); "
                                       r"got shape \(5, 2, 3\)"):
    tfp_hessian.log_prob_hessian(flow, tf.ones([5, 2, 3]))
