"""The autodiff fallback picks its structure: elementwise for coordinatewise bijectors, flat autodiff for the rest.

Every fallback case of `cases.py` is also checked against both references in `test_bijectors.py`; here the claim is
the choice itself, the exact diagonal structure of the elementwise result, and its agreement with the flat
fallback run on the same bijector.
"""

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_probability as tfp

import tfp_hessian
from tfp_hessian import bijectors as hb
from tfp_hessian import events, pullback, reference, registry
from tfp_hessian.bijectors import autodiff
from tfp_hessian.examples import BoxMap, ReversedShear, RotatedShear, Shear
from tfp_hessian.pullback import AutodiffPullback, ElementwisePullback, InvertedPullback

from cases import BIJECTORS, DIM, RTOL, assert_close, flow_and_points
from factories import lower_triangular

tfb = tfp.bijectors
tfd = tfp.distributions


class _ExpByHand(tfb.Exp):
  """A user's `Exp` that overrides the math: it loses the analytic rule and must fall back."""

  def _inverse(self, y):
    return tf.math.log(y)


# Coordinatewise bijectors without an analytic rule, each with a map of R^D onto its forward domain where that is
# not all of R^D.
COORDINATEWISE = {
    "RationalQuadraticSpline": (lambda: BIJECTORS["RationalQuadraticSpline (fallback)"].make(
        np.float64, np.random.default_rng(0)), None),
    "GumbelCDF": (lambda: tfb.GumbelCDF(tf.constant(0.3, tf.float64), tf.constant(1.7, tf.float64)), None),
    "KumaraswamyCDF": (lambda: tfb.KumaraswamyCDF(tf.constant(2., tf.float64), tf.constant(0.7, tf.float64)),
                       tfb.Sigmoid()),
    "SoftClip": (lambda: tfb.SoftClip(low=tf.constant(-1., tf.float64), high=tf.constant(2., tf.float64)), None),
    "WeibullCDF": (lambda: tfb.WeibullCDF(tf.constant(1.5, tf.float64), tf.constant(0.8, tf.float64)), tfb.Exp()),
    "Reciprocal": (lambda: tfb.Reciprocal(), tfb.Exp()),
    "Exp with its own _inverse": (lambda: _ExpByHand(), None),
    "Invert(GumbelCDF)": (lambda: tfb.Invert(tfb.GumbelCDF(tf.constant(0.3, tf.float64))),
                          tfb.GumbelCDF(tf.constant(0.3, tf.float64))),
    "Invert(SoftClip)": (lambda: tfb.Invert(tfb.SoftClip(low=tf.constant(-1., tf.float64),
                                                         high=tf.constant(2., tf.float64))),
                         tfb.SoftClip(low=tf.constant(-1., tf.float64), high=tf.constant(2., tf.float64))),
}

# Bijectors of vector events without an analytic rule.
FLAT = {
    "Ascending": (lambda: tfb.Ascending(), None),
    "Invert(Ascending)": (lambda: tfb.Invert(tfb.Ascending()), tfb.Ascending()),
}


def _flow(make, domain, seed=0):
  """`(flow, z)`: the bijector over a correlated Gaussian (through `domain` first), and points of the flow."""
  rng = np.random.default_rng(seed)
  base = tfd.MultivariateNormalTriL(tf.constant(rng.normal(size=DIM) * 0.5),
                                    lower_triangular(rng, np.float64, DIM, 0.3, (0.7, 1.3), strict=False))
  if domain is not None:
    base = tfd.TransformedDistribution(base, domain)
  flow = tfd.TransformedDistribution(base, make())
  # A stateless seed: an integer one draws different points depending on what the process sampled before.
  return flow, tf.identity(flow.sample(6, seed=(seed, 0)))


@pytest.mark.parametrize("name", sorted(COORDINATEWISE))
def test_coordinatewise_bijector_gets_the_elementwise_fallback(name):
  flow, z = _flow(*COORDINATEWISE[name])
  bijector = flow.bijector
  assert not registry.has_analytic_rule(bijector)
  assert autodiff.is_coordinatewise(bijector)
  pullback = hb.hessian_pullback(bijector, z)
  assert isinstance(pullback, ElementwisePullback)
  hessian = pullback.hessian().numpy()
  jacobian = pullback.jacobian().numpy()
  d = np.arange(DIM)
  only_kkk = np.zeros([DIM] * 3, bool)
  only_kkk[d, d, d] = True
  assert np.all(hessian[..., ~only_kkk] == 0)
  assert np.all(jacobian[..., ~np.eye(DIM, dtype=bool)] == 0)
  # The diagonal of `hessian()` is `φ''` itself, not a reconstruction of it.
  np.testing.assert_array_equal(hessian[..., d, d, d], np.broadcast_to(pullback.d2, z.shape))
  # The flow's Hessian through the elementwise fallback agrees with both references.
  rtol = RTOL[np.float64]
  hessian = tfp_hessian.log_prob_hessian(flow, z)
  assert_close(hessian, reference.tape_hessian(flow, z), rtol)
  assert_close(hessian, reference.naive_hessian(flow, z), rtol)


@pytest.mark.parametrize("name", sorted(COORDINATEWISE))
def test_elementwise_fallback_matches_the_flat_fallback(name):
  """Both fallbacks are exact: the O(D) one gives the O(D²) one's derivatives, on a batch of rank 2."""
  flow, z = _flow(*COORDINATEWISE[name])
  bijector = flow.bijector
  y = tf.reshape(z, [2, 3, DIM])
  layout = events.EventLayout.vector(DIM)
  elementwise = autodiff.elementwise_autodiff_rule(bijector, y, layout, {})
  flat = autodiff.flat_autodiff_rule(bijector, y, layout, {})
  rtol = RTOL[np.float64]
  np.testing.assert_array_equal(elementwise.x, flat.x)
  assert_close(elementwise.ildj[..., None], flat.ildj[..., None], rtol, 1, what="ildj")
  assert_close(elementwise.jacobian(), flat.jacobian(), rtol, 2, what="jacobian")
  assert_close(elementwise.hessian(), flat.hessian(), rtol, 3, what="inverse hessian")
  for what, a, e, ndims in zip(["ildj gradient", "ildj hessian"], elementwise.ildj_derivatives(),
                               flat.ildj_derivatives(), [1, 2]):
    assert_close(a, e, rtol, ndims, what=what)


@pytest.mark.parametrize("name", sorted(FLAT))
def test_vector_event_bijector_gets_the_flat_fallback(name):
  flow, z = _flow(*FLAT[name])
  bijector = flow.bijector
  assert not registry.has_analytic_rule(bijector)
  assert not autodiff.is_coordinatewise(bijector)
  assert isinstance(hb.hessian_pullback(bijector, z), AutodiffPullback)


class _EagerOnlyForward(tfb.Bijector):
  """A user's bijector whose forward map runs only eagerly (numpy on the values) and whose inverse is a loop over
  the coordinates: the forward map cannot be traced to be costed, so the fallback keeps the inverse."""

  def __init__(self):
    super().__init__(forward_min_event_ndims=1, name="eager_only_forward")

  def _forward(self, x):
    y = x.numpy().copy()
    for i in range(1, y.shape[-1]):
      y[..., i] += 0.3 * np.tanh(x.numpy()[..., i - 1])
    return tf.constant(y)

  def _inverse(self, y):
    xs = [y[..., 0]]
    for i in range(1, y.shape[-1]):
      xs.append(y[..., i] - 0.3 * tf.tanh(xs[-1]))
    return tf.stack(xs, axis=-1)

  def _inverse_log_det_jacobian(self, y):
    return tf.zeros_like(y[..., 0])


def _shear(dim):
  return Shear(tf.constant(np.random.default_rng(1).normal(size=(dim, dim)) * 0.7, tf.float64))


def _reversed_shear(dim):
  return ReversedShear(tf.constant(np.random.default_rng(1).normal(size=(dim, dim)) * 0.7, tf.float64))


def _rotated_shear(dim):
  rotation = np.linalg.qr(np.random.default_rng(2).normal(size=(dim, dim)))[0]
  return RotatedShear(tf.constant(np.random.default_rng(1).normal(size=(dim, dim)) * 0.7, tf.float64),
                      tf.constant(rotation))


# Vector-event bijectors without a rule, with the direction the fallback differentiates them in: the forward map
# (then run backwards, an `InvertedPullback`) where the inverse's graph loops or has `INVERSE_COST_RATIO` times the
# forward's ops, else the inverse (an `AutodiffPullback`).
DIRECTIONS = {
    # A Python loop over the 16 coordinates to invert (~230 ops), a matvec and a tanh forward (~16).
    "Shear, D = 16": (lambda: _shear(16), 16, InvertedPullback),
    # The same forward map run backwards: solves with an upper triangular Jacobian, and with a dense one
    # (`pullback._adjoint_solver` sees which at run time).
    "reversed Shear, D = 16": (lambda: _reversed_shear(16), 16, InvertedPullback),
    "rotated Shear, D = 16": (lambda: _rotated_shear(16), 16, InvertedPullback),
    # At D = 4 the loop is short (~64 ops against ~16).
    "Shear, D = 4": (lambda: _shear(4), 4, AutodiffPullback),
    # Its inverse is MAF's forward, a `tf.while_loop`.
    "Invert(MAF(bijector_fn))": (lambda: tfb.Invert(BIJECTORS["MAF(bijector_fn) (fallback)"].make(
        np.float64, np.random.default_rng(0), dim=8)), 8, InvertedPullback),
    # Its forward loops: the inverse stays.
    "MAF(bijector_fn)": (lambda: BIJECTORS["MAF(bijector_fn) (fallback)"].make(
        np.float64, np.random.default_rng(0), dim=8), 8, AutodiffPullback),
    "BoxMap": (lambda: BoxMap(tf.constant(-2., tf.float64), tf.constant(3., tf.float64)), 8, AutodiffPullback),
    # Its inverse loops over 16 coordinates, but its forward map cannot be traced: the inverse stays.
    "eager-only forward map": (_EagerOnlyForward, 16, AutodiffPullback),
}


@pytest.mark.parametrize("name", sorted(DIRECTIONS))
def test_fallback_differentiates_the_cheaper_direction(name):
  """The fallback's choice of direction, and the flow's value, gradient and Hessian through it against both
  references (float64, random points of the flow)."""
  make, dim, expected = DIRECTIONS[name]
  rng = np.random.default_rng(2)
  base = tfd.MultivariateNormalTriL(tf.constant(rng.normal(size=dim) * 0.5),
                                    lower_triangular(rng, np.float64, dim, 0.3, (0.7, 1.3), strict=False))
  flow = tfd.TransformedDistribution(base, make())
  z = tf.identity(flow.sample(6, seed=(2, 0)))
  pullback = hb.hessian_pullback(flow.bijector, z)
  assert type(pullback) is expected  # pylint: disable=unidiomatic-typecheck
  rtol = RTOL[np.float64]
  value, gradient, hessian = tfp_hessian.log_prob_and_derivatives(flow, z)
  expected_gradient, expected_hessian = reference.tape_derivatives(flow, z)
  assert_close(value[:, None], flow.log_prob(z)[:, None], rtol, 1, what="value")
  assert_close(gradient, expected_gradient, rtol, 1, what="gradient")
  assert_close(hessian, expected_hessian, rtol)
  assert_close(hessian, reference.naive_hessian(flow, z), rtol)


@pytest.mark.parametrize("name", sorted(name for name, case in BIJECTORS.items() if not case.analytic))
def test_fallback_cases_take_the_structure_they_declare(name):
  """In the shared registry, a fallback case declared elementwise is served by the elementwise fallback."""
  case = BIJECTORS[name]
  flow, z = flow_and_points(case, np.float64)
  pullback = hb.hessian_pullback(flow.bijector, z)
  assert isinstance(pullback, ElementwisePullback) == autodiff.is_coordinatewise(flow.bijector)
  if case.structure == "elementwise":
    assert isinstance(pullback, ElementwisePullback)


def test_analytic_rules_still_win_over_the_elementwise_fallback():
  """A coordinatewise bijector with a rule keeps it: the fallback is only for those without one."""
  bijector = tfb.Softplus()
  assert autodiff.is_coordinatewise(bijector) and registry.has_analytic_rule(bijector)
  assert registry.lookup(bijector) is not registry.fallback


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_solves_see_at_run_time_whether_a_jacobian_is_triangular(dtype):
  """The forward direction's solves (`pullback._adjoint_solver(..., triangle="check")`) take triangular solves where
  the Jacobians are lower or upper triangular at every point (`_triangle_at_run_time`: 0, 1), general ones otherwise
  (2), and give NaN at a non-finite point only; the solutions are those of the solves chosen."""
  rng = np.random.default_rng(0)
  lower = np.tril(rng.normal(size=(5, 6, 6)) * 3, -1) + np.eye(6) * rng.uniform(0.5, 1, size=(5, 1, 6))
  one_dense = lower.copy()
  one_dense[3, 1, 4] = 0.2  # one point's matrix has an entry above the diagonal
  rhs = tf.constant(rng.normal(size=(5, 6, 3)), dtype)
  cases = ((lower, 0, "lower"), (np.swapaxes(lower, -1, -2), 1, "upper"), (one_dense, 2, None),
           (np.eye(6) * rng.uniform(0.5, 1, size=(5, 1, 6)), 0, "lower"))  # diagonal: both; lower is taken
  for matrix, index, triangle in cases:
    matrix = tf.constant(matrix, dtype)
    assert pullback._triangle_at_run_time(matrix) == index, triangle
    for transposed in (False, True):
      np.testing.assert_array_equal(pullback._adjoint_solver(matrix, transposed, "check")(rhs),
                                    pullback._adjoint_solver(matrix, transposed, triangle)(rhs))
  broken = tf.tensor_scatter_nd_update(tf.constant(lower, dtype), [[2, 0, 0]], tf.constant([np.nan], dtype))
  solved = pullback._adjoint_solver(broken, False, "check")(rhs).numpy()
  assert np.all(np.isnan(solved[2])) and np.all(np.isfinite(np.delete(solved, 2, axis=0)))
  np.testing.assert_array_equal(np.delete(solved, 2, axis=0),
                                np.delete(pullback._adjoint_solver(broken, False, "lower")(rhs).numpy(), 2, axis=0))
