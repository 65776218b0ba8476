"""Failure modes: what cannot be differentiated or would not fit is refused with an error saying what to do.

- a bijector without a rule whose inverse autodiff cannot see through (`tf.round`, `tf.stop_gradient`) →
  `NotImplementedError` naming it and the hooks that give it a rule;
- a base without closed-form derivatives whose `log_prob` autodiff cannot see through → `NotImplementedError`;
- a tensor over the memory limit (`inverse_hessian`'s `[*batch, D, D, D]`; the fallback forms none) →
  `ValueError` with the estimate, the limit and what to do instead, before any layer runs;
- `validate_args=True`: a point outside a bijector's support → `InvalidArgumentError` naming the bijector,
  eagerly and in `tf.function`.

Bad input (points, conditions, structures that do not match the distribution) is refused before any layer runs
in `test_errors.py`.
"""

import re

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_probability as tfp

import tfp_hessian
from tfp_hessian import bijectors as hb
from tfp_hessian import memory, reference

from cases import RTOL, SpyExp, assert_close

tfb = tfp.bijectors
tfd = tfp.distributions

D = 4
F64 = tf.float64


class _VectorShift(tfb.Bijector):
  """A shift of vectors whose inverse is written with an op autodiff cannot see through (`blind`)."""

  def __init__(self, blind, forward_min_event_ndims=1, name="vector_shift"):
    self._blind = blind
    super().__init__(forward_min_event_ndims=forward_min_event_ndims, is_constant_jacobian=True, name=name)

  def _forward(self, x):
    return x + 1

  def _inverse(self, y):
    return self._blind(y) - 1

  def _inverse_log_det_jacobian(self, y):
    return tf.zeros([], y.dtype)


# A `tf.py_function` computing in numpy is not here: TF's gradient of it is not None but its own error (its
# eager tape is consumed by the first gradient), raised by TF before the check can see it.
BLIND = {
    "tf.round": lambda y: tf.round(y * 2.**20) / 2.**20,
    "tf.stop_gradient": tf.stop_gradient,
}


def _base(dtype=F64, dim=D):
  return tfd.MultivariateNormalDiag(tf.zeros(dim, dtype))


def _points(dim=D, n=3, dtype=F64):
  return tf.constant(np.random.default_rng(0).uniform(0.5, 2., size=(n, dim)), dtype)


# -- no rule, no differentiable inverse ---------------------------------------------------------------------


@pytest.mark.parametrize("graph", [False, True], ids=["eager", "tf.function"])
@pytest.mark.parametrize("min_ndims", [1, 0], ids=["vector (dense fallback)", "coordinatewise fallback"])
@pytest.mark.parametrize("blind", sorted(BLIND))
def test_bijector_without_rule_or_differentiable_inverse(blind, min_ndims, graph):
  flow = tfd.TransformedDistribution(_base(), _VectorShift(BLIND[blind], min_ndims, name="blind_shift"))
  hessian = lambda z: tfp_hessian.log_prob_hessian(flow, z)  # noqa: E731
  if graph:
    hessian = tf.function(hessian)
  with pytest.raises(NotImplementedError, match=r"Bijector 'blind_shift' \(_VectorShift\) has no Hessian rule, "
                                                r"and its inverse is not differentiable.*`_hessian_pullback\(self, "
                                                r"y\)`.*`tfp_hessian.registry.register`"):
    hessian(_points())


def test_differentiable_inverse_without_rule_still_falls_back():
  """The check refuses only what autodiff cannot see: the same bijector with a plain inverse is served."""
  flow = tfd.TransformedDistribution(_base(), _VectorShift(tf.identity))
  z = _points()
  assert_close(tfp_hessian.log_prob_hessian(flow, z), reference.tape_hessian(flow, z), RTOL[np.float64])


# -- a base without closed form and without a differentiable log_prob ---------------------------------------


def _empirical_vector_base():
  return tfd.Empirical(tf.constant(np.random.default_rng(1).normal(size=(7, D)), F64), event_ndims=1)


def _empirical_coordinatewise_base():
  return tfd.Independent(tfd.Empirical(tf.constant(np.random.default_rng(1).normal(size=(D, 7)), F64)), 1)


@pytest.mark.parametrize("make", [_empirical_vector_base, _empirical_coordinatewise_base],
                         ids=["Empirical (nested tapes)", "Independent(Empirical) (coordinatewise)"])
def test_base_without_differentiable_log_prob(make):
  flow = tfd.TransformedDistribution(make(), tfb.Softplus())
  with pytest.raises(NotImplementedError, match=r"The base distribution 'Empirical' \(Empirical\) has no "
                                                r"closed-form derivatives here, and its `log_prob` is not "
                                                r"differentiable.*Use a base with closed-form derivatives"):
    tfp_hessian.log_prob_hessian(flow, _points())


def test_base_with_log_prob_linear_in_x():
  """A log density linear in `x` has a constant gradient: its Hessian is zero, not an error."""
  base = tfd.Independent(tfd.Exponential(tf.constant([0.5, 1., 2., 3.], F64)), 1)  # autodiff, log p = log r - r x
  flow = tfd.TransformedDistribution(base, tfb.Exp())
  z = _points()
  assert_close(tfp_hessian.log_prob_hessian(flow, z), reference.tape_hessian(flow, z), RTOL[np.float64])


# -- memory limit -------------------------------------------------------------------------------------------


@pytest.fixture(autouse=True)
def _default_limit(monkeypatch):
  """Each test starts from the default limit, without the environment variable, and leaves it so."""
  monkeypatch.delenv(memory.ENVIRONMENT_VARIABLE, raising=False)
  tfp_hessian.set_memory_limit(None)
  yield
  tfp_hessian.set_memory_limit(None)


def test_default_limit_is_two_gib():
  assert tfp_hessian.get_memory_limit() == 2 * 2**30


def test_inverse_hessian_over_the_limit_is_refused_before_any_work():
  spy = SpyExp()
  y = tf.ones([64, 512])  # [64, 512, 512, 512] float32: 32 GiB.
  with pytest.raises(ValueError,
                     match=r"`inverse_hessian` of bijector 'spy_exp' \(SpyExp\) would hold a tensor of shape "
                           r"\(64, 512, 512, 512\) and dtype float32: an estimated 32 GiB \(34,359,738,368 bytes\), "
                           r"over the memory limit of 2 GiB.*use `tfp_hessian.log_prob_hessian`.*fewer points.*"
                           r"`tfp_hessian.set_memory_limit\(num_bytes\)` or the TFP_HESSIAN_MEMORY_LIMIT"):
    hb.inverse_hessian(spy, y)
  assert spy.calls == 0


def test_fallback_never_forms_a_cubic_tensor():
  """The fallback of a bijector of vector events (`Ascending`) takes `∇²(g·h)` as one scalar's Hessian: a 1 MiB
  limit, which `[4, D, D, D]` float64 (8 MiB at D = 64) would exceed, does not stop it, and it is exact."""
  tfp_hessian.set_memory_limit(2**20)
  flow = tfd.TransformedDistribution(_base(dim=64), tfb.Chain([tfb.Softplus(), tfb.Ascending()]))
  z = tf.identity(flow.sample(4, seed=(1, 2)))
  assert_close(tfp_hessian.log_prob_hessian(flow, z), reference.tape_hessian(flow, z), RTOL[np.float64])


def test_limit_is_configurable_and_checked_against_the_exact_estimate():
  y = tf.ones([3, D], F64)
  estimate = 3 * D * D * D * 8
  tfp_hessian.set_memory_limit(estimate - 1)
  with pytest.raises(ValueError, match=rf"over the memory limit of .*\({estimate - 1:,} bytes\)"):
    hb.inverse_hessian(tfb.Softplus(), y)
  tfp_hessian.set_memory_limit(estimate)
  assert hb.inverse_hessian(tfb.Softplus(), y).shape == (3, D, D, D)


def test_limit_from_the_environment(monkeypatch):
  monkeypatch.setenv(memory.ENVIRONMENT_VARIABLE, "1000")
  assert tfp_hessian.get_memory_limit() == 1000
  with pytest.raises(ValueError, match=r"over the memory limit of .*\(1,000 bytes\)"):
    hb.inverse_hessian(tfb.Softplus(), tf.ones([2, 6]))  # 2·6³·4 = 1,728 bytes.
  assert hb.inverse_hessian(tfb.Softplus(), tf.ones([2, 5])).shape == (2, 5, 5, 5)  # 2·5³·4 = 1,000 bytes.
  tfp_hessian.set_memory_limit(2000)  # The call wins over the environment.
  assert tfp_hessian.get_memory_limit() == 2000


@pytest.mark.parametrize("value", [0, -5, 1.5, "1e9", True])
def test_invalid_limits(value):
  with pytest.raises(ValueError, match=r"`num_bytes` must be a positive integer or None"):
    tfp_hessian.set_memory_limit(value)


def test_invalid_environment_limit(monkeypatch):
  monkeypatch.setenv(memory.ENVIRONMENT_VARIABLE, "2GiB")
  with pytest.raises(ValueError, match=r"TFP_HESSIAN_MEMORY_LIMIT must be a positive integer number of bytes; "
                                       r"got '2GiB'"):
    tfp_hessian.get_memory_limit()


def test_dynamic_batch_counts_as_one_point():
  """Traced with an unknown batch, the check bounds a single point: too large for one point is refused."""
  inverse_hessian = tf.function(lambda y: hb.inverse_hessian(tfb.Softplus(), y),
                                input_signature=[tf.TensorSpec([None, 1024], tf.float64)])
  with pytest.raises(ValueError, match=r"shape \(None, 1024, 1024, 1024\).*\(a lower bound: "
                                       r"unknown dimensions counted as 1\)"):
    inverse_hessian.get_concrete_function()


# -- validate_args=True, end to end -------------------------------------------------------------------------

# Bijectors with validate_args=True, a value inside their support and one outside: TFP's own checks (Exp, Square,
# NormalCDF, Softsign) and the package's (Expm1, Softplus, Sigmoid, Tanh, for which TFP checks nothing). TFP's
# `Power(validate_args=True)` fails in float64 at construction (its check compares with a float32 zero).
OUTSIDE = {
    "Exp": (lambda: tfb.Exp(validate_args=True), 0.25, -1.),
    "Square": (lambda: tfb.Square(validate_args=True), 0.25, -1.),
    "NormalCDF": (lambda: tfb.NormalCDF(validate_args=True), 0.25, 1.5),
    "Softsign": (lambda: tfb.Softsign(validate_args=True), 0.25, -1.5),
    "Expm1": (lambda: tfb.Expm1(validate_args=True), 0.25, -1.),
    "Softplus": (lambda: tfb.Softplus(validate_args=True), 0.25, 0.),
    "Softplus(low)": (lambda: tfb.Softplus(low=tf.constant(1., F64), validate_args=True), 1.25, 0.5),
    "Sigmoid": (lambda: tfb.Sigmoid(validate_args=True), 0.25, 1.),
    "Sigmoid(low, high)": (lambda: tfb.Sigmoid(low=tf.constant(-2., F64), high=tf.constant(3., F64),
                                               validate_args=True), 0.25, -2.5),
    "Tanh": (lambda: tfb.Tanh(validate_args=True), 0.25, -1.),
}


@pytest.mark.parametrize("graph", [False, True], ids=["eager", "tf.function"])
@pytest.mark.parametrize("name", sorted(OUTSIDE))
def test_outside_support_with_validation_names_the_bijector(name, graph):
  make, inside, outside = OUTSIDE[name]
  bijector = make()
  # A shift on the z side: the invalid value reaches the validated layer from inside the chain.
  flow = tfd.TransformedDistribution(_base(), tfb.Chain([tfb.Shift(tf.constant(0., F64)), bijector]))
  hessian = lambda z: tfp_hessian.log_prob_hessian(flow, z)  # noqa: E731
  if graph:
    hessian = tf.function(hessian)
  z = np.full([2, D], inside)
  z[1, 2] = outside
  assert np.all(np.isfinite(hessian(tf.constant(z[:1]))))
  # Eagerly the error is given the bijector's name; in a graph its node names carry it (`<name>_pullback`).
  with pytest.raises(tf.errors.InvalidArgumentError, match=rf"bijector '{bijector.name}'|{bijector.name}_pullback"):
    hessian(tf.constant(z))


@pytest.mark.parametrize("graph", [False, True], ids=["eager", "tf.function"])
def test_outside_support_in_nested_compositions_names_each_of_them(graph):
  """The walk goes through nested `Chain`s and `Invert(Chain)`s member by member (`registry.pullbacks`); an error
  still names every composition around the failing layer, innermost first, as their own rules did."""
  shift = lambda: tfb.Shift(tf.constant(0., F64))  # noqa: E731
  inner = tfb.Chain([shift(), tfb.Invert(tfb.Chain([shift(), tfb.Invert(tfb.Tanh(validate_args=True))],
                                                   name="deep"))], name="inner")
  flow = tfd.TransformedDistribution(_base(), tfb.Chain([shift(), inner], name="outer"))
  hessian = lambda z: tfp_hessian.log_prob_hessian(flow, z)  # noqa: E731
  if graph:
    hessian = tf.function(hessian)
  z = np.full([2, D], 0.25)
  z[1, 2] = -1.
  assert np.all(np.isfinite(hessian(tf.constant(z[:1]))))
  with pytest.raises(tf.errors.InvalidArgumentError) as raised:
    hessian(tf.constant(z))
  if graph:
    assert "outer_pullback/inner_pullback/invert_deep_pullback/tanh_pullback/" in str(raised.value)
  else:
    names = re.findall(r"raised by bijector '(\w+)'", str(raised.value))
    assert names == ["tanh", "invert_deep", "inner", "outer"]


def test_outside_support_without_validation_is_still_nan():
  """Without `validate_args` nothing is checked: NaN where `log_prob` is NaN, as before."""
  flow = tfd.TransformedDistribution(_base(), tfb.Sigmoid())
  z = tf.constant([[0.25] * D, [0.25, 0.25, 1.5, 0.25]], F64)
  assert np.isnan(flow.log_prob(z)[1])
  hessian = tfp_hessian.log_prob_hessian(flow, z)
  assert np.all(np.isfinite(hessian[0])) and np.all(np.isnan(hessian[1, 2, 2]))


# -- found by the property and edge tests (fixed in pullback.py); regression tests --


def test_non_finite_point_through_iaf_gives_nan_not_an_error():
  """`log_prob` is NaN at a NaN point (an overflowed sample) and finite at the others; so must the Hessian be.

  Found by `test_properties.py` (long profile): one overflowed sample made the whole call raise "Input matrix is
  not invertible", losing the finite points too.
  """
  made = tfb.AutoregressiveNetwork(params=2, event_shape=[3], hidden_units=[4], dtype=F64)
  flow = tfd.TransformedDistribution(_base(dim=3), tfb.Invert(tfb.MaskedAutoregressiveFlow(made)))
  z = tf.constant([[0.1, 0.2, 0.3], [np.nan] * 3], F64)
  hessian = tfp_hessian.log_prob_hessian(flow, z).numpy()
  np.testing.assert_array_equal(np.isfinite(hessian).all(axis=(-2, -1)), np.isfinite(flow.log_prob(z)))


def test_overflowing_coordinate_leaves_the_other_entries_finite():
  """Found by `test_edges.py`: at `z = (1e-300, 1e-100)` under `Exp`, `φ'_0 φ'_1 = 1e400` overflows, so the
  off-diagonal entries (exactly zero) become NaN; only `H[0, 0]` overflows."""
  flow = tfd.TransformedDistribution(_base(dim=2), tfb.Exp())
  hessian = tfp_hessian.log_prob_hessian(flow, tf.constant([[1e-300, 1e-100]], F64)).numpy()[0]
  assert hessian[0, 1] == 0 and hessian[1, 0] == 0 and np.isfinite(hessian[1, 1])
