"""How the default call runs in a graph (`execution.py`): XLA where chosen, exact either way.

The flows of `test_flows.FLOWS` whose sweep is compiled (`test_flows.COMPILED`, checked there with every flow's
plan) are checked against the references there, through the compiled eager path (a `tf.function` of the
package's own). Here: why some flows are not compiled, that the choice holds inside a user's `tf.function` and
follows the number of points, and that in float32 a compiled sweep is, point by point, no less accurate than
nested tapes are.
"""

import numpy as np
import pytest
import tensorflow as tf

import tfp_hessian
from tfp_hessian import execution, products, reference
from tfp_hessian import sweep as sweep_lib

from test_flows import COMPILED, LARGE_D, PULL_BACK_COMPILED, assert_matches_references, make_flow

DENSE_AFFINE = f"dense affine layers at D = {LARGE_D}"  # triangular solves of more than 16 coordinates

# Flows of the registry that keep the traced graph, with the op that decides it (which flows are compiled, and
# that every plan says why: `test_flows.test_flow_matches_references`).
NOT_COMPILED = {
    DENSE_AFFINE: "MatrixTriangularSolve of more than 16 coordinates",  # slow under XLA on CPU
    "chain with IAF": "While",  # an IAF's sequential inverse
    "JointDistributionNamed (hierarchical)": "PlaceholderWithDefault",
}


# Flows whose sweep is not compiled whole (a triangular solve of many coordinates, a joint distribution's
# placeholders, other ops of the inverse pass) but whose pull-back is, alone, from `execution._MIN_POINTS_PULL_BACK`
# points on: in CI one per kind of pull-back (affine and elementwise at D = 96, fallback layers, structured events,
# an event size that changes), the rest of them in the full suite. (Flows of at most 16 coordinates whose only such
# ops are triangular solves and `GatherNd` are compiled whole, their pull-backs with them, permutation frames
# included: `test_flows.COMPILED`.)
PULL_BACK = [DENSE_AFFINE, "batch [B, 1] fallback layer, points [N, 1, D]",
             "JointDistributionNamed (hierarchical)",
             "Invert(JointMap), Invert(Split) over a JointDistributionSequential",
             "IteratedSigmoidCentered (event size changes)"]
PULL_BACK_SLOW = [
    "JointDistributionCoroutine", "JointDistributionCoroutineAutoBatched", "JointDistributionNamedAutoBatched",
    "JointDistributionSequential", "JointDistributionSequentialAutoBatched", "JointMap over a JointDistributionNamed",
    "MultivariateNormalDiagPlusLowRankCovariance", "MultivariateStudentT (full autodiff)",
    "Sample(StudentT) (diagonal autodiff)", "bare MultivariateStudentT"]


# ("mixed chain", also affine and permuted, is left out: its references overflow at some points it draws.)


def _drawn_points(distribution):
  """`execution._MIN_POINTS_PULL_BACK` draws from the flow, `[draws, *batch, *event]` (distinct points: a mix-up
  between points would show), as constants (TFP's cache of what it sampled plays no part)."""
  drawn = distribution.sample(execution._MIN_POINTS_PULL_BACK, seed=(3, 5))
  return tf.nest.map_structure(lambda part: tf.constant(part.numpy()), drawn)


def _plans(distribution, z, kwargs, signature=None):
  """The plans chosen while a user's `tf.function` of `log_prob_hessian` is traced."""
  plans = []
  with execution.observe(plans.append):
    function = tf.function(lambda z: tfp_hessian.log_prob_hessian(distribution, z, **kwargs),
                           input_signature=signature)
    function.get_concrete_function(*([] if signature else [z]))
  return plans


@pytest.mark.parametrize("name", COMPILED)
def test_compiled_where_every_op_compiles(name):
  distribution, z, kwargs = make_flow(name, np.float64)
  plan = tfp_hessian.execution_plan(distribution, z, **kwargs)
  assert plan.xla, plan.reason
  assert "XLA-compiled" in plan.reason
  assert [p.xla for p in _plans(distribution, z, kwargs)] == [True]


@pytest.mark.parametrize("name, op", sorted(NOT_COMPILED.items()))
def test_not_compiled_names_the_op(name, op):
  distribution, z, kwargs = make_flow(name, np.float64)
  plan = tfp_hessian.execution_plan(distribution, z, **kwargs)
  assert not plan.xla
  assert op in plan.reason


def test_many_points_and_unknown_points_are_not_compiled():
  distribution, z, kwargs = make_flow(COMPILED[0], np.float64)
  n = z.shape[-1]
  many = execution._MAX_ELEMENTS // n ** 2 + 1
  big_z = tf.tile(z, [-(-many // z.shape[0]), 1])[:many]
  big_kwargs = tf.nest.map_structure(lambda c: tf.tile(c, [-(-many // c.shape[0]), 1])[:many], kwargs)
  plan = tfp_hessian.execution_plan(distribution, big_z, **big_kwargs)
  assert not plan.xla and "more than" in plan.reason
  few = execution._MAX_ELEMENTS // n ** 2
  assert tfp_hessian.execution_plan(distribution, big_z[:few], **tf.nest.map_structure(
      lambda c: c[:few], big_kwargs)).xla
  # Points of unknown number (an input signature with a None batch dimension): the graph as traced.
  distribution, z, kwargs = make_flow("scalar events", np.float64)
  [plan] = _plans(distribution, z, kwargs, signature=[tf.TensorSpec([None], z.dtype)])
  assert not plan.xla and "not known" in plan.reason


def test_size_limits_are_the_measured_ones():
  """Up to `_MAX_SIZE` coordinates, at most `_MAX_ELEMENTS` Hessian entries are compiled (1024 points at n = 128
  were measured to pay); beyond it, `_MAX_ELEMENTS_LARGE` only (a MAF ran slower compiled at n = 512, 16 points)."""
  graph = tf.function(lambda x: tf.tanh(x) * 2.).get_concrete_function(tf.TensorSpec([None, 3])).graph
  assert execution.plan(graph, 1024, 128).xla and execution.plan(graph, 16, execution._MAX_SIZE).xla
  assert execution.plan(graph, execution._MAX_ELEMENTS // 128 ** 2, 128).xla
  assert not execution.plan(graph, execution._MAX_ELEMENTS // 128 ** 2 + 1, 128).xla
  large = execution._MAX_SIZE + 1
  assert execution.plan(graph, execution._MAX_ELEMENTS_LARGE // large ** 2, large).xla
  assert not execution.plan(graph, execution._MAX_ELEMENTS_LARGE // large ** 2 + 1, large).xla
  assert not execution.plan(graph, 16, 512).xla and execution.plan(graph, 1, 512).xla
  assert not execution.plan(graph, 1, 1024).xla


def test_triangular_solves_compile_at_small_sizes_only():
  """Triangular solves are compiled in sweeps of at most `_MAX_SIZE_SOLVES` coordinates (faster compiled there,
  slower from 32 on); general solves never."""
  matrix = tf.TensorSpec([None, 3, 3])
  graph = tf.function(lambda a, b: tf.linalg.triangular_solve(a, b)).get_concrete_function(matrix, matrix).graph
  small = execution._MAX_SIZE_SOLVES
  assert execution.plan(graph, 1024, small).xla and execution.plan(graph, 16, 2).xla
  plan = execution.plan(graph, 16, small + 1)
  assert not plan.xla and f"MatrixTriangularSolve of more than {small} coordinates" in plan.reason, plan.reason
  graph = tf.function(lambda a, b: tf.linalg.solve(a, b)).get_concrete_function(matrix, matrix).graph
  plan = execution.plan(graph, 16, 2)
  assert not plan.xla and "(MatrixSolve)" in plan.reason, plan.reason


# Compiled flows whose points the sweep may run in chunks (`execution.run`); the other compiled flows may not: one
# point against `[N, C]` conditions (the conditions give the batch), a distribution with a batch of its own.
CHUNKED = ["conditional MAFs in a Chain, [N, C] conditions", "matrix events: Sample(Normal, [3, 2])", "scalar events",
           "MultivariateNormalTriL", "Independent(Logistic) (diagonal autodiff)", "Independent(Normal)",
           "Independent(Uniform) (constant density)", "MultivariateNormalDiag", "MultivariateNormalFullCovariance",
           "Reshape to matrices, Permute(axis=-2)", "Sample(Normal)", "ScaleMatvecLinearOperatorBlock",
           "Split into a list, JointMap", "bare MultivariateNormalTriL",
           "build_affine_surrogate_posterior (DeferredModule)", "conditional MAF, one [C] condition",
           "conditional flow as a base (distribution_kwargs)", "tfp_hessian.TransformedDistribution", "mixed chain",
           "nested", "stock over tfp_hessian.TransformedDistribution", "conditional inverted RealNVP"]
# Of those, run in chunks in float32 (`test_compiled_float32_no_less_accurate_than_tapes`): conditions split with
# the points, matrix and scalar events, triangular solves.
CHUNKED_FLOAT32 = ["conditional MAFs in a Chain, [N, C] conditions", "matrix events: Sample(Normal, [3, 2])",
                   "scalar events", "MultivariateNormalTriL"]


@pytest.mark.parametrize("name", COMPILED)
def test_compiled_sweep_in_chunks_matches_references(name, monkeypatch):
  """At many points a compiled sweep runs as calls on chunks of the points (`execution.chunk_count`); here, with
  chunks made small, the registry's 3 points run as 2 chunks of 2, the last padded with a copy of the last point
  (its result dropped), conditions `[N, C]` split with the points. The derivatives match the references and one
  call on all the points; points that cannot be split run in one call."""
  distribution, z, kwargs = make_flow(name, np.float64)
  call = lambda: tf.function(lambda z: tfp_hessian.log_prob_and_derivatives(distribution, z, **kwargs))(z)  # noqa: E731
  whole = call()
  size = whole.hessian.shape[-1]
  monkeypatch.setattr(execution, "_CHUNK_BYTES", 2 * size ** 2 * np.dtype(np.float64).itemsize)
  plan = tfp_hessian.execution_plan(distribution, z, **kwargs)
  assert plan.xla, plan.reason
  chunked = name in CHUNKED
  assert plan.chunks == (2 if chunked else 1), plan.reason
  assert ("2 calls on chunks of 2 points, side by side" in plan.reason) == chunked, plan.reason
  result = call()
  assert_matches_references(distribution, z, result, np.float64, kwargs=kwargs)
  for value, expected in zip(result, whole):
    np.testing.assert_allclose(value, expected, rtol=1e-13, atol=1e-13 * np.max(np.abs(expected)))


@pytest.mark.parametrize("name", [DENSE_AFFINE, "IteratedSigmoidCentered (event size changes)"])
def test_sweep_left_as_traced_runs_whole(name, monkeypatch):
  """Where chunks could apply but the sweep is not compiled whole (a triangular solve of many coordinates, a
  layer's dynamic stitch), the sweep traced for a chunk is dropped and the one traced for all the points runs, its
  pull-back compiled alone: exact, in one call."""
  distribution, _, _ = make_flow(name, np.float64)
  z = _drawn_points(distribution)
  size = tfp_hessian.flatten_event(distribution, z).shape[-1]
  monkeypatch.setattr(execution, "_CHUNK_BYTES", 2 * size ** 2 * np.dtype(np.float64).itemsize)
  plan = tfp_hessian.execution_plan(distribution, z)
  assert not plan.xla and plan.pull_back_xla and plan.chunks == 1, plan
  result = tf.function(lambda z: tfp_hessian.log_prob_and_derivatives(distribution, z))(z)
  assert_matches_references(distribution, z, result, np.float64)


def test_chunks_are_the_measured_ones():
  """Hessians of about `_CHUNK_BYTES` a chunk, at most `_MAX_CHUNKS` chunks (`benchmarks/chunked_sweep.py`)."""
  assert execution.chunk_count(1024, 64) == 32 and execution.chunk_count(1024, 128) == 64
  assert execution.chunk_count(1024, 64, itemsize=8) == 64
  assert execution.chunk_count(1024, 16) == 2 and execution.chunk_count(1000, 16) == 2
  assert execution.chunk_count(16, 64) == 1 and execution.chunk_count(1024, 8) == 1
  assert execution.chunk_count(3, 1024) == 3


@pytest.mark.parametrize("kwargs, batch, chunked", [
    ({}, [8], True),
    ({"c": np.zeros([8, 3])}, [8], True),  # a condition per point
    ({"c": tf.zeros([3]), "flag": True, "name": "x", "none": None}, [8], True),  # shared by every point, flags
    ({"c": tf.Variable(tf.zeros([8, 3]))}, [8], True),
    ({}, [8, 2], False),  # points along two axes
    ({}, [], False),  # one point
    ({"c": tf.zeros([1, 3])}, [8], False),  # a condition broadcast against the points
    ({"c": tf.zeros([8, 1, 3])}, [8], False),  # a condition that would give a batch of its own
    ({"c": [[0.5, 1.], [2., 3.]]}, [8], False),  # Python numbers: maybe part of a nested list
    ({"scale": 0.5}, [8], False),
])
def test_points_split_only_where_every_kwarg_is_per_point_or_shared(kwargs, batch, chunked):
  """The sweep runs in chunks only where each kwarg is a condition per point (`[N, C]`), one for all points (`[C]`),
  or a flag, the points lie along one axis and the distribution has no batch of its own."""
  distribution, _, _ = make_flow("scalar events", np.float64)
  leaves = tf.nest.flatten(kwargs)
  per_point = sweep_lib._per_point_leaves(distribution, tf.TensorShape(batch), leaves)
  assert (per_point is not None) == chunked
  if chunked:
    assert per_point == [i for i, leaf in enumerate(leaves) if np.ndim(leaf) == 2]
  batched, _, _ = make_flow("batch [D] Sample(Normal), one point [D]", np.float64)
  assert sweep_lib._per_point_leaves(batched, tf.TensorShape([8]), []) is None


def test_eager_first_call_is_not_traced():
  """The first eager call runs op by op: no plan is made (nothing is traced)."""
  distribution, z, kwargs = make_flow(COMPILED[0], np.float64)
  plans = []
  with execution.observe(plans.append):
    tfp_hessian.log_prob_hessian(distribution, z, **kwargs)
  assert plans == []


@pytest.mark.parametrize("name, drawn, chunked", [(name, False, False) for name in COMPILED + PULL_BACK_COMPILED] + [
    ("MultivariateNormalTriL", True, False), ("build_affine_surrogate_posterior (DeferredModule)", True, False)] + [
    (name, False, True) for name in CHUNKED_FLOAT32])
def test_compiled_float32_no_less_accurate_than_tapes(name, drawn, chunked, monkeypatch):
  """Point by point, the compiled float32 Hessian is as close to the float64 one as nested tapes' float32 is.

  The float64 Hessian of the same flow and points is the truth. A compiled sweep may round differently from the
  graph (XLA fuses and reorders), so it is held to the accuracy users would get from tapes: its error at each
  point at most twice the tapes' error there, plus 8 float32 ulps of the Hessian's largest entry (an error of a
  few ulps where the tapes happen to be exact is rounding, not a loss of accuracy). Flows compiled whole at the
  registry's points (also run in chunks of 2 points), their triangular solves included, and flows whose pull-back
  alone is compiled, at the registry's points or at points drawn.
  """
  distribution32, z32, kwargs32 = make_flow(name, np.float32)
  if drawn:
    z32 = _drawn_points(distribution32)
  if chunked:
    size = tfp_hessian.flatten_event(distribution32, z32).shape[-1]
    monkeypatch.setattr(execution, "_CHUNK_BYTES", 2 * size ** 2 * np.dtype(np.float32).itemsize)
  plan = tfp_hessian.execution_plan(distribution32, z32, **kwargs32)
  assert plan.pull_back_xla and plan.chunks == (2 if chunked else 1), plan
  distribution64, _, kwargs64 = make_flow(name, np.float64)
  z64 = tf.nest.map_structure(lambda part: tf.cast(part, tf.float64), z32)
  truth = tfp_hessian.log_prob_hessian(distribution64, z64, **kwargs64).numpy()
  ours = tf.function(lambda z: tfp_hessian.log_prob_hessian(distribution32, z, **kwargs32))(z32).numpy()
  tapes = reference.tape_hessian(distribution32, z32, **kwargs32).numpy()
  event_axes = (-2, -1)
  scale = np.max(np.abs(truth), axis=event_axes)
  ours_error = np.max(np.abs(ours - truth), axis=event_axes)
  tapes_error = np.max(np.abs(tapes - truth), axis=event_axes)
  # The float64 flow is the float32 one (the same weights, to rounding): the tapes agree with it to float32 error.
  assert np.all(tapes_error <= 1e-3 * scale), tapes_error / scale
  allowed = 2 * tapes_error + 8 * np.finfo(np.float32).eps * scale
  assert np.all(ours_error <= allowed), (ours_error / scale, tapes_error / scale)


@pytest.mark.parametrize("name", PULL_BACK + [pytest.param(name, marks=pytest.mark.slow) for name in PULL_BACK_SLOW])
def test_pull_back_compiled_alone_matches_references(name):
  """Where only the pull-back is compiled (the inverse pass and the base keep their solves and placeholders in
  the graph), the derivatives at many points match nested tapes and `log_prob` in float64."""
  distribution, _, kwargs = make_flow(name, np.float64)
  assert not kwargs
  z = _drawn_points(distribution)
  plan = tfp_hessian.execution_plan(distribution, z)
  assert not plan.xla and plan.pull_back_xla and plan.reason.startswith("pull-back XLA-compiled"), plan.reason
  [traced_plan] = _plans(distribution, z, {})
  assert traced_plan == plan
  result = tf.function(lambda z: tfp_hessian.log_prob_and_derivatives(distribution, z))(z)
  assert_matches_references(distribution, z, result, np.float64)
  np.testing.assert_array_equal(result.hessian, tf.linalg.matrix_transpose(result.hessian))


@pytest.mark.parametrize("transpose_a", [False, True])
@pytest.mark.parametrize("transpose_b", [False, True])
@pytest.mark.parametrize("k", [3, products.SHORT_CONTRACTION + 1])
@pytest.mark.parametrize("shared", [None, "a", "b"])
def test_short_products_are_matmul(transpose_a, transpose_b, k, shared):
  """`products.matmul` is `tf.linalg.matmul` in every transposition, with batches broadcast (`[N, 1]` against
  `[1, B]`, or one matrix shared by every point: `shared`), for a short contraction (the broadcast form) and a long
  one (the batched dot), eagerly and under XLA; a non-finite entry spoils only the entries it enters."""
  rng = np.random.default_rng(k)
  a = rng.standard_normal(([] if shared == "a" else [4, 1]) + ([k, 5] if transpose_a else [5, k]))
  b = rng.standard_normal(([] if shared == "b" else [1, 2]) + ([6, k] if transpose_b else [k, 6]))
  a[(0,) * a.ndim] = np.inf if transpose_a else np.nan
  a, b = tf.constant(a), tf.constant(b)
  expected = tf.linalg.matmul(a, b, transpose_a=transpose_a, transpose_b=transpose_b).numpy()
  compiled = tf.function(lambda a, b: products.matmul(a, b, transpose_a, transpose_b), jit_compile=True)
  for actual in (products.matmul(a, b, transpose_a, transpose_b), compiled(a, b)):
    np.testing.assert_array_equal(np.isfinite(actual), np.isfinite(expected))
    finite = np.isfinite(expected)
    np.testing.assert_allclose(actual.numpy()[finite], expected[finite], rtol=1e-13)
