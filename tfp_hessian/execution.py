"""How a sweep runs inside a graph: compiled by XLA where that is measured to be faster, else as traced.

At a few points the sweep's arithmetic is small and TensorFlow's executor, which dispatches every op on its own,
spends most of a call between ops: 4-layer MAF and RealNVP flows at D = 16 to 128 and 16 points ran 1.3–1.9×
faster when XLA fused the sweep into a few kernels (`benchmarks/execution_choice.txt`, from
`python benchmarks/execution_choice.py`). At many points the batched matrix products dominate; measured again
after the sweeps took their present form (session 24), XLA ran them as fast or faster there too, 0.96–1.68× the
graph's speed for MAF and RealNVP at D = 64 and 128 with 256 and 1024 points (float32; 1.08–1.33× in float64),
and up to D = 256 at 16 points. Beyond D = 256 a MAF ran slower compiled except at a single point at D = 512: 0.75×
at D = 512 and 16 points, 0.53× at D = 1024 and one point. XLA on CPU is also slow for triangular solves from
D = 32 on (an elementwise + affine flow ran 0.65× as fast at D = 32 and 1024 points, 0.26–0.9× at D = 64 and 128),
but fast for small ones: the same flow compiled whole, solves included, ran 1.5–2.6× as fast at D = 2 to 16 and
1024 points (session 27) and 1.46–2.16× at 16 points (session 34). It cannot compile assertions (`validate_args`)
or Python calls, and compiling costs the first call 1–2 s more at a few points (3–6 s measured under load).

So, in a graph (a user's `tf.function`, or the compiled eager path of `compiled.py`), the sweep is first traced as
a function of its own, and its ops decide, once per trace:

- every op is one that XLA compiles well on CPU (`_COMPILES_WELL`, and triangular solves of at most
  `_MAX_SIZE_SOLVES` coordinates; any other op, a control-flow op or a call of another function keeps the graph
  as traced), and
- the Hessians `[N, n, n]` are no larger than measured to pay: at most `_MAX_ELEMENTS` numbers for `n` up to
  `_MAX_SIZE`, `_MAX_ELEMENTS_LARGE` beyond, with N known when traced.

Then the traced graph runs XLA-compiled (as `jit_compile=True` compiles a function; not traced again), else as
it is, but for its pull-back stage: where the Hessians `[N, n, n]` are formed (`pull_back`), which is traced as a
function of its own inside the sweep and compiled alone when its own ops all compile well and there are at least
`_MIN_POINTS_PULL_BACK` points or `_MIN_SIZE_PULL_BACK` coordinates (and no more than the limits above). That
keeps TensorFlow's triangular solves of more than `_MAX_SIZE_SOLVES` coordinates (and a joint distribution's
placeholders, other ops of the inverse pass) in the graph, where they are fast, and compiles the products and
elementwise passes: a 4-layer elementwise + affine flow (`ScaleMatvecTriL`) ran 1.2–2.4× as fast as the graph from
64 points or 32 coordinates on (0.94× at D = 2 and 64 points, noise), 2.0× at D = 128 and 1024 points, where the
whole sweep compiled ran 0.26× (its batched solves); at 16 points of D = 2 and 16 it gained nothing (0.87×,
0.94×, with the graph against itself at 0.81×, 0.93×) and cost the first call 0.3–0.5 s more (float32;
`python benchmarks/pull_back_stage.py`, BENCHMARKS.md session 31). (Since session 35 that flow is compiled whole at
D ≤ 16, its solves included.)

A sweep compiled whole runs, at many points, as calls of one compiled function on chunks of the points
(`chunk_count`: Hessians of about `_CHUNK_BYTES` a chunk, at most `_MAX_CHUNKS` chunks), which TensorFlow's
executor runs side by side, each on a working set that stays in a core's cache: `run` says where the points may be
split and what it measured. Chunks are a function of `N` and `n` only, so the plan says how many (`Plan.chunks`).

Either way gives the same Hessian to rounding (XLA may fuse and reorder floating-point operations); both are
tested against the references. Where `z` does not determine the base draw (a value between layers at the edge of
a support), that rounding is amplified as it is in TFP's own `log_prob` compiled the same way
(`tests/test_properties.py`). Called eagerly (a distribution's first call, op by op) nothing is compiled.
"""

import collections
import contextlib

import tensorflow as tf

from tfp_hessian import private_api

__all__ = ["Plan", "chunk_count", "forced", "observe", "plan", "plan_pull_back", "pull_back", "run"]

Plan = collections.namedtuple("Plan", ["xla", "reason", "pull_back_xla", "chunks"], defaults=[1])
Plan.__doc__ = """How a sweep runs: `xla` (bool: the whole sweep compiled), `reason`, a sentence saying why,
`pull_back_xla` (bool: its pull-back stage compiled, alone or as part of the whole) and `chunks` (a compiled sweep
run as this many calls on chunks of the points, side by side; 1: one call on all of them)."""

# The largest `[N, n, n]` batches of Hessians compiled, as measured (`benchmarks/execution_choice.py`, session 24):
# XLA ran MAF and RealNVP sweeps as fast as the graph executor or faster for n ≤ 256 at every N measured, up to
# `N·n² = 1024·128²` (0.96–1.68× at 256 and 1024 points), but beyond n = 256 only at a few points: a MAF ran
# 0.75× as fast compiled at n = 512 and 16 points, 0.53× at n = 1024 and one point.
_MAX_ELEMENTS = 2 ** 24  # N·n² for n ≤ _MAX_SIZE
_MAX_SIZE = 256
_MAX_ELEMENTS_LARGE = 2 ** 19  # N·n² for n > _MAX_SIZE
# The pull-back compiled on its own (`pull_back`) pays from this many points, or coordinates, on (measured: the
# module's docstring).
_MIN_POINTS_PULL_BACK = 64
_MIN_SIZE_PULL_BACK = 32
# A sweep compiled whole, at many points, runs as calls of one compiled function on chunks whose Hessians
# `[c, n, n]` take about this many bytes (512 KiB: `2¹⁷` float32 entries), at most `_MAX_CHUNKS` of them (`run`).
_CHUNK_BYTES = 2 ** 19
_MAX_CHUNKS = 64

# Op types that XLA compiles on CPU at least as fast as TensorFlow runs them, and that the sweeps of the analytic
# rules use: elementwise math, shapes and indexing, matrix products and the gradients of those. Not here, so
# never compiled: general solves and large triangular ones (slow under XLA on CPU; `_COMPILES_WELL_SMALL`),
# assertions, Python calls, stateful and random ops, control flow and calls of other functions.
_COMPILES_WELL = frozenset("""
    Abs Acosh AddN AddV2 Asinh Atanh BiasAdd BroadcastArgs BroadcastGradientArgs BroadcastTo Cast Ceil ConcatV2
    Const Cos Cosh Cumsum Digamma Div DivNoNan Elu EnsureShape Equal Erf Erfc Exp ExpandDims Expm1 Fill Floor
    GatherNd GatherV2 Greater GreaterEqual Identity IdentityN InvertPermutation IsFinite IsInf IsNan LeakyRelu Less
    LessEqual Lgamma Log Log1p LogicalAnd LogicalNot LogicalOr LogSoftmax MatMul BatchMatMulV2 MatrixBandPart
    MatrixDiagPartV3 MatrixDiagV3 MatrixSetDiagV3 Max Maximum Mean Min Minimum Mul MulNoNan Neg NoOp NotEqual OneHot
    OnesLike Pack Pad PadV2 Placeholder Pow Prod Range Rank RealDiv Reciprocal ReciprocalGrad ReadVariableOp Relu
    ReluGrad Reshape ReverseV2 Round Rsqrt RsqrtGrad Select SelectV2 Selu Shape ShapeN Sigmoid SigmoidGrad Sign
    Sin Sinh Size Slice Softmax Softplus SoftplusGrad Softsign Split SplitV Sqrt SqrtGrad Square
    SquaredDifference Squeeze StopGradient StridedSlice StridedSliceGrad Sub Sum Tanh TanhGrad Tile Transpose
    Unpack Xlog1py Xlogy ZerosLike
""".split())

# Op types that XLA compiles well on CPU for events of at most `_MAX_SIZE_SOLVES` coordinates only: triangular
# solves. A 4-layer elementwise + affine flow (`ScaleMatvecTriL`) ran 1.5–2.6× as fast compiled whole at n = 2 to
# 16 and 1024 points, 0.65× at n = 32 (session 27), and 1.46–2.16× at n = 2 to 16 and 16 points (session 34:
# `python benchmarks/execution_choice.py --flows elementwise_affine --dims 2 4 16 --points 16`). Compiled, their
# float32 results have the error of nested tapes compiled the same way (`benchmarks/float32_accuracy.py`).
_COMPILES_WELL_SMALL = frozenset({"MatrixTriangularSolve"})
_MAX_SIZE_SOLVES = 16


_Stage = collections.namedtuple("_Stage", ["op_types", "call_ops", "plan"])  # a pull-back stage as traced
_Run = collections.namedtuple("_Run", ["num_points", "size", "stages"])  # a sweep being traced by `run`
_RUNS = []


def _why_not(types, num_points, size):
  """Why a graph of ops of `types` at these sizes is not compiled, or None if it is measured to pay."""
  small = size <= _MAX_SIZE_SOLVES
  others = [op if small or op not in _COMPILES_WELL_SMALL else f"{op} of more than {_MAX_SIZE_SOLVES} coordinates"
            for op in sorted(set(types) - _COMPILES_WELL - (_COMPILES_WELL_SMALL if small else frozenset()))]
  if others:
    return f"its graph has ops XLA is not known to compile well ({', '.join(others)})"
  if num_points is None:
    return "the number of points is not known when traced"
  elements = num_points * size ** 2
  if elements > _limit(size):
    return (f"{elements} Hessian entries of {size}² each, more than {_limit(size)}, where XLA was not measured to be "
            "faster")
  return None


def _limit(size):
  return _MAX_ELEMENTS if size <= _MAX_SIZE else _MAX_ELEMENTS_LARGE


def _sizes(num_points, size):
  return f"{num_points * size ** 2} Hessian entries of {size}² each, at most {_limit(size)}"


def plan_pull_back(graph, num_points, size):
  """The `Plan` for a pull-back stage traced into `graph` on its own (`pull_back`), in a sweep that is not
  compiled whole: compiled where its ops compile well and there are enough points or coordinates to pay."""
  why = _why_not({op.type for op in graph.get_operations()}, num_points, size)
  if why is None and num_points < _MIN_POINTS_PULL_BACK and size < _MIN_SIZE_PULL_BACK:
    why = (f"{num_points} points of {size} coordinates, fewer than {_MIN_POINTS_PULL_BACK} points of fewer than "
           f"{_MIN_SIZE_PULL_BACK}, where compiling the pull-back alone was measured to gain nothing")
  if why is not None:
    return Plan(False, f"pull-back not compiled: {why}", False)
  return Plan(False, f"pull-back XLA-compiled: {_sizes(num_points, size)}", True)


def plan(graph, num_points, size, stages=()):
  """The `Plan` for a sweep traced into `graph`, at `num_points` points (None: unknown when traced) of flat events
  of `size` numbers; `stages`, its pull-back stages as traced by `pull_back` (their ops count as the sweep's)."""
  calls = {name for stage in stages for name in stage.call_ops}
  types = {op.type for op in graph.get_operations() if op.name not in calls}
  for stage in stages:
    types |= stage.op_types
  why = _why_not(types, num_points, size)
  if why is None:
    return Plan(True, f"XLA-compiled: {_sizes(num_points, size)}", True)
  compiled_stages = [stage.plan for stage in stages if stage.plan.pull_back_xla]
  if compiled_stages:
    return Plan(False, f"{compiled_stages[0].reason}; the rest as traced: {why}", True)
  return Plan(False, f"not compiled: {why}", False)


_OBSERVERS = []  # callables told each `Plan` chosen while tracing (`sweep.execution_plan`)
_FORCED = []  # [(xla, pull_back_xla, chunks)] while `forced` is active: the choice, for measuring one against another


@contextlib.contextmanager
def observe(observer):
  """Within the block, `observer(plan)` is called with the `Plan` of every sweep traced (nothing else changes)."""
  _OBSERVERS.append(observer)
  try:
    yield
  finally:
    _OBSERVERS.remove(observer)


@contextlib.contextmanager
def forced(xla, pull_back_xla=None, chunks=None):
  """Within the block, sweeps traced are compiled (`xla=True`) or not, whatever `plan` says, and so is their
  pull-back stage on its own (`pull_back_xla`, default `xla`); a compiled sweep that can run in chunks runs in
  `chunks` of them (default: as `run` would choose): for benchmarks."""
  _FORCED.append((bool(xla), bool(xla if pull_back_xla is None else pull_back_xla), chunks))
  try:
    yield
  finally:
    _FORCED.pop()


def _forced_reason():
  return "forced by execution.forced(xla={}, pull_back_xla={}, chunks={})".format(*_FORCED[-1])


def chunk_count(num_points, size, itemsize=4):
  """How many chunks a compiled sweep of `num_points` points of `size` coordinates runs in (1: one call), for
  numbers of `itemsize` bytes."""
  per_chunk = max(1, _CHUNK_BYTES // (size ** 2 * itemsize))
  return max(1, min(_MAX_CHUNKS, -(-num_points // per_chunk)))


def _trace(sweep, inputs, num_points, size):
  """`(concrete function of sweep at inputs, its pull-back stages as traced)`."""
  tracing = _Run(num_points, size, [])
  _RUNS.append(tracing)
  try:
    return tf.function(sweep, autograph=False).get_concrete_function(inputs), tracing.stages
  finally:
    _RUNS.pop()


def run(sweep, inputs, num_points, size, splittable=False):
  """`sweep(inputs)`, compiled by XLA if `plan` says so (in a graph; eagerly it runs as it is).

  A sweep compiled whole, where the points can be split, runs as one compiled function called on chunks of the points:
  `chunk_count` calls, which TensorFlow's executor runs side by side, each on a working set that stays in a core's
  cache (Hessians of about `_CHUNK_BYTES`). Measured against one call on all the points (`python
  benchmarks/chunked_sweep.py`, BENCHMARKS.md session 33), 4-layer MAF and RealNVP flows at 1024 points ran, in
  float32, 1.3× and 1.85× as fast at D = 64 (32 chunks), 1.4× and 2.2× at D = 128 (64 chunks), 1.05× and 1.1× at
  D = 16 (2 chunks), and 1.1–1.9× at 64 and 256 points of D = 64 and 128; in float64 1.7× and 2.1× at D = 64, 1.4× and
  2.2× at D = 128 (64 chunks). With less than `_CHUNK_BYTES` of Hessians (D ≤ 8 at 1024 points) chunks gained nothing.
  Called one after another the same chunks ran 0.97–1.1× as fast as one call (at D = 64): the gain is mostly the two
  cores, a little the cache. A sweep left as traced gains nothing from chunks (an elementwise + affine flow ran
  0.79–0.85× as fast in calls on 8–32 slices of the points at D = 64), so it runs whole. Where chunks may apply the
  sweep is traced for a chunk first, so that a compiled sweep is traced once; one that is not compiled is then traced
  again for all the points. The points are padded with copies of the last one to a whole number of chunks, whose
  results are dropped. Each call costs the first call 15–25 ms (creating and starting it; `python
  benchmarks/chunked_memory.py`).

  Args:
    sweep: `inputs -> structure of tensors`, the sweep on validated points.
    inputs: the points (a tensor or a structure of tensors), with whatever else the sweep takes per point.
    num_points: `N`, the number of points, if known statically; else None.
    size: `n`, the number of coordinates of a flat event.
    splittable: whether the sweep may run on chunks of the points: every tensor of `inputs` and of the sweep's
      result has the `N` points on its first axis, and each point's result depends on that point alone.
  """
  if tf.executing_eagerly():
    return sweep(inputs)
  itemsize = tf.nest.flatten(inputs)[0].dtype.size
  chunks = chunk_count(num_points, size, itemsize) if splittable and num_points is not None else 1
  if _FORCED and _FORCED[-1][2] is not None and splittable:
    chunks = _FORCED[-1][2]
  if chunks > 1:
    per_chunk = -(-num_points // chunks)
    parts = _chunks(inputs, num_points, per_chunk, chunks)
    traced, stages = _trace(sweep, parts[0], per_chunk, size)
    chosen = _chosen(plan(traced.graph, num_points, size, stages))
    if chosen.xla:
      chosen = chosen._replace(chunks=chunks, reason=chosen.reason if _FORCED else (
          f"{chosen.reason}; {chunks} calls on chunks of {per_chunk} points, side by side"))
      for observer in _OBSERVERS:
        observer(chosen)
      compiled = private_api.xla_compiled(traced)
      results = [compiled(part) for part in parts]
      if per_chunk * chunks > num_points:  # the padding's results dropped
        return tf.nest.map_structure(lambda *chunk: tf.concat(chunk, 0)[:num_points], *results)
      return tf.nest.map_structure(lambda *chunk: tf.concat(chunk, 0), *results)
  traced, stages = _trace(sweep, inputs, num_points, size)
  chosen = _chosen(plan(traced.graph, num_points, size, stages))
  for observer in _OBSERVERS:
    observer(chosen)
  if chosen.xla:
    # The traced graph itself, compiled: tracing it again under `jit_compile` cost the first call about 1 s more
    # for the same graph (a MAF at D = 16 and 16 points: `python benchmarks/xla_single_trace.py`).
    return private_api.xla_compiled(traced)(inputs)
  return traced(inputs)


def _chosen(planned):
  """The plan, or what `forced` makes of it."""
  if not _FORCED:
    return planned
  xla, pull_back_xla, _ = _FORCED[-1]
  return Plan(xla, _forced_reason(), xla or pull_back_xla)


def _chunks(inputs, num_points, per_chunk, chunks):
  """`inputs` in `chunks` chunks of `per_chunk` points, padded with copies of the last point to fill the last."""
  padding = per_chunk * chunks - num_points
  if padding:
    inputs = tf.nest.map_structure(lambda t: tf.concat([t, tf.repeat(t[-1:], padding, axis=0)], 0), inputs)
  return [tf.nest.map_structure(lambda t, start=start: t[start:start + per_chunk], inputs)
          for start in range(0, per_chunk * chunks, per_chunk)]


def pull_back(back, grad, hess):
  """`back(grad, hess)`: the pull-back stage of the sweep `run` is tracing, compiled by XLA on its own where the
  sweep as a whole is not and `plan_pull_back` says it pays (elsewhere, and eagerly, it runs as it is).

  The pull-back (`pullback.pull_back`) is where the Hessians `[N, n, n]` are formed: matrix products and
  elementwise passes, which XLA compiles well. What keeps a whole sweep from being compiled is mostly in the
  inverse pass and the base: triangular solves of many coordinates (slow under XLA on CPU), an IAF's loop, a joint
  distribution's placeholders. Compiled alone, the pull-back keeps TensorFlow's solves.
  """
  if tf.executing_eagerly() or not _RUNS:
    return back(grad, hess)
  tracing = _RUNS[-1]
  traced = tf.function(back, autograph=False).get_concrete_function(grad, hess)
  chosen = plan_pull_back(traced.graph, tracing.num_points, tracing.size)
  if _FORCED:
    chosen = Plan(False, _forced_reason(), _FORCED[-1][1])
  graph = tf.compat.v1.get_default_graph()
  before = {op.name for op in graph.get_operations()}
  result = (private_api.xla_compiled(traced) if chosen.pull_back_xla else traced)(grad, hess)
  tracing.stages.append(_Stage({op.type for op in traced.graph.get_operations()},
                               {op.name for op in graph.get_operations()} - before, chosen))
  return result
