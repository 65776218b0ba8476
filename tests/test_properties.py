"""Property-based tests: random flows built from every case of `cases.py` agree with the tape reference.

A flow is 1 to 6 layers drawn from `cases.BIJECTORS` (so a case added there is drawn here), each with random
parameters at a random event size D from 1 to 12, over a random base, in float64. A second test (`slow`: in the
full suite and the long profile) draws half the layers from the parameter forms of `cases.FAMILIES` (a Python
float, a tensor, a `tf.Variable`, per coordinate, another parameterisation, a batch `[B]` of parameters that the
points then carry), the rest from the other cases. A layer
whose forward domain is not all of R^D is preceded by its case's `domain` bijector, which maps whatever comes out
of the layer below onto it, so every drawn chain is a valid flow. The points are sampled from the flow itself, so
they lie in its support; where a sample overflows (a few stacked `Exp` or `Sinh` layers), or rounds onto the edge
of a support, the reference is not finite and the point is not compared, but a finite reference always needs a
finite result.

A third test (issue 14 §4) draws conditional layers (MAF, MAF with the condition at its first layer, IAF,
RealNVP with the package's dense conditioner; a condition per point or one for all) among 0 to 3 whole-space
layers of `cases.BIJECTORS`, under a structured event (a `Split` into a list through a `JointMap`, a dict of a
vector and a matrix, matrices by `Reshape`) or over a hierarchical `JointDistributionNamed` base with the layers
inside a `JointMap`, against nested tapes on the flattened function.

Profiles (`HYPOTHESIS_PROFILE`, default `ci`; `ci` and `long` derandomized, `long-part` drawn from the seed it is
given, all database-free, so every run that imports the same modules draws the same flows: Hypothesis also
draws, now and then, integers from the constants of the non-test modules in `sys.modules`, and the whole suite
imports more of them than this file alone (`harness`, `tfp_hessian.demo`, `.keras`, `.bench`), so the two draw
different flows from the sixth of the forms' test on):

    python -m pytest tests/test_properties.py                             # ci: 16 + 6 flows (the forms' 16 are slow)
    HYPOTHESIS_PROFILE=long python -m pytest tests/test_properties.py     # long: 1,000 + 1,000 + 252 flows
    HYPOTHESIS_PROFILE=long-part python -m pytest tests/test_properties.py -n 0 -k parameter_forms \
        --hypothesis-seed=1                                               # a quarter: 250 flows of seed 1 (1 to 4)

The long profile runs outside CI. A quarter of 250 flows of one test took 22 to 26 minutes of one core of the
shared 2-core machine (2026-12-01), so the four quarters of both tests run in about two hours on both cores. A
process keeps about 18 MB per drawn flow (TensorFlow and TFP hold every traced graph: docs/reliability.md), so
quarters in separate processes, not the 1,000 in one, keep it to a few GB. docs/reliability.md says when it
last passed and what it found.
"""

import dataclasses
import os
from typing import Tuple

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_probability as tfp
from hypothesis import HealthCheck, assume, event, example, given, note, settings
from hypothesis import strategies as st

import tfp_hessian
from tfp_hessian import execution, private_api, reference

from cases import BIJECTORS, FORM_NAMES, RTOL, _made, _real_nvp_dense, assert_close, random_base

tfb = tfp.bijectors
tfd = tfp.distributions

DTYPE = np.float64
MAX_DIM = 12
MAX_LAYERS = 6
NUM_POINTS = 3

_COMMON = dict(deadline=None, derandomize=True, database=None, print_blob=True,
               suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
# ci: 16 flows (20 until session 29, cut for CI's 20 minutes: the long profile draws 1,000).
settings.register_profile("ci", max_examples=16, **_COMMON)
settings.register_profile("long", max_examples=1000, **_COMMON)
# A quarter of the long profile, drawn from the seed given by `--hypothesis-seed` (1 to 4: the four parts): each
# quarter in a process of its own, both tests at once on two cores (module docstring).
settings.register_profile("long-part", max_examples=250, **dict(_COMMON, derandomize=False))
PROFILE_NAME = os.environ.get("HYPOTHESIS_PROFILE", "ci")
PROFILE = settings.get_profile(PROFILE_NAME)


@pytest.fixture(scope="module", autouse=True)
def _part_has_a_seed(request):
  """A part of the long profile is reproducible only by its seed."""
  if PROFILE_NAME == "long-part" and request.config.getoption("hypothesis_seed") is None:
    pytest.fail("HYPOTHESIS_PROFILE=long-part draws from a seed: give it, e.g. --hypothesis-seed=1 (parts 1 to 4)")


def _diag_normal(rng, dim):
  return tfd.MultivariateNormalDiag(tf.constant(rng.normal(size=dim), DTYPE),
                                    tf.constant(rng.uniform(0.5, 2., size=dim), DTYPE))


# Every path of `bases.py`: closed forms for multivariate normals and coordinatewise normals, the elementwise
# autodiff path for other scalar distributions, nested tapes for any other base.
BASES = {
    "MultivariateNormalTriL": lambda rng, dim: random_base(DTYPE, rng, dim),
    "MultivariateNormalDiag": _diag_normal,
    "Independent(Normal)": lambda rng, dim: tfd.Independent(
        tfd.Normal(tf.constant(rng.normal(size=dim), DTYPE), tf.constant(rng.uniform(0.5, 2., size=dim), DTYPE)),
        reinterpreted_batch_ndims=1),
    "Sample(Logistic)": lambda rng, dim: tfd.Sample(
        tfd.Logistic(tf.constant(rng.normal(), DTYPE), tf.constant(rng.uniform(0.5, 2.), DTYPE)), dim),
    "MultivariateStudentT": lambda rng, dim: tfd.MultivariateStudentTLinearOperator(
        tf.constant(rng.uniform(3., 10.), DTYPE), tf.constant(rng.normal(size=dim), DTYPE),
        tf.linalg.LinearOperatorLowerTriangular(random_base(DTYPE, rng, dim).scale.to_dense())),
}


@dataclasses.dataclass(frozen=True)
class FlowSpec:
  """What hypothesis draws (and prints on failure): everything else follows from `seed`."""

  dim: int
  layers: Tuple[str, ...]  # `cases.BIJECTORS` names, base side first.
  base: str
  nested: bool  # One TransformedDistribution per drawn layer (with its domain map), or one over a Chain.
  seed: int

  def build(self):
    """`(flow, layers)`: the flow, and its bijectors from the base side, each case's domain map before it.

    Nested, a drawn layer and its domain map are one level (a `Chain`), so a flow is at most `MAX_LAYERS` deep:
    TFP's own `sample`, which the sampling pass calls, takes time at least `2^depth` (docs/reliability.md), and at
    one level per bijector (12 deep) the long profile stalled on it. The sweep at 12 levels is the registry's
    deeply nested flow (`test_flows.py`)."""
    rng = np.random.default_rng(self.seed)
    base = BASES[self.base](rng, self.dim)
    layers, levels = [], []
    for name in self.layers:
      case = BIJECTORS[name]
      bijector = case.make(DTYPE, rng, dim=self.dim)
      if case.domain is not None:
        # As users write it: for `Invert(b)` the domain map is `b` itself, so TFP's cache ties the two. The
        # references and, since issue 14, the sweep (derivatives from the cached preimage, `registry.py`) then
        # both see `b⁻¹ ∘ b` as the identity. Rebuilt under a name of its own (as before issue 14), the map would
        # be an unequal instance, which shares no cache entries: that pair's limit is documented in docs/reliability.md
        # ("NaN, validation and dtypes") and measured in `test_edges.py`, not drawn here.
        layers.append(case.domain(DTYPE, bijector))
        levels.append(tfb.Chain([bijector, layers[-1]]))
      else:
        levels.append(bijector)
      layers.append(bijector)
    if self.nested:
      flow = base
      for level in levels:
        flow = tfd.TransformedDistribution(flow, level)
      return flow, layers
    return tfd.TransformedDistribution(base, tfb.Chain(layers[::-1])), layers


def _runs_in_tfp(names, dim):
  """Whether TFP itself can sample and evaluate a flow of these layers (`cases.BIJECTORS` names) at event size
  `dim`: a layer that takes points `[N, D]` only (a built Keras `BatchNormalization`, or a MADE at D = 1) cannot
  be in a flow with a batch of parameters, whose points `[N, B, D]` go through every layer, below the batch too
  (`BijectorCase.unbatched_points`, `BijectorCase.min_batched_dim`)."""
  cases = [BIJECTORS[name] for name in names]
  return not (any(case.batch for case in cases)
              and any(case.unbatched_points or dim < case.min_batched_dim for case in cases))


@st.composite
def flow_specs(draw, with_forms=False):
  dim = draw(st.integers(1, MAX_DIM))
  names = sorted(name for name, case in BIJECTORS.items() if case.min_dim <= dim and name not in FORM_NAMES)
  layer = st.sampled_from(names)
  if with_forms:
    # Points broadcast against a batch are not drawn here: the points are sampled, so carry the whole batch. Nor
    # are the chains of forms (one per kind, for CI): their layers are drawn one by one.
    forms = sorted(name for name in FORM_NAMES if BIJECTORS[name].points is None and "Chain[" not in name)
    layer = st.one_of(layer, st.sampled_from(forms))
  layers = draw(st.lists(layer, min_size=1, max_size=MAX_LAYERS).filter(lambda names: _runs_in_tfp(names, dim)))
  return FlowSpec(dim=dim, layers=tuple(layers), base=draw(st.sampled_from(sorted(BASES))),
                  nested=draw(st.booleans()), seed=draw(st.integers(0, 2**32 - 1)))


def test_a_layer_of_unbatched_points_is_not_drawn_with_a_batch_of_parameters():
  """A flow the full suite drew (session 22; `docs/reliability.md`): its `BatchNormalization` layer, built for
  points `[N, D]`, is in a flow with a batch of parameters, and TFP's own `sample` raises, with the batch above
  it or below, flat or nested. Without the batch, the flow runs."""
  layers = ("RealNVP(fraction_masked)", "Sinh", "Invert(RealNVP)", "Invert(Softplus[low: batch [B, 1]])",
            "BatchNormalization(center=False)")
  spec = FlowSpec(dim=11, layers=layers, base="Independent(Normal)", nested=False, seed=0)
  for drawn in [spec, dataclasses.replace(spec, layers=layers[-1:] + layers[:-1], nested=True)]:
    assert not _runs_in_tfp(drawn.layers, drawn.dim)
    with pytest.raises(tf.errors.InvalidArgumentError, match="Input to reshape is a tensor with 11 values"):
      drawn.build()[0].sample(NUM_POINTS, seed=(0, 1))
  unbatched = dataclasses.replace(spec, layers=layers[:3] + ("Invert(Softplus[low: tensor])",) + layers[4:])
  assert _runs_in_tfp(unbatched.layers, unbatched.dim)
  assert unbatched.build()[0].sample(NUM_POINTS, seed=(0, 1)).shape == (NUM_POINTS, 11)


def test_a_made_at_event_size_1_is_not_drawn_with_a_batch_of_parameters():
  """A flow the long profile's forms test drew (session 29; `docs/reliability.md`): a MAF at D = 1 in a flow with
  a batch of parameters. TFP's own `sample` raises in the MADE (tf-keras drops the trailing axis of size 1 of
  the points `[N, B, 1]`, `BijectorCase.min_batched_dim`). At D = 2 the flow runs."""
  spec = FlowSpec(dim=1, layers=("Softplus[hinge_softness, low: batch [B, 1]]", "MAF(MADE tanh)"),
                  base="MultivariateNormalTriL", nested=True, seed=0)
  assert not _runs_in_tfp(spec.layers, spec.dim)
  with pytest.raises(ValueError, match="expected axis -1 of input shape to have value 1"):
    spec.build()[0].sample(NUM_POINTS, seed=(0, 1))
  wider = dataclasses.replace(spec, dim=2)
  assert _runs_in_tfp(wider.layers, wider.dim)
  sample = wider.build()[0].sample(NUM_POINTS, seed=(0, 1))
  assert sample.shape.rank == 3 and sample.shape[0] == NUM_POINTS and sample.shape[-1] == 2


def _per_point(mask):
  """`[N]` from a mask `[N, *batch]`: true where it holds for every batch member (a batch of parameters)."""
  mask = np.asarray(mask)
  return np.all(mask.reshape(mask.shape[0], -1), axis=-1)


def _finite_points(*tensors):
  """Mask `[N]` of the points where every given per-point quantity is finite."""
  mask = True
  for tensor in tensors:
    tensor = np.asarray(tensor)
    mask = mask & np.all(np.isfinite(tensor.reshape(tensor.shape[0], -1)), axis=-1)
  return mask


def _inverse_member_by_member(members, y, event_ndims, kwargs):
  """`(x, event_ndims of x, mask [N])`: the inverse of `y` through `members` (y side first, as a `Chain`'s), each
  member, down through every `Chain` and `JointMap`, inverting a fresh copy of its own input with its own kwargs
  (`kwargs` by member name, routed as TFP routes them); the mask holds where every inverse and inverse log-det is
  finite."""
  mask = True
  for member in members:
    y, event_ndims, inside = _member_inverse(member, y, event_ndims, kwargs.get(member.name, {}))
    mask = mask & inside
  return y, event_ndims, mask


def _member_inverse(bijector, y, event_ndims, kwargs):
  """As `_inverse_member_by_member` for one bijector, `kwargs` its own."""
  if isinstance(bijector, private_api.CHAIN):
    return _inverse_member_by_member(bijector.bijectors, y, event_ndims, kwargs)
  if isinstance(bijector, private_api.JOINT_MAP):
    members = tf.nest.flatten(bijector.bijectors)
    parts = [_inverse_member_by_member([member], part, ndims, kwargs)
             for member, part, ndims in zip(members, tf.nest.flatten(y), tf.nest.flatten(event_ndims))]
    pack = lambda values: tf.nest.pack_sequence_as(bijector.bijectors, values)  # noqa: E731
    mask = True
    for _, _, inside in parts:
      mask = mask & inside
    return pack([x for x, _, _ in parts]), pack([ndims for _, ndims, _ in parts]), mask
  fresh = tf.nest.map_structure(tf.identity, y)
  ildj = np.isfinite(bijector.inverse_log_det_jacobian(fresh, event_ndims=event_ndims, **kwargs))
  x = bijector.inverse(tf.nest.map_structure(tf.identity, y), **kwargs)
  part, ndims = tf.nest.flatten(y)[0], tf.nest.flatten(event_ndims)[0]
  points = part.shape[:len(part.shape) - ndims]  # [N, *batch]
  inside = _finite_points(*tf.nest.flatten(x)) & _per_point(np.broadcast_to(ildj, points))
  return x, bijector.inverse_event_ndims(event_ndims, **kwargs), inside


def _inside_every_support(layers, z, event_ndims=1, kwargs=None):
  """Mask `[N]` of the points whose inverse stays finite when every layer recomputes it from its own input.

  `layers` from the base side (`FlowSpec.build`'s, or a flow's bijector alone), `kwargs` as a `Chain` of them
  takes them (by layer name), `event_ndims` those of `z` (a structure for a structured event).

  TFP caches each bijector's (input, output) pairs by its parameters, across instances, so in `log_prob` a layer
  `b` followed by `Invert(b)` (or by its domain map, an equal `b`) is the identity exactly: its inverse returns
  the cached input even where the value between the two rounds onto the edge of `b`'s range (`tanh(20) = 1.0`).
  There the reference stays finite through the cache alone, while every intermediate derivative of the layers
  overflows. Such points lie outside the float64 flow: each layer here inverts a fresh copy of its input, down
  to the members of a drawn `Chain` (a case such as `Chain(Invert(Tanh), Tanh, Sinh)`) and of a `JointMap` (a
  structured event). TFP's own log q there adds and subtracts the pair's log-dets, of the size of `z` (`2.4e10`
  at `z = 1.2e10`), and keeps only their rounding (6.6e-7 seen; 0.0125 at `|z| = 9.3e13`); `test_edges.py` checks
  such a pair against exact arithmetic instead.
  """
  _, _, mask = _inverse_member_by_member(layers[::-1], z, event_ndims, kwargs or {})
  return np.broadcast_to(mask, (len(tf.nest.flatten(z)[0]),))


def _tape_hessians_with_neighbours(flow, z):
  """`(at z, at its neighbours)`: nested tapes at `z` (`[N, *batch, D]`), and at `z` moved one ulp up and one down
  (`[2, N, *batch, D, D]`), from one reference call on all `3N` points (the points are independent; one call
  records and replays the tapes once instead of twice)."""
  values = z.numpy()
  points = np.concatenate([values, np.nextafter(values, np.inf), np.nextafter(values, -np.inf)])
  hessians = reference.tape_hessian(flow, tf.constant(points)).numpy()
  return hessians[:len(values)], hessians[len(values):].reshape((2, len(values)) + hessians.shape[1:])


def _determined_by_z(layers, z, expected, moved, rtol):
  """Masks `[N]`: the points where `z` determines the base draw and the reference to `rtol / 10`, and of those
  the points where it determines every value between the layers too, each coordinate to `rtol / 10` of itself.

  The sampling pass looks every inverse up: its derivatives are those at the exact image of the base draw, of
  which `z` is the rounding. Where the flow's forward map loses digits (a value between two layers next to the
  edge of a support, or squashed by stacked roots), no float64 computation from `z` can tell the two apart:
  the draw recovered from `z` differs from the one sampled (1e-4 seen, long profile), or the Hessian changes by
  more than the tolerance when `z` moves by one ulp. Nor where a value between the layers loses digits that the
  draw does not show: a `SinhArcsinh` inverse that cancels to 5.6e-9, recovered 1.4e-8 off (its relative digits
  are what its successors' derivatives take, as 1/y²), then a `Softplus` inverse that flattens that to 3e-10
  of the draw, while a one-ulp move of `z` rounds back to the same values (long profile, parameter forms, seed
  4). The sampling pass is compared only where none of these happens (the second mask); the inverting pass and
  the reference both compute from `z` and are compared wherever the first holds.
  """
  drawn, recovered = z, tf.identity(z)
  values_determined = np.ones(z.shape[0], bool)  # per point: a layer may broadcast the points to a batch
  for bijector in layers[::-1]:
    drawn = bijector.inverse(drawn)  # TFP's cache: the sampled values themselves
    recovered = bijector.inverse(tf.identity(recovered))  # recomputed from z, layer by layer
    with np.errstate(invalid="ignore"):
      error = np.abs(recovered.numpy() - drawn.numpy())
      values_determined &= _per_point((error <= rtol / 10 * np.abs(drawn)) | (error == 0))
  drawn, recovered = drawn.numpy(), recovered.numpy()
  with np.errstate(invalid="ignore"):
    same_draw = (np.max(np.abs(recovered - drawn), axis=-1)
                 <= rtol / 10 * np.maximum(np.max(np.abs(drawn), axis=-1), 1.))
  scale = np.max(np.abs(expected), axis=(-2, -1))
  with np.errstate(invalid="ignore"):
    change = np.max(np.abs(moved - expected), axis=(0, -2, -1)) / scale
  determined = _per_point(same_draw & (change <= rtol / 10))  # NaN (a moved point off the support) is False.
  return determined, determined & values_determined


def _log_prob_determined_by_z(log_prob, z, value, rtol):
  """Mask (`value`'s shape) of the points where a one-ulp move of `z` changes `log_prob(z)` by at most rtol/10 of
  `max(1, |value|)`, `value = log_prob(z)`. Elsewhere two float64 computations of log q from `z` differ by about
  that much (next to the edge of a `Power` layer's domain: 2e-6 seen, long profile)."""
  moved = np.stack([np.asarray(log_prob(_nudged(z, direction))) for direction in (np.inf, -np.inf)])
  with np.errstate(invalid="ignore"):
    change = np.max(np.abs(moved - value), axis=0) / np.maximum(np.abs(value), 1.)
  return change <= rtol / 10  # NaN (a moved point off the support) is False.


def _check_result(result, z, dim):
  """Shapes (`z`'s: `[N, *batch]` with a batch of parameters), dtypes and exact symmetry, at every point."""
  hessian = result.hessian.numpy()
  assert result.hessian.dtype == z.dtype and result.gradient.dtype == z.dtype
  assert z.shape[0] == NUM_POINTS and hessian.shape == tuple(z.shape[:-1]) + (dim, dim)
  np.testing.assert_array_equal(hessian, np.swapaxes(hessian, -1, -2))  # NaN is equal to NaN here.
  return hessian


@PROFILE
@given(flow_specs())
def test_random_flow_matches_tape_reference(spec):
  """Both entry points (inverting `z`, and the sampling pass) against one nested-tape reference at `z`."""
  _check_random_flow(spec)


# Half the layers from the parameter forms cost about 3x per flow (batches of parameters carried by the points):
# in the full suite and the long profile; CI keeps one chain per kind of form (`test_bijectors.py`).
@pytest.mark.slow
@PROFILE
@given(flow_specs(with_forms=True))
def test_random_flow_with_parameter_forms_matches_tape_reference(spec):
  """As `test_random_flow_matches_tape_reference`, half the layers drawn from the parameter forms."""
  _check_random_flow(spec)


def _check_random_flow(spec):
  flow, layers = spec.build()
  z, sampled = tfp_hessian.sample_and_log_prob_derivatives(flow, NUM_POINTS, seed=(spec.seed % 2**31, 1))
  note(f"z = {z.numpy()!r}")
  plans = []  # the plan of the call checked here, chosen when it is traced (its second call on the flow)
  with execution.observe(plans.append):
    inverted = tfp_hessian.log_prob_and_derivatives(flow, tf.identity(z))  # A fresh tensor: no cached inverse.
  expected, moved = _tape_hessians_with_neighbours(flow, z)
  expected_log_prob = flow.log_prob(tf.identity(z)).numpy()
  finite = _finite_points(z, expected, expected_log_prob)
  inside = _inside_every_support(layers, z)
  event(f"points with a finite reference: {finite.sum()} of {NUM_POINTS}")
  event(f"points finite only through TFP's cache: {(finite & ~inside).sum()}")
  finite &= inside
  rtol = RTOL[DTYPE]
  # Where z does not determine the base draw (a value between two layers next to the edge of a support), the
  # reference's own error exceeds rtol: nested tapes evaluate the base at a draw off by more than rtol/10, and
  # ours takes a layer's derivatives at the rounded value (a limit stated in docs/reliability.md). Both entry
  # points are compared where z determines the draw, the sampling pass only where z determines every value between
  # the layers too (`_determined_by_z`); log q at every finite point.
  determined, every_value_determined = _determined_by_z(layers, z, expected, moved, rtol)
  determined &= finite
  every_value_determined &= finite
  event(f"points determined by z to rtol/10: {determined.sum()} of {finite.sum()}")
  event(f"points whose every value between layers z determines: {every_value_determined.sum()} of {finite.sum()}")
  hessian = _check_result(inverted, z, spec.dim)
  if determined.any():
    assert_close(hessian[determined], expected[determined], rtol, what="Hessian (inverting z) vs nested tapes")
  hessian = _check_result(sampled, z, spec.dim)
  if every_value_determined.any():
    assert_close(hessian[every_value_determined], expected[every_value_determined], rtol,
                 what="Hessian (sampling pass) vs nested tapes")
  # log q is a sum of O(1) terms that may cancel to near zero: its rounding error is absolute. Where z determines
  # the draw it is TFP's own log q; elsewhere it is TFP's log q run the way the default call ran
  # (its `execution` plan): where z does not determine the draw, an XLA-compiled sweep rounds differently
  # from TF's graph, and so does TFP's own `log_prob` compiled the same way, by as much as the draw is uncertain.
  # That comparison holds where z determines TFP's log q itself to rtol/10 (`_log_prob_determined_by_z`); ours
  # must be finite wherever TFP's is.
  log_prob = inverted.log_prob.numpy()
  np.testing.assert_allclose(log_prob[determined], expected_log_prob[determined], rtol=rtol, atol=rtol)
  # The plan the checked call ran by, as it chose it: `execution_plan` would trace the whole sweep again (a
  # quarter of this test's time). The flow is new, so a call that traced nothing ran op by op: no XLA.
  xla = any(plan.xla for plan in plans)
  event(f"the checked call ran {'XLA-compiled' if xla else 'as a graph' if plans else 'op by op'}")
  same_execution_fn = tf.function(lambda z: flow.log_prob(z), jit_compile=xla)
  same_execution = same_execution_fn(tf.identity(z)).numpy()
  log_prob_determined = finite & _per_point(_log_prob_determined_by_z(same_execution_fn, z, same_execution, rtol))
  event(f"points where z determines log q to rtol/10: {log_prob_determined.sum()} of {finite.sum()}")
  assert np.all(np.isfinite(log_prob[finite])), f"log q not finite where TFP's is: {log_prob}"
  np.testing.assert_allclose(log_prob[log_prob_determined], same_execution[log_prob_determined], rtol=rtol,
                             atol=rtol)


# -- conditional layers and structured events (issue 14 §4) ---------------------------------------------------

CONDITION_SIZE = 2

# Conditional layers (`bijector_kwargs` by layer name), each `(dtype, rng, dim, name) -> bijector`, for dim >= 2.
CONDITIONAL_LAYERS = {
    "conditional MAF": lambda dtype, rng, dim, name: tfb.MaskedAutoregressiveFlow(
        _made(dtype, rng, dim=dim, conditional_size=CONDITION_SIZE), name=name),
    "conditional MAF (condition at the first layer)": lambda dtype, rng, dim, name: tfb.MaskedAutoregressiveFlow(
        _made(dtype, rng, dim=dim, conditional_size=CONDITION_SIZE, conditional_layers="first_layer"), name=name),
    "conditional IAF": lambda dtype, rng, dim, name: tfb.Invert(tfb.MaskedAutoregressiveFlow(
        _made(dtype, rng, dim=dim, conditional_size=CONDITION_SIZE)), name=name),
    "conditional RealNVP": lambda dtype, rng, dim, name: _real_nvp_dense(
        dtype, rng, dim=dim, conditional_size=CONDITION_SIZE, name=name),
    "conditional inverted RealNVP": lambda dtype, rng, dim, name: tfb.Invert(_real_nvp_dense(
        dtype, rng, dim=dim, conditional_size=CONDITION_SIZE), name=name),
}

# Maps of each coordinate alone, onto parts of a structured event (any shape).
PART_MAPS = {
    "Exp": lambda rng: tfb.Exp(),
    "Softplus": lambda rng: tfb.Softplus(hinge_softness=tf.constant(rng.uniform(0.5, 2.), DTYPE)),
    "Sinh": lambda rng: tfb.Sinh(),
    "SinhArcsinh": lambda rng: tfb.SinhArcsinh(tf.constant(rng.uniform(-0.8, 0.8), DTYPE),
                                               tf.constant(rng.uniform(0.7, 1.3), DTYPE)),
    "Sigmoid(low, high)": lambda rng: tfb.Sigmoid(tf.constant(-1., DTYPE), tf.constant(rng.uniform(0.5, 3.), DTYPE)),
    "Identity": lambda rng: tfb.Identity(),
}


def _matrix_shape(size):
  """`[rows, columns]` with rows, columns > 1 for `size` elements, or None (a prime size)."""
  rows = next((r for r in range(2, size) if size % r == 0), None)
  return None if rows is None else [rows, size // rows]


def _restructure_to_dict(dim, parts):
  """A dict of a vector and (where its size allows) a matrix: `Split`, `Restructure`, `Reshape`, maps per part."""
  sizes = [dim // 2, dim - dim // 2]
  shape = _matrix_shape(sizes[1])
  second = parts[1] if shape is None else tfb.Chain([parts[1], tfb.Reshape(shape)])
  return [tfb.JointMap({"u": parts[0], "v": second}), tfb.Restructure({"u": 0, "v": 1}), tfb.Split(sizes)]


# Outermost layers that give the event its structure, `(dim, parts) -> bijectors` (outermost first).
STRUCTURES = {
    "vector": lambda dim, parts: [],
    "Split + JointMap": lambda dim, parts: [tfb.JointMap(parts), tfb.Split([dim // 2, dim - dim // 2])],
    "Restructure into a dict": _restructure_to_dict,
    "Reshape to matrices": lambda dim, parts: [parts[0], tfb.Reshape(_matrix_shape(dim))],
}


@dataclasses.dataclass(frozen=True)
class StructuredFlowSpec:
  """A flow with conditional layers among the vector layers, under a structured event, or over a joint base."""

  dim: int
  layers: Tuple[str, ...]  # `cases.BIJECTORS` names, base side first.
  conditional: Tuple[Tuple[int, str, bool], ...]  # (position among `layers`, kind, one condition for all points)
  structure: str  # a `STRUCTURES` name, or "JointDistribution base"
  parts: Tuple[str, str]  # `PART_MAPS` names for the two parts of a structured event
  seed: int

  def build(self):
    """`(flow, kwargs)`: the flow and the `bijector_kwargs` that carry every layer's condition."""
    rng = np.random.default_rng(self.seed)
    vector = [BIJECTORS[name].make(DTYPE, rng, dim=self.dim) for name in self.layers]
    conditions = {}
    for k, (position, kind, shared) in enumerate(self.conditional):
      name = f"conditional_{k}"
      vector.insert(position + k, CONDITIONAL_LAYERS[kind](DTYPE, rng, self.dim, name))
      shape = (CONDITION_SIZE,) if shared else (NUM_POINTS, CONDITION_SIZE)
      conditions[name] = dict(conditional_input=tf.constant(rng.normal(size=shape), DTYPE))
    parts = [PART_MAPS[name](rng) for name in self.parts]
    if self.structure == "JointDistribution base":
      # A hierarchical prior over a vector `a` and a pair `b` whose scale depends on `a`; the vector layers
      # (with the conditions) act on `a` inside a `JointMap`.
      prior = tfd.JointDistributionNamed(dict(
          a=_diag_normal(rng, self.dim),
          b=lambda a: tfd.Independent(tfd.Normal(0.3 * tf.tanh(a[..., :1]) * tf.ones([2], DTYPE),
                                                 tf.exp(0.2 * a[..., -1:]) * tf.ones([2], DTYPE)), 1)))
      layers = tfb.Chain(vector[::-1], name="a_layers")
      flow = tfd.TransformedDistribution(prior, tfb.JointMap(dict(a=layers, b=parts[0])))
      return flow, dict(bijector_kwargs={"a_layers": conditions})
    outer = STRUCTURES[self.structure](self.dim, parts)
    flow = tfd.TransformedDistribution(random_base(DTYPE, rng, self.dim), tfb.Chain(outer + vector[::-1]))
    return flow, dict(bijector_kwargs=conditions)


# Layers defined on all of R^D (no domain map), without the parameter forms: the structure and the conditions
# are what is drawn here; the edges of supports and the forms (batches of parameters among them) are drawn by
# `test_random_flow_matches_tape_reference`.
_WHOLE_SPACE = sorted(name for name, case in BIJECTORS.items() if case.domain is None and name not in FORM_NAMES)


@st.composite
def structured_flow_specs(draw):
  dim = draw(st.integers(2, 8))
  names = [name for name in _WHOLE_SPACE if BIJECTORS[name].min_dim <= dim]
  layers = draw(st.lists(st.sampled_from(names), min_size=0, max_size=3))
  conditional = draw(st.lists(
      st.tuples(st.integers(0, len(layers)), st.sampled_from(sorted(CONDITIONAL_LAYERS)), st.booleans()),
      min_size=1, max_size=2))
  structures = [s for s in STRUCTURES if s != "Reshape to matrices" or _matrix_shape(dim)] + ["JointDistribution base"]
  return StructuredFlowSpec(dim=dim, layers=tuple(layers), conditional=tuple(sorted(conditional)),
                            structure=draw(st.sampled_from(structures)),
                            parts=tuple(draw(st.lists(st.sampled_from(sorted(PART_MAPS)), min_size=2, max_size=2))),
                            seed=draw(st.integers(0, 2**32 - 1)))


def _nudged(z, direction):
  return tf.nest.map_structure(lambda part: tf.constant(np.nextafter(part.numpy(), direction)), z)


@settings(PROFILE, max_examples=max(PROFILE.max_examples // 4, 1))  # ci: 4 flows and the examples, long: 250
@given(structured_flow_specs())
# Every structure is drawn in the long profile; the joint base, with conditions reaching into its `JointMap`,
# every time.
@example(StructuredFlowSpec(dim=3, layers=("Exp",), conditional=((0, "conditional MAF", True),
                                                                 (1, "conditional IAF", False)),
                            structure="JointDistribution base", parts=("Softplus", "Sinh"), seed=5))
# The long profile's 223rd flow (2026-11-30): at |z| = 9.3e13, TFP's log q finite only through its cache.
@example(StructuredFlowSpec(dim=3, layers=("Chain(Invert(Tanh), Tanh, Sinh)", "Shift",
                                           "Chain(Invert(Tanh), Tanh, Sinh)"),
                            conditional=((3, "conditional RealNVP", False),), structure="JointDistribution base",
                            parts=("Softplus", "Softplus"), seed=1132))
def test_random_structured_conditional_flow_matches_tape_reference(spec):
  """Conditional layers (random conditions, per point or shared) under structured events or over a joint base,
  against nested tapes on the flattened function, at points sampled from the flow with those conditions."""
  flow, kwargs = spec.build()
  event(f"structure: {spec.structure}")
  for _, kind, shared in spec.conditional:
    event(f"layer: {kind}, {'one condition for all points' if shared else 'a condition per point'}")
  z = flow.sample(NUM_POINTS, seed=(spec.seed % 2**31, 2), **kwargs)
  z = tf.nest.map_structure(lambda part: tf.constant(part.numpy()), z)  # no cached inverse
  note(f"z = {z!r}")
  result = tfp_hessian.log_prob_and_derivatives(flow, z, **kwargs)
  expected = reference.tape_hessian(flow, z, **kwargs).numpy()
  expected_gradient = reference.tape_gradient(flow, z, **kwargs).numpy()
  expected_log_prob = flow.log_prob(z, **kwargs).numpy()
  size = tfp_hessian.flatten_event(flow, z).shape[-1]
  batch = expected_log_prob.shape  # [N], or [N, *batch] for layers with batch-shaped parameters
  hessian = result.hessian.numpy()
  assert hessian.shape == batch + (size, size) and result.hessian.dtype == DTYPE
  np.testing.assert_array_equal(hessian, np.swapaxes(hessian, -1, -2))
  hessian, expected = hessian.reshape(-1, size, size), expected.reshape(-1, size, size)
  gradient, expected_gradient = result.gradient.numpy().reshape(-1, size), expected_gradient.reshape(-1, size)
  log_prob, expected_log_prob = result.log_prob.numpy().reshape(-1), expected_log_prob.reshape(-1)
  rtol = RTOL[DTYPE]
  finite = _finite_points(expected, expected_gradient, expected_log_prob)
  # Where a one-ulp move of z changes the reference by more than rtol / 10, z does not determine it (a draw
  # squashed next to the edge of a range): not compared, as in `test_random_flow_matches_tape_reference`.
  moved = np.stack([reference.tape_hessian(flow, _nudged(z, d), **kwargs).numpy().reshape(expected.shape)
                    for d in (np.inf, -np.inf)])
  with np.errstate(invalid="ignore"):
    change = np.max(np.abs(moved - expected), axis=(0, -2, -1)) / np.max(np.abs(expected), axis=(-2, -1))
  determined = finite & (change <= rtol / 10)
  event(f"points compared: {determined.sum()} of {len(determined)}")
  # A flow whose every sampled point is that ill-conditioned tests nothing here: another is drawn (the long
  # profile drew two `Chain` cases around a conditional MAF, a 1-ulp move changing the reference by 150x).
  assume(determined.any())
  assert_close(hessian[determined], expected[determined], rtol, what="Hessian vs nested tapes")
  assert_close(gradient[determined], expected_gradient[determined], rtol, 1, what="gradient")
  # Where TFP's log q is finite only through its cache (`_inside_every_support`, walked through the structure's
  # `JointMap`s with the conditions), it keeps the rounding of log-dets of the size of z (0.0125 seen, long
  # profile): log q is not compared there; ours must be finite wherever TFP's is.
  event_ndims = tf.nest.map_structure(lambda shape: shape.rank, flow.event_shape)
  inside = _inside_every_support([flow.bijector], z, event_ndims, {flow.bijector.name: kwargs["bijector_kwargs"]})
  inside = np.broadcast_to(inside.reshape((-1,) + (1,) * (len(batch) - 1)), batch).reshape(-1)
  event(f"points finite only through TFP's cache: {(finite & ~inside).sum()}")
  assert np.all(np.isfinite(log_prob[finite])), f"log q not finite where TFP's is: {log_prob}"
  np.testing.assert_allclose(log_prob[determined & inside], expected_log_prob[determined & inside], rtol=rtol,
                             atol=rtol)
