"""Points at the edges of each support, against the exact Hessian in 100-digit arithmetic (mpmath).

Each case is a coordinatewise flow `z = f(ω)` over a diagonal normal, so `log q(z) = Σ_i ℓ_i(z_i)` with
`ℓ_i(z) = log N(φ(z); μ_i, σ_i) + log|φ'(z)|`, `φ = f⁻¹`: the Hessian is diagonal, and each diagonal entry
`ℓ_i''(z_i)` is computed here by mpmath from `φ` and `φ'` alone (independently of the package's rules), at the
exact binary value of `z_i`. At every point:

- where the exact entry is representable in the dtype, ours is finite and no less accurate than the
  nested-tape reference: its relative error is within a factor 2 of the reference's (the same order: both
  round the same few operations), or within 64 ulps of the exact value times `κ = max(1, |g|/|ℓ''|)`, where
  `g = (φ(z) - μ)/σ²` is the base's gradient the sweep carries through the layers. Where `|g|` is much larger
  than the answer (`Log` over `Softplus` at `z = -300`: `|g| ≈ 300`, `ℓ'' ≈ -1/σ²`), the terms `g ⊙ φ''` of
  two consecutive layers cancel to the answer and it keeps `κ` times fewer digits;
- where the exact entry overflows the dtype (float32 near the edges: `1/z²` at `z = 1e-20` is `1e40`), ours is
  not a finite number: ±inf or NaN, never a wrong finite value;
- the off-diagonal entries are exactly zero, except in the row and column of a coordinate whose exact entry
  overflows: there `ElementwisePullback` forms `φ'_i φ'_j`, which overflows with it, and `0 · inf` is NaN.
"""

import mpmath
import numpy as np
import pytest
import tensorflow as tf
import tensorflow_probability as tfp

import tfp_hessian
from tfp_hessian import reference, registry

tfb = tfp.bijectors
tfd = tfp.distributions

# ulps of the exact value that count as exact: the rules evaluate a handful of operations per entry.
ULPS = 64
# Ours may be at most this factor less accurate than the reference: rounding errors of the same order.
FACTOR = 2


def _mp_softplus_inverse(z):
  return mpmath.log(mpmath.expm1(z))


def _mp_normal_quantile(p):
  """The root of `log Φ(x) = log p`, at the working precision: for p < 1/2 no digit of `p` is lost (erfinv of
  `2p - 1` would need 800 digits at p = 1e-300), and `1 - p` above 1/2 is exact."""
  p = mpmath.mpf(p)
  if p > 0.5:
    return -_mp_normal_quantile(1 - p)
  log_p = mpmath.log(p)
  start = -mpmath.sqrt(-2 * log_p) if p < 0.05 else mpmath.sqrt(2) * mpmath.erfinv(2 * p - 1)
  return mpmath.findroot(lambda x: mpmath.log(mpmath.ncdf(x)) - log_p, start)


# name: (bijector factory, its inverse φ and φ' in mpmath, edge values of z per dtype).
EDGES = {
    "Sigmoid": (tfb.Sigmoid, lambda z: mpmath.log(z / (1 - z)), lambda z: 1 / (z * (1 - z)), {
        np.float64: [1e-300, 1e-100, 1e-15, 1e-8, 1 - 1e-8, 1 - 2.**-52, 1 - 2.**-53],
        np.float32: [1e-30, 1e-15, 1e-8, 1e-4, 1 - 1e-4, 1 - 2.**-23, 1 - 2.**-24]}),
    "Softplus": (tfb.Softplus, _mp_softplus_inverse, lambda z: 1 / -mpmath.expm1(-z), {
        np.float64: [1e-300, 1e-100, 1e-15, 1e-8, 40., 700.],
        np.float32: [1e-30, 1e-15, 1e-8, 1e-4, 20., 80.]}),
    "Tanh": (tfb.Tanh, mpmath.atanh, lambda z: 1 / (1 - z * z), {
        np.float64: [-1 + 2.**-53, -1 + 1e-15, -1 + 1e-8, 1 - 1e-8, 1 - 1e-15, 1 - 2.**-53],
        np.float32: [-1 + 2.**-24, -1 + 1e-6, -1 + 1e-4, 1 - 1e-4, 1 - 1e-6, 1 - 2.**-24]}),
    "Exp": (tfb.Exp, mpmath.log, lambda z: 1 / z, {
        np.float64: [1e-300, 1e-100, 1e-8, 1e8, 1e100, 1e300],
        np.float32: [1e-30, 1e-15, 1e-8, 1e8, 1e15, 1e30]}),
    "Sinh": (tfb.Sinh, mpmath.asinh, lambda z: 1 / mpmath.sqrt(1 + z * z), {
        np.float64: [-1e300, -1e100, -1e8, 1e8, 1e100, 1e300],
        np.float32: [-1e30, -1e15, -1e8, 1e8, 1e15, 1e30]}),
    "Expm1": (tfb.Expm1, mpmath.log1p, lambda z: 1 / (1 + z), {
        np.float64: [-1 + 2.**-53, -1 + 1e-15, -1 + 1e-8, 1e8, 1e300],
        np.float32: [-1 + 2.**-24, -1 + 1e-6, -1 + 1e-4, 1e8, 1e30]}),
    "NormalCDF": (tfb.NormalCDF, _mp_normal_quantile, lambda z: 1 / mpmath.npdf(_mp_normal_quantile(z)), {
        np.float64: [1e-300, 1e-100, 1e-15, 1e-8, 1 - 1e-8, 1 - 2.**-53],
        np.float32: [1e-30, 1e-15, 1e-8, 1e-4, 1 - 1e-4, 1 - 2.**-24]}),
    "Softsign": (tfb.Softsign, lambda z: z / (1 - abs(z)), lambda z: 1 / (1 - abs(z))**2, {
        np.float64: [-1 + 2.**-53, -1 + 1e-15, -1 + 1e-8, 1 - 1e-8, 1 - 1e-15, 1 - 2.**-53],
        np.float32: [-1 + 2.**-24, -1 + 1e-6, -1 + 1e-4, 1 - 1e-4, 1 - 1e-6, 1 - 2.**-24]}),
    # TFP's cache makes Invert(Tanh) then Tanh the identity, also where tanh(z) rounds to ±1 and its derivative
    # to 0 (|z| > 19 in float64, > 9 in float32): the pair is left out of the sweep as TFP leaves it out.
    "Tanh round trip over Sinh": (lambda: tfb.Chain([tfb.Invert(tfb.Tanh()), tfb.Tanh(), tfb.Sinh()]), mpmath.asinh,
                                  lambda z: 1 / mpmath.sqrt(1 + z * z), {
                                      np.float64: [-1e300, -4e4, -20., 0.5, 5e3, 1e100],
                                      np.float32: [-1e30, -4e4, -10., 0.5, 5e3, 1e15]}),
    # Log = Invert(Exp) (the forward rule of Exp) over a Softplus flow: large negative z is y = e^z near 0.
    "Log over Softplus": (lambda: tfb.Chain([tfb.Log(), tfb.Softplus()]),
                          lambda z: _mp_softplus_inverse(mpmath.exp(z)),
                          lambda z: mpmath.exp(z) / -mpmath.expm1(-mpmath.exp(z)), {
                              np.float64: [-300., -30., -1e-8, 1e-8, 6.],
                              np.float32: [-40., -10., -1e-4, 1e-4, 4.]}),
}


def _exact_diagonal(phi, dphi, z, loc, scale):
  """`ℓ_i''(z_i)`, `ℓ_i(z) = -((φ(z) - μ_i)/σ_i)²/2 + log|φ'(z)|`, by a central difference in 100 digits.

  The step is `1e-30 |z|`, far inside the distance to any edge below (at least 1e-16 |z|): the truncation error
  is below 1e-28 relative, the rounding error below 1e-40.
  """
  with mpmath.workdps(100):
    exact = []
    for value, mu, sigma in zip(z, loc, scale):
      mu, sigma, x = mpmath.mpf(float(mu)), mpmath.mpf(float(sigma)), mpmath.mpf(float(value))
      log_density = lambda t, mu=mu, sigma=sigma: -((phi(t) - mu) / sigma)**2 / 2 + mpmath.log(abs(dphi(t)))  # noqa: E731
      h = abs(x) * mpmath.mpf(10)**-30
      second = (log_density(x + h) - 2 * log_density(x) + log_density(x - h)) / (h * h)
      exact.append((second, abs(phi(x) - mu) / sigma**2))
    return exact


def _relative_error(value, exact, dtype):
  """`|value - exact| / |exact|` in mpmath (no underflow), an exact value below the dtype's `tiny` counting as
  `tiny`; inf for a value that is not finite."""
  if not np.isfinite(value):
    return np.inf
  scale = max(abs(exact), mpmath.mpf(float(np.finfo(dtype).tiny)))
  return float(abs(mpmath.mpf(float(value)) - exact) / scale)


@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=lambda d: d.__name__)
@pytest.mark.parametrize("name", sorted(EDGES))
def test_edges_against_exact_hessian(name, dtype):
  make, phi, dphi, values = EDGES[name]
  _assert_exact(name, make(), phi, dphi, np.asarray(values[dtype], dtype), dtype)


# The Tanh round trip over Sinh as users nest it: the flow is Sinh, and TFP's cache makes `Invert(Tanh)` then
# `Tanh` the identity wherever their `Chain`s sit. `registry.pullbacks` walks through nested `Chain`s and
# `Invert(Chain)`s to see it; until session 21 it looked only among one `Chain`'s own members, and where the pair
# straddled a nested `Chain` it took both layers' derivatives at `tanh(z) = ±1`, 0 and inf: NaN for |z| > 19.
NESTED_ROUND_TRIPS = {
    "pair split, second in a nested Chain": lambda: tfb.Chain([
        tfb.Invert(tfb.Tanh()), tfb.Chain([tfb.Tanh(), tfb.Sinh()])]),
    "pair split, first in a nested Chain": lambda: tfb.Chain([tfb.Chain([tfb.Invert(tfb.Tanh())]), tfb.Tanh(),
                                                               tfb.Sinh()]),
    "pair split across two nested Chains": lambda: tfb.Chain([
        tfb.Chain([tfb.Invert(tfb.Tanh())]), tfb.Chain([tfb.Tanh(), tfb.Sinh()])]),
    "pair inside a nested Chain": lambda: tfb.Chain([tfb.Chain([tfb.Invert(tfb.Tanh()), tfb.Tanh()]), tfb.Sinh()]),
    "pair inside Invert(Chain)": lambda: tfb.Chain([
        tfb.Invert(tfb.Chain([tfb.Invert(tfb.Tanh()), tfb.Tanh()])), tfb.Sinh()]),
    "first as Invert(Chain), second nested": lambda: tfb.Chain([
        tfb.Invert(tfb.Chain([tfb.Tanh()])), tfb.Chain([tfb.Tanh(), tfb.Sinh()])]),
    "pair split inside Invert(Chain)": lambda: tfb.Invert(tfb.Chain([
        tfb.Invert(tfb.Sinh()), tfb.Chain([tfb.Invert(tfb.Tanh())]), tfb.Tanh()])),
    "first in Invert(Invert(Chain))": lambda: tfb.Chain([
        tfb.Invert(tfb.Invert(tfb.Chain([tfb.Invert(tfb.Tanh())]))), tfb.Chain([tfb.Tanh(), tfb.Sinh()])]),
    "pair split three Chains deep": lambda: tfb.Chain([
        tfb.Chain([tfb.Chain([tfb.Invert(tfb.Tanh())])]), tfb.Chain([tfb.Chain([tfb.Tanh()]), tfb.Sinh()])]),
}
NESTED_ROUND_TRIP_POINTS = {np.float64: [-1e300, -1e5, -20., 0.5, 400., 1e300],
                            np.float32: [-1e30, -1e5, -10., 0.5, 400., 1e30]}


@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=lambda d: d.__name__)
@pytest.mark.parametrize("name", sorted(NESTED_ROUND_TRIPS))
def test_nested_round_trip_against_exact_hessian(name, dtype):
  _, phi, dphi, _ = EDGES["Sinh"]
  _assert_exact(f"Tanh round trip over Sinh, {name}", NESTED_ROUND_TRIPS[name](), phi, dphi,
                np.asarray(NESTED_ROUND_TRIP_POINTS[dtype], dtype), dtype)


# 1 - K(z) for Kumaraswamy(2, 3) is (1 - z²)³: 7.9e-6, 8.0e-9, 6.4e-11, 8.0e-15 and, below float64's ulp at 1
# (K(z) rounds to 1), 8.0e-18; float32's ulp is 6e-8, so from its fourth point on K(z) rounds to 1. At z = 1e-8,
# K(z) = 3e-16 is near the other edge.
FALLBACK_ROUND_TRIP = {np.float64: [1e-8, 0.3, 1 - 1e-2, 1 - 1e-3, 1 - 2e-4, 1 - 1e-5, 1 - 1e-6],
                       np.float32: [1e-8, 0.3, 1 - 1e-1, 1 - 1e-2, 1 - 1e-3, 1 - 1e-4]}


@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=lambda d: d.__name__)
def test_fallback_round_trip_near_its_edge(dtype):
  """`Invert(K)` over `Chain([K, Sigmoid])`, `K` a `KumaraswamyCDF` (no rule: the autodiff fallback), as the
  property tests put `Invert(b)` over `b`'s domain map: the flow is `Sigmoid`, and TFP's cache makes the pair the
  identity. The value between the pair, `K(z)`, rounds next to 1 or onto it; the second `K` is served from the
  cached exact `z` (`registry.register_fallback_forward`). Re-differentiating `K`'s inverse at the rounded
  `K(z)` instead was 5.6e-9 off (float64) at `1 - K(z) = 8e-9`, 7.6e-4 at 8e-15, 0.23 at `z = 1e-8`, and not
  finite where `K(z)` rounds to 1.
  """
  kumaraswamy = tfb.KumaraswamyCDF(concentration1=tf.constant(2., dtype), concentration0=tf.constant(3., dtype))
  flow = tfb.Chain([tfb.Invert(kumaraswamy), tfb.Chain([kumaraswamy, tfb.Sigmoid()])])
  _, phi, dphi, _ = EDGES["Sigmoid"]
  _assert_exact("Kumaraswamy round trip over Sigmoid", flow, phi, dphi, np.asarray(FALLBACK_ROUND_TRIP[dtype], dtype),
                dtype)


# Between the pair, `Ascending` sums `exp` of the coordinates: after `e^30` (float64; `e^15` in float32) the
# later terms keep few or none of their digits, and inverting that sum recovers them only through TFP's cache.
VECTOR_FALLBACK_ROUND_TRIP = {np.float64: [0.5, 30., 1., -20., 5., 2., 1e300],
                              np.float32: [0.5, 15., 1., -5., 3., 2., 1e30]}


@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=lambda d: d.__name__)
def test_vector_fallback_round_trip(dtype):
  """`Invert(Ascending)` over `Ascending` over `Sinh`, `Ascending` a vector bijector without a rule (the flat
  autodiff fallback): the flow is `Sinh`, TFP's cache makes the pair the identity, and so must the sweep, in
  its Hessian and its log q. The fallback took `x` from its tape's copy of the points, so the second `Ascending`
  never saw the tensor the first took and inverted the rounded sum: log q 7e-7 off (the long property profile,
  session 29, `Chain([Invert(Ascending), Ascending])` under a `Shift` next to the edge of an `Exp`)."""
  assert not registry.has_analytic_rule(tfb.Ascending())
  bijector = tfb.Chain([tfb.Invert(tfb.Ascending()), tfb.Ascending(), tfb.Sinh()])
  _, phi, dphi, _ = EDGES["Sinh"]
  z = np.asarray(VECTOR_FALLBACK_ROUND_TRIP[dtype], dtype)
  _assert_exact("Ascending round trip over Sinh", bijector, phi, dphi, z, dtype)
  flow = tfd.TransformedDistribution(tfd.MultivariateNormalDiag(tf.zeros(z.size, dtype), tf.ones(z.size, dtype)),
                                     bijector)
  log_prob = tfp_hessian.log_prob_and_derivatives(flow, tf.constant(z[np.newaxis])).log_prob.numpy()
  exact = tfd.TransformedDistribution(flow.distribution, tfb.Sinh()).log_prob(z[np.newaxis]).numpy()
  np.testing.assert_allclose(log_prob, exact, rtol=8 * np.finfo(dtype).eps)


def _assert_exact(name, bijector, phi, dphi, z, dtype):
  """Ours against the exact diagonal Hessian of `bijector` (inverse `φ`, `φ'` in mpmath) over a diagonal normal at
  the points `z`, as the module docstring states."""
  dim = z.size
  rng = np.random.default_rng(0)
  loc, scale = rng.normal(size=dim).astype(dtype), rng.uniform(0.5, 2., size=dim).astype(dtype)
  flow = tfd.TransformedDistribution(tfd.MultivariateNormalDiag(tf.constant(loc), tf.constant(scale)), bijector)
  points = tf.constant(z[np.newaxis])
  ours = tfp_hessian.log_prob_hessian(flow, points).numpy()[0]
  assert ours.dtype == dtype
  np.testing.assert_array_equal(ours, ours.T)  # To the last bit; NaN is equal to NaN here.
  tape = np.diagonal(reference.tape_hessian(flow, points).numpy()[0])
  exact = _exact_diagonal(phi, dphi, z, loc, scale)
  largest = mpmath.mpf(float(np.finfo(dtype).max))
  representable = np.array([abs(truth) <= largest for truth, _ in exact])
  assert np.all(ours[np.ix_(representable, representable)][~np.eye(representable.sum(), dtype=bool)] == 0)
  eps = float(np.finfo(dtype).eps)
  for i, (value, reference_value, (truth, gradient)) in enumerate(zip(np.diagonal(ours), tape, exact)):
    where = f"{name} {np.dtype(dtype).name} at z = {z[i]!r}: ours {value!r}, tape {reference_value!r}, exact {truth}"
    if abs(truth) > largest:
      assert not np.isfinite(value), f"{where}: the exact entry overflows {np.dtype(dtype).name}"
      continue
    error = _relative_error(value, truth, dtype)
    reference_error = _relative_error(reference_value, truth, dtype)
    assert np.isfinite(value), f"{where}: not finite"
    kappa = float(max(1, gradient / abs(truth))) if truth else 1.
    assert error <= max(FACTOR * reference_error, ULPS * eps * kappa), (
        f"{where}: relative error {error:.3g} > {FACTOR}x the reference's {reference_error:.3g} and {ULPS} ulps "
        f"x {kappa:.3g}")


@pytest.mark.parametrize("dtype, z", [(np.float64, -700.), (np.float32, -80.)], ids=["float64", "float32"])
def test_overflow_between_layers_is_shared_with_the_reference(dtype, z):
  """The documented limit of a layer-by-layer sweep (docs/reliability.md, "NaN, validation and dtypes").

  `Log` over `Softplus` at `z = -700`: the exact Hessian is about -0.5, but the value between the layers is
  `y = e^z ≈ 1e-304`, where the Softplus layer's own curvature `1/y²` exceeds float64; the `Log` layer's
  Jacobian `y` would scale it back, but the overflow has already happened. The nested-tape reference
  differentiates the same layers and overflows the same way.
  """
  make, phi, dphi, _ = EDGES["Log over Softplus"]
  flow = tfd.TransformedDistribution(tfd.MultivariateNormalDiag(tf.zeros([1], dtype)), make())
  points = tf.constant([[z]], dtype)
  ((exact, _),) = _exact_diagonal(phi, dphi, [z], [0.], [1.])
  assert abs(exact) < 2  # Finite and modest: nothing about the answer itself is extreme.
  assert not np.isfinite(tfp_hessian.log_prob_hessian(flow, points).numpy()[0, 0, 0])
  assert not np.isfinite(reference.tape_hessian(flow, points).numpy()[0, 0, 0])


def test_preimage_is_shared_only_by_equal_bijectors():
  """The scope of derivatives from the cached preimage (docs/reliability.md, "NaN, validation and dtypes").

  `Chain([Invert(Tanh()), Tanh()])` is the identity through `tanh(12)`, which float64 rounds to 7.6e-11 of the
  edge of Tanh's range (ulp 1.1e-16). With equal bijectors TFP's cache holds the exact preimage `z` of that value,
  and the second layer's derivatives are taken there: exactly -1. Two unequal instances (other names) share no
  cache entries, so the second layer's derivatives are taken at the rounded value, 7.1e-6 off: the one pair of
  layers still less accurate than nested tapes, which cancel there because TF's tanh gradient is formed from the
  same rounded value.
  """
  base = tfd.MultivariateNormalDiag(tf.zeros([1], tf.float64))
  z = tf.constant([[12.], [-12.]], tf.float64)
  equal = tfd.TransformedDistribution(base, tfb.Chain([tfb.Invert(tfb.Tanh()), tfb.Tanh()]))
  unequal = tfd.TransformedDistribution(base, tfb.Chain([tfb.Invert(tfb.Tanh(name="a")), tfb.Tanh(name="b")]))
  for flow in (equal, unequal):
    np.testing.assert_allclose(reference.tape_hessian(flow, z).numpy().ravel(), -1., rtol=1e-14)
    np.testing.assert_allclose(reference.naive_hessian(flow, z).numpy().ravel(), -1., rtol=1e-14)
  np.testing.assert_allclose(tfp_hessian.log_prob_hessian(equal, z).numpy().ravel(), -1., rtol=1e-14)
  error = np.abs(tfp_hessian.log_prob_hessian(unequal, z).numpy().ravel() + 1.)
  assert np.all((error > 1e-6) & (error < 1e-5)), error
