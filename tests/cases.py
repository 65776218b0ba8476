"""The one registry of test cases: every bijector with a rule, and the flows built from them.

A `BijectorCase` makes a bijector with random (not near-identity) parameters for a dtype, and names the
values at the edge of its support. Adding a bijector to the package adds one entry here; the parametrized
tests in `test_bijectors.py` then check it against both references.
"""

import dataclasses
from typing import Callable, Optional, Tuple, Union

import numpy as np
import tensorflow as tf
import tensorflow_probability as tfp

tfb = tfp.bijectors
tfd = tfp.distributions

DIM = 5
DTYPES = (np.float64, np.float32)
# Relative tolerance of a Hessian entry, against the largest entry of its point's Hessian.
RTOL = {np.float64: 1e-8, np.float32: 1e-4}


@dataclasses.dataclass(frozen=True)
class BijectorCase:
  """A bijector factory and where its support ends.

  Attributes:
    make: `(dtype, rng) -> bijector`, random parameters drawn from `rng`.
    edges: coordinate values (in `z` space) at the edge of the support, placed one per point into otherwise
      ordinary sampled points; or `(bijector, dtype) -> values`.
    analytic: whether an analytic rule (not the autodiff fallback) must serve it.
    structure: "elementwise" (diagonal Jacobian and inverse Hessian), "linear" (zero inverse Hessian), or None.
    domain: `(dtype, bijector) -> domain bijector` mapping R^D onto the case bijector's forward domain where
      that is not all of R^D; the base is then a flow itself (a nested TransformedDistribution).
  """

  make: Callable[[np.dtype, np.random.Generator], tfb.Bijector]
  edges: Union[Tuple[float, ...], Callable[[tfb.Bijector, np.dtype], Tuple[float, ...]]] = ()
  analytic: bool = True
  structure: Optional[str] = None
  domain: Optional[Callable[[np.dtype, tfb.Bijector], tfb.Bijector]] = None


def _vec(rng, dtype, low=-1., high=1., size=DIM):
  return tf.constant(rng.uniform(low, high, size=size), dtype)


def _signed_vec(rng, dtype):
  return tf.constant(rng.choice([-1., 1.], size=DIM) * rng.uniform(0.5, 2., size=DIM), dtype)


def _well_conditioned(rng, dtype, tril=False):
  m = rng.normal(size=(DIM, DIM)) * 0.6 + np.diag(rng.choice([-1., 1.], DIM) * rng.uniform(1.5, 2.5, DIM))
  return tf.constant(np.tril(m) if tril else m, dtype)


def _lu(rng, dtype):
  lower_upper, permutation = tf.linalg.lu(_well_conditioned(rng, np.float64))
  return tf.cast(lower_upper, dtype), permutation


def _real_nvp(dtype, rng):
  kernel = tf.constant(rng.normal(size=(2, 2 * (DIM - 2))) * 0.7, dtype)

  def shift_and_log_scale(x, output_units):
    hidden = tf.tanh(tf.matmul(x, kernel))
    return hidden[..., :output_units], 0.5 * hidden[..., output_units:]

  return tfb.RealNVP(num_masked=2, shift_and_log_scale_fn=shift_and_log_scale)


BIJECTORS = {
    "Identity": BijectorCase(lambda dtype, rng: tfb.Identity(), structure="linear"),
    "Exp": BijectorCase(lambda dtype, rng: tfb.Exp(), edges=(1e-8, 1e4), structure="elementwise"),
    "Log": BijectorCase(lambda dtype, rng: tfb.Log(), edges=(-25., 10.), structure="elementwise",
                        domain=lambda dtype, _: tfb.Softplus()),
    "Expm1": BijectorCase(lambda dtype, rng: tfb.Expm1(), edges=(-1 + 1e-5, 1e4), structure="elementwise"),
    "Softplus": BijectorCase(lambda dtype, rng: tfb.Softplus(), edges=(1e-7, 50.), structure="elementwise"),
    "Softplus(hinge, low)": BijectorCase(
        lambda dtype, rng: tfb.Softplus(hinge_softness=tf.constant(0.7, dtype), low=tf.constant(-1.3, dtype)),
        edges=(-1.3 + 1e-6, 30.), structure="elementwise"),
    "Sigmoid": BijectorCase(lambda dtype, rng: tfb.Sigmoid(), edges=(1e-6, 1 - 1e-5), structure="elementwise"),
    "Sigmoid(low, high)": BijectorCase(
        lambda dtype, rng: tfb.Sigmoid(low=tf.constant(-2., dtype), high=tf.constant(3., dtype)),
        edges=(-2 + 1e-5, 3 - 1e-5), structure="elementwise"),
    "Tanh": BijectorCase(lambda dtype, rng: tfb.Tanh(), edges=(-1 + 1e-5, 1 - 1e-5), structure="elementwise"),
    "Sinh": BijectorCase(lambda dtype, rng: tfb.Sinh(), edges=(-1e3, 1e3), structure="elementwise"),
    "SinhArcsinh": BijectorCase(
        lambda dtype, rng: tfb.SinhArcsinh(skewness=_vec(rng, dtype), tailweight=_vec(rng, dtype, 0.5, 2.)),
        edges=(-50., 50.), structure="elementwise"),
    # TFP's own Power(3) inverse has NaN derivatives at y < 0 (a tf.where branch), so the references only
    # exist on y > 0; test_bijectors checks y < 0 by the flow's mirror symmetry.
    "Power(3)": BijectorCase(lambda dtype, rng: tfb.Power(tf.constant(3., dtype)), edges=(1e-3, 1e3),
                             structure="elementwise", domain=lambda dtype, _: tfb.Exp()),
    "Power(2.5)": BijectorCase(lambda dtype, rng: tfb.Power(tf.constant(2.5, dtype)), edges=(1e-4, 1e3),
                               structure="elementwise", domain=lambda dtype, _: tfb.Exp()),
    "NormalCDF": BijectorCase(lambda dtype, rng: tfb.NormalCDF(), edges=(1e-6, 1 - 1e-5),
                              structure="elementwise"),
    "Softsign": BijectorCase(lambda dtype, rng: tfb.Softsign(), edges=(-1 + 1e-5, 1 - 1e-5),
                             structure="elementwise"),
    "Square": BijectorCase(lambda dtype, rng: tfb.Square(), edges=(1e-6, 1e3), structure="elementwise",
                           domain=lambda dtype, _: tfb.Exp()),
    "Scale": BijectorCase(lambda dtype, rng: tfb.Scale(_signed_vec(rng, dtype)), structure="linear"),
    "Scale(log_scale)": BijectorCase(lambda dtype, rng: tfb.Scale(log_scale=_vec(rng, dtype)),
                                     structure="linear"),
    "Shift": BijectorCase(lambda dtype, rng: tfb.Shift(_vec(rng, dtype, -3., 3.)), structure="linear"),
    "ScaleMatvecDiag": BijectorCase(lambda dtype, rng: tfb.ScaleMatvecDiag(_signed_vec(rng, dtype)),
                                    structure="linear"),
    "ScaleMatvecTriL": BijectorCase(
        lambda dtype, rng: tfb.ScaleMatvecTriL(_well_conditioned(rng, dtype, tril=True)), structure="linear"),
    "ScaleMatvecLU": BijectorCase(lambda dtype, rng: tfb.ScaleMatvecLU(*_lu(rng, dtype)), structure="linear"),
    "ScaleMatvecLinearOperator(full)": BijectorCase(
        lambda dtype, rng: tfb.ScaleMatvecLinearOperator(
            tf.linalg.LinearOperatorFullMatrix(_well_conditioned(rng, dtype))), structure="linear"),
    "ScaleMatvecLinearOperator(tril, adjoint)": BijectorCase(
        lambda dtype, rng: tfb.ScaleMatvecLinearOperator(
            tf.linalg.LinearOperatorLowerTriangular(_well_conditioned(rng, dtype, tril=True)), adjoint=True),
        structure="linear"),
    "ScaleMatvecLinearOperator(diag)": BijectorCase(
        lambda dtype, rng: tfb.ScaleMatvecLinearOperator(tf.linalg.LinearOperatorDiag(_signed_vec(rng, dtype))),
        structure="linear"),
    "Permute": BijectorCase(lambda dtype, rng: tfb.Permute(rng.permutation(DIM)), structure="linear"),
    "Permute(reverse)": BijectorCase(lambda dtype, rng: tfb.Permute(np.arange(DIM)[::-1]), structure="linear"),
    "Invert(ScaleMatvecTriL)": BijectorCase(
        lambda dtype, rng: tfb.Invert(tfb.ScaleMatvecTriL(_well_conditioned(rng, dtype, tril=True))),
        structure="linear"),
    "Invert(Permute)": BijectorCase(lambda dtype, rng: tfb.Invert(tfb.Permute(rng.permutation(DIM))),
                                    structure="linear"),
    # Invert of a bijector without a rule is itself served by the fallback.
    "Invert(RealNVP) (fallback)": BijectorCase(lambda dtype, rng: tfb.Invert(_real_nvp(dtype, rng)),
                                               analytic=False),
    "Chain": BijectorCase(lambda dtype, rng: tfb.Chain([
        tfb.Shift(_vec(rng, dtype)), tfb.Softplus(), tfb.ScaleMatvecTriL(_well_conditioned(rng, dtype, True)),
        tfb.Permute(rng.permutation(DIM)),
        tfb.SinhArcsinh(skewness=_vec(rng, dtype), tailweight=_vec(rng, dtype, 0.5, 2.))])),
    "Invert(Chain)": BijectorCase(lambda dtype, rng: tfb.Invert(tfb.Chain([
        tfb.Tanh(), tfb.ScaleMatvecLU(*_lu(rng, dtype)), tfb.Sinh()])), domain=lambda dtype, _: tfb.Tanh()),
    "Chain()": BijectorCase(lambda dtype, rng: tfb.Chain([]), structure="linear"),
    # No analytic rule: the per-bijector autodiff fallback.
    "Ascending (fallback)": BijectorCase(lambda dtype, rng: tfb.Ascending(), analytic=False),
    "SoftClip (fallback)": BijectorCase(
        lambda dtype, rng: tfb.SoftClip(low=tf.constant(-1., dtype), high=tf.constant(2., dtype)),
        analytic=False),
    "RealNVP (fallback)": BijectorCase(_real_nvp, analytic=False),
}


def _inverted(case):
  """`Invert(b)` over a base pushed through `b` itself, so its points fill `b`'s whole domain."""

  def domain(dtype, inverted):
    inner = inverted.bijector
    return inner if case.domain is None else tfb.Chain([inner, case.domain(dtype, inner)])

  def edges(inverted, dtype):
    # Points near the edge of `b`'s range reach the base through `b`'s inverse, whose float32 rounding there is
    # amplified by the edge's own conditioning (y + 1 ≈ 1e-5 for Expm1 holds ~2 digits): ours and both
    # references are then all equally far from the truth. Those edges are checked in float64 only.
    if dtype == np.float32:
      return ()
    values = np.asarray(_edge_values(case, inverted.bijector, dtype), dtype)
    # Edge row k sits at coordinate k % DIM (see `flow_and_points`), where the parameters are those of that
    # coordinate.
    rows = np.arange(len(values))
    mapped = inverted.bijector.inverse(tf.constant(np.repeat(values[:, None], DIM, axis=1))).numpy()
    return tuple(mapped[rows, rows % DIM])

  return BijectorCase(lambda dtype, rng: tfb.Invert(case.make(dtype, rng)), edges=edges,
                      structure=case.structure, domain=domain)


def _edge_values(case, bijector, dtype):
  return case.edges(bijector, dtype) if callable(case.edges) else case.edges


# Every elementwise rule is also exercised through `Invert` (its forward rule).
BIJECTORS.update({f"Invert({name})": _inverted(case) for name, case in list(BIJECTORS.items())
                  if case.structure == "elementwise"})


def random_base(dtype, rng, dim=DIM):
  """A correlated Gaussian base with nonzero mean, so every term of the pullback is exercised."""
  loc = tf.constant(rng.normal(size=dim), dtype)
  scale_tril = tf.constant(np.tril(rng.normal(size=(dim, dim)) * 0.3) + np.diag(rng.uniform(0.7, 1.3, dim)), dtype)
  return tfd.MultivariateNormalTriL(loc, scale_tril)


def flow_and_points(case, dtype, seed=0, num_points=4, edges=True):
  """`(flow, z)`: the case's bijector over a random base, sampled points plus one point per edge value."""
  rng = np.random.default_rng(seed)
  base = random_base(dtype, rng)
  bijector = case.make(dtype, rng)
  if case.domain is not None:
    base = tfd.TransformedDistribution(base, case.domain(dtype, bijector))
  flow = tfd.TransformedDistribution(base, bijector)
  z = flow.sample(num_points, seed=seed).numpy()
  edges = _edge_values(case, bijector, dtype) if edges else ()
  edge_points = np.repeat(z[:1], len(edges), axis=0)
  for row, value in enumerate(edges):
    edge_points[row, row % DIM] = value
  return flow, tf.constant(np.concatenate([z, edge_points]), dtype)


def assert_close(actual, expected, rtol, event_ndims=2, what="Hessian"):
  """Entries agree to `rtol`, relative to the largest entry of their own point's quantity.

  The last `event_ndims` axes hold one point's quantity (2 for a Hessian, 1 for a gradient). Reports the worst
  entry on failure. Both sides must be finite: a NaN is a failure, never a pass.
  """
  actual, expected = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
  assert actual.shape == expected.shape, f"{what}: shape {actual.shape} != expected {expected.shape}"
  assert np.all(np.isfinite(expected)), f"{what}: the reference is not finite: {expected}"
  assert np.all(np.isfinite(actual)), f"{what}: not finite where the reference is: {actual}"
  axes = tuple(range(actual.ndim - event_ndims, actual.ndim))
  scale = np.max(np.abs(expected), axis=axes, keepdims=True)
  error = np.abs(actual - expected) / np.maximum(scale, np.finfo(np.float64).tiny)
  worst = np.unravel_index(np.argmax(error), error.shape)
  assert error[worst] <= rtol, (
      f"{what}: worst entry {worst}: {actual[worst]!r} vs {expected[worst]!r}, error "
      f"{error[worst]:.3g} of the point's largest entry > rtol {rtol:g}")
