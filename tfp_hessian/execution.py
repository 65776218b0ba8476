"""How a sweep runs inside a graph: compiled by XLA where that is measured to be faster, else as traced.

At a few points the sweep's arithmetic is small and TensorFlow's executor, which dispatches every op on its own,
spends most of a call between ops: 4-layer MAF and RealNVP flows at D = 16 to 128 and 16 points ran 1.3–1.9×
faster when XLA fused the sweep into a few kernels (`benchmarks/execution_choice.txt`, from
`python benchmarks/execution_choice.py`). At many points the batched matrix products dominate; measured again
after the sweeps took their present form (session 24), XLA ran them as fast or faster there too, 0.96–1.68× the
graph's speed for MAF and RealNVP at D = 64 and 128 with 256 and 1024 points (float32; 1.08–1.33× in float64),
and up to D = 256 at 16 points. Beyond D = 256 a MAF ran slower compiled except at a single point at D = 512: 0.75×
at D = 512 and 16 points, 0.53× at D = 1024 and one point. XLA on CPU is also slow for triangular solves at D ≥ 64
(an elementwise + affine flow ran 0.4–0.9× as fast), cannot compile assertions (`validate_args`) or Python calls,
and compiling costs the first call 3–6 s more (measured under load).

So, in a graph (a user's `tf.function`, or the compiled eager path of `compiled.py`), the sweep is first traced as
a function of its own, and its ops decide, once per trace:

- every op is one that XLA compiles well on CPU (`_COMPILES_WELL`; any other op, a control-flow op or a call of
  another function keeps the graph as traced), and
- the Hessians `[N, n, n]` are no larger than measured to pay: at most `_MAX_ELEMENTS` numbers for `n` up to
  `_MAX_SIZE`, `_MAX_ELEMENTS_LARGE` beyond, with N known when traced.

Then the traced graph runs XLA-compiled (as `jit_compile=True` compiles a function; not traced again), else as
it is. Either gives the same Hessian to rounding (XLA may fuse and reorder floating-point operations); both are
tested against the references. Where `z` does not determine the base draw (a value between layers at the edge of
a support), that rounding is amplified as it is in TFP's own `log_prob` compiled the same way
(`tests/test_properties.py`). Called eagerly (a distribution's first call, op by op) nothing is compiled.
"""

import collections
import contextlib

import tensorflow as tf

from tfp_hessian import private_api

__all__ = ["Plan", "forced", "observe", "plan", "run"]

Plan = collections.namedtuple("Plan", ["xla", "reason"])
Plan.__doc__ = """How a sweep runs: `xla` (bool), and `reason`, a sentence saying why."""

# The largest `[N, n, n]` batches of Hessians compiled, as measured (`benchmarks/execution_choice.py`, session 24):
# XLA ran MAF and RealNVP sweeps as fast as the graph executor or faster for n ≤ 256 at every N measured, up to
# `N·n² = 1024·128²` (0.96–1.68× at 256 and 1024 points), but beyond n = 256 only at a few points: a MAF ran
# 0.75× as fast compiled at n = 512 and 16 points, 0.53× at n = 1024 and one point.
_MAX_ELEMENTS = 2 ** 24  # N·n² for n ≤ _MAX_SIZE
_MAX_SIZE = 256
_MAX_ELEMENTS_LARGE = 2 ** 19  # N·n² for n > _MAX_SIZE

# Op types that XLA compiles on CPU at least as fast as TensorFlow runs them, and that the sweeps of the analytic
# rules use: elementwise math, shapes and indexing, matrix products and the gradients of those. Not here, so
# never compiled: triangular and general solves (slow under XLA on CPU), assertions, Python calls, stateful and
# random ops, control flow and calls of other functions.
_COMPILES_WELL = frozenset("""
    Abs Acosh AddN AddV2 Asinh Atanh BiasAdd BroadcastArgs BroadcastGradientArgs BroadcastTo Cast Ceil ConcatV2
    Const Cos Cosh Cumsum Digamma Div DivNoNan Elu EnsureShape Equal Erf Erfc Exp ExpandDims Expm1 Fill Floor
    GatherV2 Greater GreaterEqual Identity IdentityN InvertPermutation IsFinite IsInf IsNan LeakyRelu Less
    LessEqual Lgamma Log Log1p LogicalAnd LogicalNot LogicalOr LogSoftmax MatMul BatchMatMulV2 MatrixBandPart
    MatrixDiagPartV3 MatrixDiagV3 MatrixSetDiagV3 Max Maximum Mean Min Minimum Mul MulNoNan Neg NoOp NotEqual OneHot
    OnesLike Pack Pad PadV2 Placeholder Pow Prod Range Rank RealDiv Reciprocal ReciprocalGrad ReadVariableOp Relu
    ReluGrad Reshape ReverseV2 Round Rsqrt RsqrtGrad Select SelectV2 Selu Shape ShapeN Sigmoid SigmoidGrad Sign
    Sin Sinh Size Slice Softmax Softplus SoftplusGrad Softsign Split SplitV Sqrt SqrtGrad Square
    SquaredDifference Squeeze StopGradient StridedSlice StridedSliceGrad Sub Sum Tanh TanhGrad Tile Transpose
    Unpack Xlog1py Xlogy ZerosLike
""".split())


def plan(graph, num_points, size):
  """The `Plan` for a sweep traced into `graph`, at `num_points` points (None: unknown when traced) of flat events
  of `size` numbers."""
  others = sorted({op.type for op in graph.get_operations()} - _COMPILES_WELL)
  if others:
    return Plan(False, f"not compiled: its graph has ops XLA is not known to compile well ({', '.join(others)})")
  if num_points is None:
    return Plan(False, "not compiled: the number of points is not known when traced")
  elements = num_points * size ** 2
  limit = _MAX_ELEMENTS if size <= _MAX_SIZE else _MAX_ELEMENTS_LARGE
  if elements > limit:
    return Plan(False, f"not compiled: {elements} Hessian entries of {size}² each, more than {limit}, where XLA "
                       "was not measured to be faster")
  return Plan(True, f"XLA-compiled: {elements} Hessian entries of {size}² each, at most {limit}")


_OBSERVERS = []  # callables told each `Plan` chosen while tracing (`sweep.execution_plan`)
_FORCED = []  # [xla] while `forced(xla)` is active: the choice, for measuring one against the other


@contextlib.contextmanager
def observe(observer):
  """Within the block, `observer(plan)` is called with the `Plan` of every sweep traced (nothing else changes)."""
  _OBSERVERS.append(observer)
  try:
    yield
  finally:
    _OBSERVERS.remove(observer)


@contextlib.contextmanager
def forced(xla):
  """Within the block, sweeps traced are compiled (`xla=True`) or not, whatever `plan` says: for benchmarks."""
  _FORCED.append(bool(xla))
  try:
    yield
  finally:
    _FORCED.pop()


def run(sweep, z, num_points, size):
  """`sweep(z)`, compiled by XLA if `plan` says so (in a graph; eagerly it runs as it is).

  Args:
    sweep: `z -> structure of tensors`, the sweep on validated points.
    z: the points (a tensor or a structure of tensors).
    num_points: `N`, the number of points, if known statically; else None.
    size: `n`, the number of coordinates of a flat event.
  """
  if tf.executing_eagerly():
    return sweep(z)
  traced = tf.function(sweep, autograph=False).get_concrete_function(z)
  chosen = plan(traced.graph, num_points, size)
  if _FORCED:
    chosen = Plan(_FORCED[-1], f"forced by execution.forced(xla={_FORCED[-1]})")
  for observer in _OBSERVERS:
    observer(chosen)
  if chosen.xla:
    # The traced graph itself, compiled: tracing it again under `jit_compile` cost the first call about 1 s more
    # for the same graph (a MAF at D = 16 and 16 points: `python benchmarks/xla_single_trace.py`).
    return private_api.xla_compiled(traced)(z)
  return traced(z)
