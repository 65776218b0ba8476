"""Every bijector case against both references, and the structure claims of its rule."""

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_probability as tfp

import tfp_hessian
from tfp_hessian import bijectors as hb
from tfp_hessian import reference, registry

from cases import BIJECTORS, DTYPES, FAST_FORMS, FORM_NAMES, RTOL, assert_close, flow_and_points


def _slow_forms(name, dtype=None):
  """Parameter forms run in the full suite (`slow`), but for a few chains of them (`cases.FAST_FORMS`) in CI."""
  slow = name in FORM_NAMES and (dtype is None or dtype not in FAST_FORMS.get(name, ()))
  return pytest.mark.slow if slow else ()


def _slow_log_prob_case(name, dtype):
  """As `_slow_forms`; float32 of a linear layer (no curvature of its own: the pullback is `Jᵀ H J` alone, its
  float32 products those of every other case) runs in the full suite too."""
  if dtype is np.float32 and BIJECTORS[name].structure == "linear":
    return pytest.mark.slow
  return _slow_forms(name, dtype)


# Cases that vary only the network, mask or order of a rule that another CI case of `tf.hessians` covers: against
# nested tapes in CI, against `tf.hessians` in the full suite.
_TF_HESSIANS_VARIANTS = ("MAF(MADE relu)", "MAF(MADE softplus, 1 layer)", "MAF(MADE tanh, narrower than D)",
                         "RealNVP(DenseShiftAndLogScale swish)", "RealNVP(fraction_masked)", "RealNVP(reversed mask)",
                         "Invert(Ascending) (fallback)", "Chain(MAF narrow, Permute, Sinh, Permute, MAF narrow)",
                         "Chain(Permute, MAF, Permute, Permute, MAF(callable))")


def _slow_tf_hessians_case(name):
  """Slow for the parameter forms (as `_slow_forms`), for the elementwise and linear layers but `Exp` and
  `Scale`, and for the variants above (`TF_HESSIANS_CASES`)."""
  if (BIJECTORS[name].structure is not None and name not in ("Exp", "Scale")) or name in _TF_HESSIANS_VARIANTS:
    return pytest.mark.slow
  return _slow_forms(name)


CASES = [pytest.param(name, marks=_slow_forms(name)) for name in sorted(BIJECTORS)]
LOG_PROB_CASES = [pytest.param(name, dtype, id=f"{name}-{dtype.__name__}", marks=_slow_log_prob_case(name, dtype))
                  for name in sorted(BIJECTORS) for dtype in DTYPES]
# `tf.hessians` and nested tapes differentiate the same `log_prob` by TensorFlow's autodiff (a graph's symbolic
# gradients, a recorded tape) and agree with each other to rounding, while tracing `tf.hessians` takes half of a
# case's time. Every case is compared with nested tapes in CI (`test_log_prob_hessian_matches_references`), and
# with `tf.hessians` in the full suite; CI keeps one case of each rule that is neither elementwise nor linear
# (couplings, autoregressive layers, chains, inverses, fallbacks) and one elementwise and one linear layer.
TF_HESSIANS_CASES = [pytest.param(name, marks=_slow_tf_hessians_case(name)) for name in sorted(BIJECTORS)]
ZERO = tf.UnconnectedGradients.ZERO


@pytest.mark.parametrize("name, dtype", LOG_PROB_CASES)
def test_log_prob_hessian_matches_references(name, dtype):
  flow, z = flow_and_points(BIJECTORS[name], dtype)
  result = tfp_hessian.log_prob_and_derivatives(flow, z)
  assert result.hessian.dtype == dtype
  rtol = RTOL[dtype]
  assert_close(result.hessian, reference.tape_hessian(flow, z), rtol, what="vs nested tapes")
  # log q is a sum of O(1) terms that may cancel to near zero: its rounding error is absolute.
  np.testing.assert_allclose(result.log_prob, flow.log_prob(z), rtol=rtol, atol=rtol)
  np.testing.assert_array_equal(result.hessian, tf.linalg.matrix_transpose(result.hessian))


@pytest.mark.parametrize("name", TF_HESSIANS_CASES)
def test_log_prob_hessian_matches_tf_hessians(name):
  """In float64 (float32 against nested tapes alone, above)."""
  flow, z = flow_and_points(BIJECTORS[name], np.float64)
  assert_close(tfp_hessian.log_prob_hessian(flow, z), reference.naive_hessian(flow, z), RTOL[np.float64],
               what="vs tf.hessians")


def _tape_inverse_derivatives(bijector, y):
  """Jacobian, second-derivative tensor, ildj gradient and Hessian of the inverse, by nested tapes.

  Eagerly, as `reference.tape_hessian` does at small sizes: jacobians by a loop of gradients, not pfor (which traces
  a graph per call; 30–50% slower here). Points `[*batch, D]` are first broadcast against the bijector's own batch
  (a parameter of shape `[B, 1]`), then taken as one flat batch of their own, each point's `x` depending on it alone.
  Each output `x_k`, and the ildj, gets nested tapes of its own: its Hessian then replays one recorded gradient `D`
  times, where the Jacobian of all `D` recorded gradients at once would replay all of them `D²` times.
  """
  size = y.shape[-1]
  try:
    bijector_batch = bijector.experimental_batch_shape(y_event_ndims=1)
  except NotImplementedError:  # a user-written bijector without `_parameter_properties` (`Shear`): no batch of its own
    bijector_batch = tf.TensorShape([])
  batch = tf.broadcast_static_shape(y.shape[:-1], bijector_batch)
  flat = tf.reshape(tf.broadcast_to(y, batch + [size]), [-1, size])

  def outputs(flat):
    """`[x_1, …, x_D, ildj]` at the flat points, each `[N]`."""
    points = tf.reshape(flat, batch + [size])
    x = tf.reshape(bijector.inverse(points), [-1, size])
    # TFP's empty Chain returns a float32 zero whatever the dtype.
    ildj = tf.cast(bijector.inverse_log_det_jacobian(points, event_ndims=1), y.dtype) + tf.zeros(batch, y.dtype)
    return tf.unstack(x, axis=-1) + [tf.reshape(ildj, [-1])]

  gradients, hessians = [], []
  for k in range(size + 1):
    with tf.GradientTape(persistent=True) as outer:  # persistent: batch_jacobian's loop replays it
      outer.watch(flat)
      with tf.GradientTape() as inner:
        inner.watch(flat)
        output = outputs(flat)[k]
      gradients.append(inner.gradient(output, flat, unconnected_gradients=ZERO))
    hessians.append(outer.batch_jacobian(gradients[-1], flat, unconnected_gradients=ZERO,
                                         experimental_use_pfor=False))
  jacobian, hessian = tf.stack(gradients[:-1], axis=1), tf.stack(hessians[:-1], axis=1)
  return tuple(tf.reshape(value, batch + value.shape[1:])
               for value in (jacobian, hessian, gradients[-1], hessians[-1]))


@pytest.mark.parametrize("name", CASES)
def test_inverse_derivatives_match_tape(name):
  """The inverse's derivatives against nested tapes, from the rule the case declares, with its structure's zeros."""
  case = BIJECTORS[name]
  flow, z = flow_and_points(case, np.float64)
  bijector = flow.bijector
  assert registry.has_analytic_rule(bijector) == case.analytic
  expected = _tape_inverse_derivatives(bijector, z)
  actual = (hb.inverse_jacobian(bijector, z), hb.inverse_hessian(bijector, z),
            hb.inverse_log_det_jacobian_gradient(bijector, z), hb.inverse_log_det_jacobian_hessian(bijector, z))
  for what, a, e, ndims in zip(["jacobian", "inverse_hessian", "ildj gradient", "ildj hessian"],
                               actual, expected, [2, 3, 1, 2]):
    assert_close(a, e, RTOL[np.float64], ndims, what=what)
  # Exact zeros where the structure has them, not merely small values.
  jacobian, hessian = actual[0].numpy(), actual[1].numpy()
  off_diagonal = ~np.eye(z.shape[-1], dtype=bool)
  if case.structure == "elementwise":
    assert np.all(jacobian[..., off_diagonal] == 0)
    only_kkk = np.zeros(hessian.shape[-3:], bool)
    only_kkk[np.arange(z.shape[-1]), np.arange(z.shape[-1]), np.arange(z.shape[-1])] = True
    assert np.all(hessian[..., ~only_kkk] == 0)
  if case.structure == "linear":
    assert np.all(hessian == 0)


@pytest.mark.parametrize("name", CASES)
def test_pullback_invert_undoes_pullback(name):
  """`invert` (what `Invert` runs) is the exact inverse of the pullback, on random derivatives.

  At the edges of the support the round trip is ill-conditioned by nature (a tiny Jacobian squared, then divided
  out), so it is checked at sampled points; edges are covered against the references.
  """
  flow, z = flow_and_points(BIJECTORS[name], np.float64, edges=False)
  pullback = hb.hessian_pullback(flow.bijector, z)
  rng = np.random.default_rng(1)
  shape = pullback.x.shape  # points broadcast against the bijector's own batch: [*batch, D]
  grad = tf.constant(rng.normal(size=shape), tf.float64)
  hess = rng.normal(size=shape + shape[-1:])
  hess = tf.constant(hess + np.swapaxes(hess, -1, -2), tf.float64)
  back_grad, back_hess = pullback.invert(*pullback(grad, hess))
  assert_close(back_grad, grad, 1e-8, 1, what="gradient round trip")
  assert_close(back_hess, hess, 1e-8, 2, what="Hessian round trip")


def _solves(name):
  """`(general, triangular)`: the numbers of general and triangular solves in the traced call on the case's flow."""
  flow, z = flow_and_points(BIJECTORS[name], np.float64)
  graph = tf.function(lambda z: tfp_hessian.log_prob_hessian(flow, z)).get_concrete_function(z).graph
  types = [node.op for function in graph.as_graph_def().library.function for node in function.node_def]
  return types.count("MatrixSolve"), types.count("MatrixTriangularSolve")


def test_inverted_layers_solve_by_triangular_solves_where_their_jacobian_is_triangular():
  """An IAF runs its MAF layer's pullback backwards, by three solves with the layer's Jacobian: triangular solves
  where the network is autoregressive in the coordinates' order or its reverse (a triangular Jacobian, by its
  masks), general ones for any other order. `Invert(RealNVP)` solves nothing: the inverse of a coupling layer is a
  coupling layer, with a block form of its own. (The base's own triangular solves are in every count; each case
  matches the references in `test_log_prob_hessian_matches_references`.)"""
  general, triangular = _solves("IAF: Invert(MAF(MADE tanh, random order))")
  assert general == 3, general
  for name in ("IAF: Invert(MAF(MADE tanh))", "IAF: Invert(MAF(MADE tanh, right-to-left))"):
    assert _solves(name) == (0, triangular + 3), name
  for name in ("Invert(RealNVP)", "Invert(RealNVP(reversed mask))", "Invert(RealNVP(DenseShiftAndLogScale))"):
    assert _solves(name) == (0, triangular), name


def test_odd_power_on_negative_points_by_mirror_symmetry():
  """`Power(3)` covers the whole line, but TFP's inverse has NaN derivatives at y < 0 (an untaken `tf.where`
  branch), so no reference exists there. Over a base symmetric under negation the flow is symmetric too, so the
  Hessian at -z must equal the reference Hessian at z > 0."""
  rng = np.random.default_rng(3)
  base = tfp.distributions.MultivariateNormalDiag(tf.zeros(4, tf.float64), tf.constant(rng.uniform(.5, 2, 4)))
  flow = tfp.distributions.TransformedDistribution(base, tfp.bijectors.Power(tf.constant(3., tf.float64)))
  z = tf.constant(rng.uniform(0.05, 3., size=(5, 4)))
  assert_close(tfp_hessian.log_prob_hessian(flow, -z), reference.tape_hessian(flow, z), RTOL[np.float64])


@pytest.mark.parametrize("name", sorted(set(hb.__all__) - {
    "HessianBijector", "hessian_pullback", "inverse_hessian", "inverse_jacobian",
    "inverse_log_det_jacobian_gradient", "inverse_log_det_jacobian_hessian"}))
def test_package_subclass_is_the_stock_bijector_with_methods(name):
  """`tfp_hessian.bijectors.X` is `tfb.X` (same math, same rule) with the derivative methods on it."""
  cls = getattr(hb, name)
  assert issubclass(cls, getattr(tfp.bijectors, name)) and issubclass(cls, hb.HessianBijector)
  case = next(case for key, case in sorted(BIJECTORS.items()) if key.split("(")[0] == name and case.analytic)
  flow, z = flow_and_points(case, np.float64)
  stock = flow.bijector
  ours = cls(**stock.parameters)
  assert registry.has_analytic_rule(ours)
  np.testing.assert_array_equal(ours.inverse_hessian(z), hb.inverse_hessian(stock, z))
  np.testing.assert_array_equal(ours.inverse_jacobian(z), hb.inverse_jacobian(stock, z))
  np.testing.assert_array_equal(ours.inverse_log_det_jacobian_hessian(z),
                                hb.inverse_log_det_jacobian_hessian(stock, z))
  wrapped = tfp_hessian.TransformedDistribution(flow.distribution, ours)
  np.testing.assert_array_equal(wrapped.log_prob_hessian(z), tfp_hessian.log_prob_hessian(flow, z))
