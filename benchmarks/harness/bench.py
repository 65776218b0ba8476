"""`python -m tfp_hessian bench`: time `log_prob_hessian` against every other way to get the same Hessian.

Five random-weight flows over `R^D` (`FLOWS`). Three of 4 layers each on a `MultivariateNormalDiag` base
(`STOCK_FLOWS`, the flows of issues #4 and #13, which the JAX peer rebuilds from their recipe):

- `elementwise_affine`: `ScaleMatvecTriL → Shift → SinhArcsinh`, 4 times;
- `realnvp`: 4 `RealNVP` couplings with `conditioners.DenseShiftAndLogScale([64, 64], "tanh")`, `Permute` between;
- `maf`: 4 `MaskedAutoregressiveFlow`s with `tfb.AutoregressiveNetwork(params=2, hidden_units=[64, 64],
  activation="tanh")` (random *masked* kernels), `Permute` between.

And two of `tfp_hessian.examples` with their defaults but D (`EXAMPLE_FLOWS`, the real-flows issue's):

- `research_flow`: 3 MAF stages ([32, 32]) with `Permute`, a user-written `Shear` and `BatchNormalization`, a
  post-affine layer and a user-written `BoxMap` onto a box (the last two have no rule: the autodiff fallback);
- `conditional_maf`: 2 MAFs of conditional `AutoregressiveNetwork`s ([32, 32]), a 4-number condition per point
  passed as `log_prob(z, bijector_kwargs=...)`, as TFP's conditional flows take it.

A cell is (flow, D, dtype, N): every method of `METHODS` (and each peer of `PEERS`) gets the same N points, for
each N of `num_points` (default 16, the latency of an interactive call, and 1024, the throughput over posterior
samples):

1. a first call, timed: tracing and compiling included (`first_call_s`);
2. agreement with ours, `max_n max_ij |H_n - H_ours,n|_ij / max_ij |H_ours,n|_ij` (`max_rel_error`);
3. an untimed warm-up call under a sampler of the process's resident set size (`/proc/self/statm`, every
   0.5 ms): `peak_rss_delta_mib` is the peak above the RSS just before the call. It is what that call added
   to the process, a lower bound of its working memory (memory that an earlier call freed may be reused);
4. timed calls interleaved round-robin (in a fresh random order each round), so that the load of a shared
   machine falls on every method alike; the median and the interquartile range are reported, and the points
   per second at the median. A method slower than the time budget allows gets fewer calls (at least one).

Each cell also records which execution the default call chose (`tfp_hessian.execution_plan`: XLA-compiled or
the traced graph, and why) and the command that measures it again.

A method that raises is reported as `failed: <reason>` in its cell and the run goes on; one that cannot serve a
flow (the JAX peer, for the example flows) as `skipped: <reason>`. A method predicted to exceed the per-call
budget (extrapolated from the smaller D, at least as `D³`, and from fewer points, at least as `N`, or `N²` for
tf.hessians), or whose warm-up call did, or whose first call took three times the budget, is
`skipped: > budget` (`log_prob` and ours always run); a method that can afford one call only is timed by its
warm-up call. The log–log slope of time against D per method (`exponents`) and the issues' targets (`targets`:
issue #13's, then issue #4's) close the report.

The JAX peer (`--peers jax`) runs `jax.jit(jax.vmap(jax.hessian(log_prob)))` on the identical flow, built from
the same weights with TFP's JAX substrate, in a worker process of its own virtual environment
(`benchmarks/jax_peer/`); its calls are interleaved with the TensorFlow methods' too.
"""

import argparse
import dataclasses
import datetime
import json
import os
import pathlib
import platform
import select
import subprocess
import sys
import tempfile
import threading
import time

import numpy as np
import tensorflow as tf
import tensorflow_probability as tfp
import tf_keras

import tfp_hessian
from tfp_hessian import examples, reference
from tfp_hessian.conditioners import DenseShiftAndLogScale

tfb = tfp.bijectors
tfd = tfp.distributions

__all__ = [
    "BenchFlow", "DEFAULTS", "EXAMPLE_FLOWS", "FLOWS", "METHODS", "PEERS", "QUICK", "STOCK_FLOWS", "TOLERANCE",
    "add_arguments", "build_flow", "cell_command", "format_report", "run", "run_bench", "sample_points",
]

HELP = "Time log_prob_hessian against tf.hessians, nested tapes, forward-over-reverse (and JAX) on random flows."

SCHEMA = "tfp_hessian.bench/2"  # 2: several N per run (cells by flow, D, dtype, N), execution plans
NUM_LAYERS = 4
HIDDEN_UNITS = (64, 64)

# Worst relative disagreement with ours that still counts as agreement, per dtype: the references round
# differently, and in float32 a 4-layer flow at D = 128 loses a few digits to conditioning.
TOLERANCE = {"float64": 1e-8, "float32": 1e-3}

# Points per call of issue #13's targets: a few (what an interactive call feels) and many (posterior samples).
FEW_POINTS, MANY_POINTS = 16, 1024
# Per-point condition of the conditional MAF (as benchmarks/real_flows.py).
CONDITION_SIZE = 4

DEFAULTS = dict(flows=("elementwise_affine", "realnvp", "maf"), dims=(16, 64, 128), dtypes=("float32", "float64"),
                num_points=(FEW_POINTS, MANY_POINTS), repeats=15, budget=20., time_budget=5.)
# What `--quick` changes: tiny flows, few calls (what tests/test_bench.py runs).
QUICK = dict(dims=(3, 5), dtypes=("float64",), num_points=(4,), repeats=3, budget=20., time_budget=0.5)

# Methods exempt from the budget: the point of the benchmark and its yardstick.
_ALWAYS_RUN = ("log_prob", "ours")


# ---------------------------------------------------------------------------------------------------------------
# Flows


@dataclasses.dataclass
class BenchFlow:
  """A benchmark flow and the recipe to rebuild it elsewhere (the JAX peer).

  Attributes:
    name: a key of `FLOWS`.
    distribution: the `tfd.TransformedDistribution`.
    base: `{"loc": [D], "scale_diag": [D]}` of the `MultivariateNormalDiag` base.
    layers: the bijectors from the base side, each a dict with `"kind"` (`scale_tril`, `shift`,
      `sinh_arcsinh`, `permute`, `real_nvp`, `maf`) and its parameters as numpy arrays; the conditioner
      networks as `kernels` / `biases` lists (kernels `[in, out]`, MADE kernels already masked).
    condition_size: size of the condition per point of a conditional flow (passed to `log_prob` as the
      distribution's `condition_kwargs(x)`), else 0.

  `base` and `layers` are None for the flows of `EXAMPLE_FLOWS`, which have no recipe.
  """

  name: str
  distribution: tfd.Distribution
  base: dict
  layers: list
  condition_size: int = 0

  @property
  def num_bijectors(self):
    return len(self.layers) if self.layers is not None else len(self.distribution.bijector.bijectors)


def _dense_weights(rng, shape, gain):
  return rng.standard_normal(shape) * gain / np.sqrt(shape[0])


def _well_conditioned_tril(rng, dim):
  """Cholesky factor of `(I + A Aᵀ/D)/4`, `A` standard normal: dense, off-diagonals of diagonal size, cond ≲ 2."""
  a = rng.standard_normal((dim, dim))
  return np.linalg.cholesky(0.25 * np.eye(dim) + a @ a.T / (4 * dim))


def _elementwise_affine(dim, dtype, rng):
  layers = []
  for _ in range(NUM_LAYERS):
    layers.append(dict(kind="scale_tril", scale_tril=_well_conditioned_tril(rng, dim)))
    layers.append(dict(kind="shift", shift=0.5 * rng.standard_normal(dim)))
    layers.append(dict(kind="sinh_arcsinh", skewness=0.5 * rng.standard_normal(dim),
                       tailweight=np.exp(rng.uniform(np.log(0.7), np.log(1.4), dim))))
  bijectors = []
  for layer in layers:
    params = {k: tf.constant(v, dtype) for k, v in layer.items() if k != "kind"}
    bijectors.append({"scale_tril": tfb.ScaleMatvecTriL, "shift": tfb.Shift,
                      "sinh_arcsinh": tfb.SinhArcsinh}[layer["kind"]](**params))
  return layers, bijectors


def _conditioner_gains(num_dense):
  # Hidden layers saturate tanh noticeably (curvature everywhere); the read-out keeps log-scales of order one.
  return [1.5] * (num_dense - 1) + [0.7]


def _realnvp_coupling(dim, dtype, rng):
  num_masked = dim // 2
  conditioner = DenseShiftAndLogScale(list(HIDDEN_UNITS), activation="tanh", dtype=dtype)
  conditioner(tf.zeros([1, num_masked], dtype), dim - num_masked)
  dense = conditioner.dense_layers()
  kernels, biases = [], []
  for (kernel, bias, _), gain in zip(dense, _conditioner_gains(len(dense))):
    kernel.assign(_dense_weights(rng, kernel.shape, gain))
    bias.assign(0.3 * rng.standard_normal(bias.shape))
    kernels.append(kernel.numpy())
    biases.append(bias.numpy())
  layer = dict(kind="real_nvp", num_masked=num_masked, kernels=kernels, biases=biases, activation="tanh")
  return layer, tfb.RealNVP(num_masked=num_masked, shift_and_log_scale_fn=conditioner)


def _made(dim, dtype, rng):
  """A built `tfb.AutoregressiveNetwork` with random masked kernels (as tests/cases.py `_made`).

  Its activation layers take tf-keras' floatx when they are created, so floatx is the flow's dtype while the
  network is built; otherwise a float64 network computes its activations in float32.
  """
  floatx = tf_keras.backend.floatx()
  tf_keras.backend.set_floatx(tf.as_dtype(dtype).name)
  try:
    made = tfb.AutoregressiveNetwork(params=2, event_shape=[dim], hidden_units=list(HIDDEN_UNITS),
                                     activation="tanh", dtype=dtype)
    made(tf.zeros([1, dim], dtype))
  finally:
    tf_keras.backend.set_floatx(floatx)
  network, masks = made._network, made._masks  # pylint: disable=protected-access
  dense = [layer for layer in network.layers if isinstance(layer, tf_keras.layers.Dense)]
  kernels, biases = [], []
  for layer, mask, gain in zip(dense, masks, _conditioner_gains(len(dense))):
    # The kernel constraint masks only optimizer updates: a kernel assigned by hand must be masked by hand.
    layer.kernel.assign(_dense_weights(rng, layer.kernel.shape, gain) * mask)
    layer.bias.assign(0.3 * rng.standard_normal(layer.bias.shape))
    kernels.append(layer.kernel.numpy())
    biases.append(layer.bias.numpy())
  return made, dict(kind="maf", kernels=kernels, biases=biases, activation="tanh")


def _maf_layer(dim, dtype, rng):
  made, layer = _made(dim, dtype, rng)
  return layer, tfb.MaskedAutoregressiveFlow(shift_and_log_scale_fn=made)


def _with_permutations(make_layer):
  """`NUM_LAYERS` layers of `make_layer` with a random `Permute` between consecutive ones."""

  def build(dim, dtype, rng):
    layers, bijectors = [], []
    for k in range(NUM_LAYERS):
      if k:
        permutation = rng.permutation(dim).astype(np.int32)
        layers.append(dict(kind="permute", permutation=permutation))
        bijectors.append(tfb.Permute(permutation))
      layer, bijector = make_layer(dim, dtype, rng)
      layers.append(layer)
      bijectors.append(bijector)
    return layers, bijectors

  return build


# The three flows of issues #4 and #13, built here from recipes that the JAX peer rebuilds with the same weights.
STOCK_FLOWS = {
    "elementwise_affine": _elementwise_affine,
    "realnvp": _with_permutations(_realnvp_coupling),
    "maf": _with_permutations(_maf_layer),
}


def _conditional_maf(dim, dtype, seed):
  return examples.conditional_maf(dim=dim, condition_size=CONDITION_SIZE, dtype=dtype, seed=seed)


# The flows of the real-flows issue (#12), built by `tfp_hessian.examples` with its defaults except D: no recipe,
# so no peer can rebuild them.
EXAMPLE_FLOWS = {
    "research_flow": lambda dim, dtype, seed: examples.research_flow(dim=dim, dtype=dtype, seed=seed),
    "conditional_maf": _conditional_maf,
}

FLOWS = {**STOCK_FLOWS, **EXAMPLE_FLOWS}


def build_flow(name, dim, dtype, seed=0):
  """The benchmark flow `name` (a key of `FLOWS`) over `R^dim` in `dtype`, weights from `seed`.

  Returns:
    A `BenchFlow`.
  """
  if name not in FLOWS:
    raise ValueError(f"`name` must be one of {sorted(FLOWS)}; got {name!r}.")
  if dim < 2:
    raise ValueError(f"`dim` must be at least 2; got {dim}.")
  dtype = tf.as_dtype(dtype)
  if name in EXAMPLE_FLOWS:
    distribution = EXAMPLE_FLOWS[name](dim, dtype, seed)
    condition_size = CONDITION_SIZE if hasattr(distribution, "condition_kwargs") else 0
    return BenchFlow(name, distribution, None, None, condition_size)
  rng = np.random.default_rng([seed, dim, dtype.size])
  base = dict(loc=0.3 * rng.standard_normal(dim), scale_diag=rng.uniform(0.7, 1.3, dim))
  layers, bijectors = STOCK_FLOWS[name](dim, dtype, rng)
  distribution = tfd.TransformedDistribution(
      tfd.MultivariateNormalDiag(tf.constant(base["loc"], dtype), tf.constant(base["scale_diag"], dtype)),
      tfb.Chain(bijectors[::-1]))  # Chain lists its bijectors from the z side.
  cast = lambda v: np.asarray(v, dtype.as_numpy_dtype) if np.asarray(v).dtype.kind == "f" else v
  layers = [{k: ([cast(a) for a in v] if isinstance(v, list) else cast(v)) for k, v in layer.items()}
            for layer in layers]
  return BenchFlow(name, distribution, {k: cast(v) for k, v in base.items()}, layers)


def sample_points(bench_flow, num_points, seed=0):
  """`(z, kwargs)`: `num_points` points sampled from the flow, and the keyword arguments of its `log_prob`.

  `kwargs` is `{}` but for a conditional flow: there, one condition per point (standard normal, from `seed`).
  `z` is a fresh constant, so that no method finds the points in TFP's cache of sampled tensors.
  """
  dim, dtype = bench_flow.distribution.event_shape[-1], bench_flow.distribution.dtype
  kwargs = {}
  if bench_flow.condition_size:
    rng = np.random.default_rng([seed, dim, num_points])
    kwargs = bench_flow.distribution.condition_kwargs(
        tf.constant(rng.standard_normal((num_points, bench_flow.condition_size)), dtype))
  z = bench_flow.distribution.sample(num_points, seed=(seed, dim), **kwargs)
  return tf.constant(z.numpy()), kwargs


# ---------------------------------------------------------------------------------------------------------------
# Methods: each `(flow) -> fn(z)`, `z` of shape [N, D]; all but log_prob return [N, D, D] Hessians.


def _forward_over_reverse(distribution, kwargs):
  """Hessian columns `∂/∂t ∇ log q(z + t e_i)` by a `ForwardAccumulator` over a tape, `vectorized_map` over i."""

  def hessian(z):
    n, d = z.shape

    def column(tangent):  # tangent: [N, D], the same basis vector e_i for every point.
      with tf.autodiff.ForwardAccumulator(z, tangent) as accumulator:
        with tf.GradientTape() as tape:
          tape.watch(z)
          log_prob = tf.reduce_sum(distribution.log_prob(z, **kwargs))
        gradient = tape.gradient(log_prob, z)
      return accumulator.jvp(gradient)

    tangents = tf.broadcast_to(tf.eye(d, dtype=z.dtype)[:, tf.newaxis, :], [d, n, d])
    columns = tf.vectorized_map(column, tangents)  # [D, N, D]: columns[i, n] = H_n e_i
    return tf.transpose(columns, [1, 2, 0])

  return hessian


def _function(fn, jit_compile=False):
  return tf.function(fn, autograph=False, jit_compile=jit_compile)


@dataclasses.dataclass(frozen=True)
class Method:
  label: str
  make: object  # (distribution, kwargs of its log_prob) -> fn(z)
  hessian: bool = True
  alternative: bool = True  # one of the other ways to the same Hessian (not ours, not log_prob)
  # Time grows with the points N at least as N^points_power: tf.hessians differentiates the sum over the points,
  # so its Hessian is [N, D, N, D].
  points_power: float = 1.


def _ours(jit_compile=False):
  return lambda flow, kwargs: _function(lambda z: tfp_hessian.log_prob_hessian(flow, z, **kwargs), jit_compile)


def _tapes(jit_compile=False):
  return lambda flow, kwargs: _function(lambda z: reference.tape_hessian(flow, z, **kwargs), jit_compile)


METHODS = {
    "log_prob": Method("log_prob alone (tf.function)",
                       lambda flow, kwargs: _function(lambda z: flow.log_prob(z, **kwargs)), hessian=False,
                       alternative=False),
    "ours": Method("ours: log_prob_hessian (tf.function)", _ours(), alternative=False),
    "ours_xla": Method("ours + XLA (jit_compile)", _ours(jit_compile=True), alternative=False),
    "tf_hessians": Method("tf.hessians (tf.function)",
                          lambda flow, kwargs: _function(lambda z: reference.naive_hessian(flow, z, **kwargs)),
                          points_power=2.),
    "tapes": Method("nested tapes (tf.function)", _tapes()),
    "tapes_xla": Method("nested tapes + XLA", _tapes(jit_compile=True)),
    "fwd_rev": Method("fwd-over-rev, vectorized_map (tf.function)",
                      lambda flow, kwargs: _function(_forward_over_reverse(flow, kwargs))),
    "fwd_rev_xla": Method("fwd-over-rev, vectorized_map + XLA",
                          lambda flow, kwargs: _function(_forward_over_reverse(flow, kwargs), jit_compile=True)),
}

PEERS = {"jax": "JAX: jit(vmap(hessian(log_prob))), TFP JAX substrate"}


# ---------------------------------------------------------------------------------------------------------------
# Measurement


def _rss_bytes():
  """Resident set size of this process, or None where /proc is not there."""
  try:
    with open("/proc/self/statm") as statm:
      return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
  except (OSError, ValueError, IndexError):
    return None


class _PeakRss:
  """Samples the RSS in a thread while the block runs; `.delta_mib` is the peak above the RSS at entry."""

  def __init__(self, interval=5e-4):
    self._interval = interval
    self._stop = threading.Event()
    self.delta_mib = None

  def __enter__(self):
    self._baseline = self._peak = _rss_bytes()
    if self._baseline is not None:
      self._thread = threading.Thread(target=self._sample, daemon=True)
      self._thread.start()
    return self

  def _sample(self):
    while not self._stop.is_set():
      self._peak = max(self._peak, _rss_bytes() or 0)
      time.sleep(self._interval)

  def __exit__(self, *exc):
    if self._baseline is None:
      return
    self._stop.set()
    self._thread.join()
    self._peak = max(self._peak, _rss_bytes() or 0)
    self.delta_mib = (self._peak - self._baseline) / 2**20


class _TfRunner:
  """One TensorFlow method on one cell's points."""

  def __init__(self, fn, z):
    self._fn, self._z = fn, z

  def first_call(self):
    start = time.perf_counter()
    output = self._fn(self._z)
    output = output.numpy()
    return output, time.perf_counter() - start

  def timed_call(self):
    # A tf.function call on CPU returns when its outputs are computed; no copy to numpy is timed.
    start = time.perf_counter()
    self._fn(self._z)
    return time.perf_counter() - start

  def warm_up(self):
    """`(seconds of one call, peak RSS delta in MiB)`: untimed calls, under the RSS sampler."""
    with _PeakRss() as peak:
      start = time.perf_counter()
      self._fn(self._z)
      seconds = time.perf_counter() - start
      while time.perf_counter() - start < 0.02:  # Short calls: a few more, so the sampler sees one.
        self._fn(self._z)
    return seconds, peak.delta_mib

  def close(self):
    pass


class PeerError(RuntimeError):
  """The peer's worker process failed or is not installed."""


class _JaxPeer:
  """A worker process of the JAX venv, driven by one JSON line per request (`benchmarks/jax_peer/worker.py`).

  A request that outlives its timeout kills the worker (a hopeless size must not hold up the run); the next
  cell starts a new one.
  """

  def __init__(self, python=None, budget=DEFAULTS["budget"]):
    root = pathlib.Path(__file__).resolve().parents[1] / "benchmarks" / "jax_peer"
    self._python = pathlib.Path(python) if python else root / ".venv" / "bin" / "python"
    self._worker = root / "worker.py"
    self.budget = budget
    if not self._worker.exists():
      raise PeerError(f"the JAX worker {self._worker} is not there (run the benchmark from a source checkout)")
    if not self._python.exists():
      raise PeerError(f"no JAX environment at {self._python}: run benchmarks/jax_peer/setup.sh first")
    self._process = None
    self._start()
    self.versions = self.request(op="versions", timeout=120)["versions"]

  def _start(self):
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    env.setdefault("OPENBLAS_NUM_THREADS", "1")  # Why: see worker.py.
    self._process = subprocess.Popen([str(self._python), str(self._worker)], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    self._stderr = []
    threading.Thread(target=self._drain, args=(self._process, self._stderr), daemon=True).start()

  @staticmethod
  def _drain(process, lines):
    for line in process.stderr:
      lines.append(line)
      del lines[:-20]

  def _last_words(self):
    return " ".join("".join(self._stderr[-3:]).split())[-300:]

  def request(self, timeout=None, **message):
    """The worker's reply to `message`, or `PeerError`; `timeout` in seconds (default: twice the budget)."""
    timeout = 2 * self.budget if timeout is None else timeout
    try:
      self._process.stdin.write(json.dumps(message) + "\n")
      self._process.stdin.flush()
      ready, _, _ = select.select([self._process.stdout], [], [], timeout)
      line = self._process.stdout.readline() if ready else None
    except (BrokenPipeError, OSError) as error:
      raise PeerError(f"the JAX worker died: {error}; {self._last_words()}") from None
    if line is None:
      self._process.kill()
      self._process.wait()
      raise PeerError(f"no answer to {message['op']!r} within {timeout:.0f} s (worker stopped)")
    if not line:
      raise PeerError(f"the JAX worker exited ({self._process.poll()}): {self._last_words()}")
    reply = json.loads(line)
    if not reply.get("ok"):
      raise PeerError(reply.get("error", "unknown error"))
    return reply

  def runner(self, bench_flow, z, workdir):
    if self._process.poll() is not None:
      self._start()
    return _JaxRunner(self, bench_flow, z, workdir)

  def close(self):
    if self._process.poll() is None:
      try:
        self.request(op="quit", timeout=10)
      except PeerError:
        pass
      try:
        self._process.wait(timeout=10)
      except subprocess.TimeoutExpired:
        self._process.kill()
        self._process.wait()


class _JaxRunner:
  """The JAX peer on one cell: the worker holds the compiled function; we ask it for calls."""

  def __init__(self, peer, bench_flow, z, workdir):
    self._peer = peer
    self._inputs = os.path.join(workdir, "inputs.npz")
    self._outputs = os.path.join(workdir, "hessian.npy")
    _save_peer_inputs(self._inputs, bench_flow, z)

  def first_call(self):
    # Compiling comes on top of the call: a minute more than the budget.
    reply = self._peer.request(op="load", inputs=self._inputs, output=self._outputs,
                               timeout=self._peer.budget + 60)
    return np.load(self._outputs), reply["first_call_s"]

  def timed_call(self):
    return self._peer.request(op="time")["seconds"]

  def warm_up(self):
    reply = self._peer.request(op="warm_up")
    return reply["seconds"], reply["peak_rss_delta_mib"]

  def close(self):
    if self._peer._process.poll() is None:  # pylint: disable=protected-access
      self._peer.request(op="unload")


def _save_peer_inputs(path, bench_flow, z):
  """The flow's recipe and the points as one `.npz`: arrays by key, the structure as JSON under `spec`."""
  arrays = {"z": np.asarray(z)}

  def store(value):
    key = f"a{len(arrays)}"
    arrays[key] = np.asarray(value)
    return key

  def encode(layer):
    encoded = {}
    for name, value in layer.items():
      if isinstance(value, list):
        encoded[name] = [store(v) for v in value]
      elif isinstance(value, np.ndarray):
        encoded[name] = store(value)
      else:
        encoded[name] = value
    return encoded

  spec = dict(flow=bench_flow.name, base=encode(bench_flow.base), layers=[encode(layer) for layer in bench_flow.layers])
  np.savez(path, spec=np.array(json.dumps(spec)), **arrays)


def _relative_error(hessian, expected):
  """`max_n max_ij |H_n - R_n|_ij / max_ij |R_n|_ij`; NaN if anything is not finite."""
  hessian, expected = np.asarray(hessian, np.float64), np.asarray(expected, np.float64)
  if hessian.shape != expected.shape:
    raise ValueError(f"Hessian of shape {hessian.shape}, expected {expected.shape}")
  if not (np.all(np.isfinite(hessian)) and np.all(np.isfinite(expected))):
    return float("nan")
  scale = np.max(np.abs(expected), axis=(-2, -1))
  return float(np.max(np.max(np.abs(hessian - expected), axis=(-2, -1)) / np.maximum(scale, np.finfo(float).tiny)))


def _reason(error):
  text = " ".join(str(error).split())
  text = text if len(text) <= 160 else text[:157] + "..."
  return f"{type(error).__name__}: {text}"


def _statistics(seconds):
  ms = np.asarray(seconds) * 1e3
  q1, median, q3 = np.percentile(ms, [25, 50, 75])
  return dict(median_ms=float(median), q1_ms=float(q1), q3_ms=float(q3), min_ms=float(ms.min()),
              max_ms=float(ms.max()), calls=len(ms))


def _predicted_seconds(previous, dim, num_points, points_power=1.):
  """Seconds per call at `(dim, num_points)`, extrapolated from the smaller cells measured, or None.

  From the smaller D at the same N: from the largest of them, the time grows as `D^p` with `p` the slope between
  the two largest measured, or 3 if that is less (or there is only one): pessimistic for every method here
  except XLA's batched triangular solves on CPU, whose time grows faster still (and which that slope then
  catches). From fewer points at the same D: the time grows as `N^points_power` (per-call overhead makes this
  pessimistic too). The larger of the two predictions.
  """
  predictions = []
  smaller = sorted((d, r["median_ms"] / 1e3) for (d, n), r in previous.items()
                   if n == num_points and d < dim and r.get("median_ms") is not None)
  if smaller:
    power = 3.
    if len(smaller) >= 2:
      (d0, t0), (d1, t1) = smaller[-2:]
      power = max(power, np.log(t1 / t0) / np.log(d1 / d0))
    d, seconds = smaller[-1]
    predictions.append(seconds * (dim / d) ** power)
  fewer = sorted((n, r["median_ms"] / 1e3) for (d, n), r in previous.items()
                 if d == dim and n < num_points and r.get("median_ms") is not None)
  if fewer:
    n, seconds = fewer[-1]
    predictions.append(seconds * (num_points / n) ** points_power)
  return max(predictions, default=None)


def _run_cell(z, dtype, runners, settings, history, rng, unsupported=None):
  """Measures every runner on one cell; returns `{method: result}` in the order of `runners`.

  `history` holds the results of the cells run before for the same flow and dtype, `{method: {(D, N): result}}`;
  `unsupported` maps methods that cannot serve this flow to why (they are reported as skipped).
  """
  results, outputs, active = {}, {}, {}
  num_points, dim = z.shape
  unsupported = unsupported or {}
  for name, make in runners.items():
    if name in unsupported:
      results[name] = dict(status=f"skipped: {unsupported[name]}")
      continue
    previous = history.get(name, {})
    if name not in _ALWAYS_RUN:
      smaller = {(d, n): r for (d, n), r in previous.items() if d <= dim and n <= num_points}
      over_budget = [(d, n) for (d, n), r in smaller.items() if r["status"].startswith("skipped: > budget")]
      timed_out = [r for r in smaller.values() if "(worker stopped)" in r["status"]]
      points_power = METHODS[name].points_power if name in METHODS else 1.
      predicted = _predicted_seconds(previous, dim, num_points, points_power)
      if over_budget:
        where = "a smaller D" if any(d < dim for d, _ in over_budget) else "fewer points"
        results[name] = dict(status=f"skipped: > budget at {where}")
        continue
      if timed_out:
        results[name] = dict(status="skipped: timed out at a smaller cell")
        continue
      if predicted is not None and predicted > settings["budget"]:
        results[name] = dict(status=f"skipped: > budget (~{predicted:.0f} s/call predicted > {settings['budget']:g} s)")
        continue
    try:
      runner = make()
      output, first = runner.first_call()
    except Exception as error:  # pylint: disable=broad-except
      results[name] = dict(status=f"failed: {_reason(error)}")
      continue
    results[name] = dict(status="ok", first_call_s=first)
    outputs[name] = output
    if name not in _ALWAYS_RUN and first > 3 * settings["budget"]:
      # Tracing and compiling can take far longer than a call (XLA: 15 s and more), so only a first call far
      # over the budget stops a method; it is checked for agreement, not timed.
      results[name]["status"] = f"skipped: > budget (first call {first:.0f} s > 3 x {settings['budget']:g} s)"
      runner.close()
      continue
    active[name] = runner

  hessians = {name: out for name, out in outputs.items() if out.ndim == 3}
  if "ours" in hessians:
    for name, hessian in hessians.items():
      try:
        error = _relative_error(hessian, hessians["ours"])
      except ValueError as failure:
        error = float("nan")
        results[name]["status"] = f"failed: {failure}"
      results[name]["max_rel_error"] = error
      results[name]["agrees"] = bool(error <= TOLERANCE[dtype])

  # Warm-up (under the RSS sampler), and how many timed calls each method can afford within the time budget.
  planned, estimates = {}, {}
  for name, runner in list(active.items()):
    try:
      estimates[name], results[name]["peak_rss_delta_mib"] = runner.warm_up()
      estimate = estimates[name]
    except Exception as error:  # pylint: disable=broad-except
      results[name]["status"] = f"failed: {_reason(error)}"
      continue
    if name in _ALWAYS_RUN:
      planned[name] = settings["repeats"]
    elif estimate > settings["budget"]:
      results[name]["status"] = f"skipped: > budget (a call took {estimate:.0f} s > {settings['budget']:g} s)"
      results[name]["single_call_s"] = estimate
    else:
      planned[name] = int(np.clip(settings["time_budget"] // max(estimate, 1e-9), 1, settings["repeats"]))

  # A method that can afford one call only has just made it: that call is its measurement.
  samples = {name: [] for name in planned}
  for name, calls in planned.items():
    if calls == 1 and name not in _ALWAYS_RUN:
      samples[name].append(estimates[name])
  for _ in range(settings["repeats"]):
    for name in rng.permutation(list(planned)):
      if len(samples[name]) >= planned[name]:
        continue
      try:
        samples[name].append(active[name].timed_call())
      except Exception as error:  # pylint: disable=broad-except
        results[name]["status"] = f"failed: {_reason(error)}"
        planned[name] = 0
  for name, runner in active.items():
    if samples.get(name) and results[name]["status"] == "ok":
      results[name].update(_statistics(samples[name]))
      results[name]["points_per_s"] = num_points / (results[name]["median_ms"] / 1e3)
    try:
      runner.close()
    except Exception:  # pylint: disable=broad-except
      pass

  for name in ("log_prob", "ours"):
    reference_ms = results.get(name, {}).get("median_ms")
    for result in results.values():
      if reference_ms and result.get("median_ms") is not None:
        result[f"ratio_to_{name}"] = result["median_ms"] / reference_ms
  return results


# ---------------------------------------------------------------------------------------------------------------
# Summaries


def _exponents(cells):
  """Log–log slope of median time against D per (flow, dtype, N, method), over the dims where it ran."""
  series = {}
  for cell in cells:
    for method, result in cell["results"].items():
      if result.get("median_ms") is not None:
        key = (cell["flow"], cell["dtype"], cell["num_points"], method)
        series.setdefault(key, []).append((cell["dim"], result["median_ms"]))
  exponents = []
  for (flow, dtype, num_points, method), points in series.items():
    dims = sorted({d for d, _ in points})
    if len(dims) < 2:
      continue
    d, ms = np.array(points, dtype=float).T
    slope = float(np.polyfit(np.log(d), np.log(ms), 1)[0])
    exponents.append(dict(flow=flow, dtype=dtype, num_points=num_points, method=method, exponent=slope, dims=dims))
  return exponents


def _fastest_alternative(results):
  """`(method, median_ms)` of the fastest alternative timed in a cell, or `(None, None)`."""
  alternatives = {m: r["median_ms"] for m, r in results.items()
                  if r.get("median_ms") is not None and (m in PEERS or (m in METHODS and METHODS[m].alternative))}
  if not alternatives:
    return None, None
  fastest = min(alternatives, key=alternatives.get)
  return fastest, alternatives[fastest]


def _speed_row(key, target, value, met, fastest=None):
  detail = f"fastest alternative: {fastest}" if fastest else ""
  return dict(key, target=target, value=value, met=met, detail=detail)


def _issue13_targets(cell, key):
  """Issue #13: against the fastest alternative at few and many points, and against log_prob at small D."""
  results, dim, num_points = cell["results"], cell["dim"], cell["num_points"]
  ours_ms = results["ours"]["median_ms"]
  fastest, fastest_ms = _fastest_alternative(results)
  rows = []

  def against_alternatives(target, threshold, strictly=False):
    if fastest is None:
      rows.append(dict(key, target=target, value=None, met=None, detail="no alternative timed"))
      return
    speedup = fastest_ms / ours_ms
    met = speedup > threshold if strictly else speedup >= threshold
    rows.append(_speed_row(key, target, speedup, bool(met), fastest))

  if dim >= 64 and cell["flow"] in STOCK_FLOWS:
    if num_points >= MANY_POINTS:
      against_alternatives(f"≥2x faster than the fastest alternative (D ≥ 64, N ≥ {MANY_POINTS})", 2)
    elif num_points <= FEW_POINTS:
      against_alternatives(f"at least as fast as the fastest alternative (D ≥ 64, N ≤ {FEW_POINTS})", 1)
  if dim <= 16:
    if num_points <= FEW_POINTS:
      log_prob_ms = results.get("log_prob", {}).get("median_ms")
      target = f"within 1.5x of log_prob (D ≤ 16, N ≤ {FEW_POINTS})"
      if log_prob_ms is None:
        rows.append(dict(key, target=target, value=None, met=None, detail=results["log_prob"]["status"]))
      else:
        ratio = ours_ms / log_prob_ms
        rows.append(dict(key, target=target, value=ratio, met=bool(ratio <= 1.5), detail=""))
    elif num_points >= MANY_POINTS:
      against_alternatives(f"ahead of every alternative (D ≤ 16, N ≥ {MANY_POINTS})", 1, strictly=True)
  return [dict(row, issue=13) for row in rows]


def _issue4_targets(cell, key):
  """Issue #4, stated at 16 points: so only at N ≤ 16."""
  results = cell["results"]
  ours = results["ours"]
  rows = []
  fastest, fastest_ms = _fastest_alternative(results)
  if cell["dim"] >= 64 and fastest is not None:
    speedup = fastest_ms / ours["median_ms"]
    rows.append(_speed_row(key, "≥2x faster than the fastest alternative (D ≥ 64)", speedup, bool(speedup >= 2),
                           fastest))
  naive = results.get("tf_hessians", {})
  if naive.get("median_ms") is not None:
    speedup = naive["median_ms"] / ours["median_ms"]
    rows.append(dict(key, target="≥100x faster than tf.hessians", value=speedup, met=bool(speedup >= 100),
                     detail=""))
  elif "tf_hessians" in results:
    rows.append(dict(key, target="≥100x faster than tf.hessians", value=None, met=None,
                     detail=results["tf_hessians"]["status"]))
  log_prob = results.get("log_prob", {})
  if cell["dim"] <= 32 and log_prob.get("median_ms") is not None:
    ratio = ours["median_ms"] / log_prob["median_ms"]
    rows.append(dict(key, target="within 3x of log_prob (D ≤ 32)", value=ratio, met=bool(ratio <= 3), detail=""))
  rows.append(dict(key, target="first call < 3 s", value=ours["first_call_s"], met=bool(ours["first_call_s"] < 3),
                   detail=""))
  return [dict(row, issue=4) for row in rows]


def _targets(cells):
  """The issues' targets per cell: which are met, by how much; issue #13's first."""
  issue13, issue4 = [], []
  for cell in cells:
    if cell["results"].get("ours", {}).get("median_ms") is None:
      continue
    key = dict(flow=cell["flow"], dim=cell["dim"], dtype=cell["dtype"], num_points=cell["num_points"],
               command=cell.get("command"))
    issue13 += _issue13_targets(cell, key)
    if cell["num_points"] <= FEW_POINTS:
      issue4 += _issue4_targets(cell, key)
  return issue13 + issue4


def _format_ms(ms):
  if ms is None:
    return "-"
  if ms >= 1000:
    return f"{ms / 1e3:.2f} s"
  return f"{ms:.3g} ms" if ms < 10 else f"{ms:.1f} ms"


def _label(method):
  return METHODS[method].label if method in METHODS else PEERS.get(method, method)


def _format_rate(points_per_s):
  if points_per_s is None:
    return "-"
  return f"{points_per_s / 1e3:.3g}k" if points_per_s >= 1e3 else f"{points_per_s:.3g}"


def _format_target(row):
  verdict = "n/a " if row["met"] is None else ("met " if row["met"] else "MISS")
  value = row["detail"] if row["value"] is None else f"{row['value']:.2f}" + (
      "s" if "first call" in row["target"] else "x")
  detail = f"  ({row['detail']})" if row["detail"] and row["value"] is not None else ""
  cell = f"{row['flow']} D={row['dim']} {row['dtype']} N={row.get('num_points', '?')}"
  command = f"   $ {row['command']}" if row.get("command") else ""
  return f"  {verdict} {cell:36s} {row['target']:58s} {value}{detail}{command}"


def format_report(report):
  """The report's tables as text: one block per cell, then the exponents and the targets.

  Every figure is printed with the command that measures it again: each cell's block and each target row.
  """
  lines = []
  width = max([44] + [len(_label(m)) + 2 for c in report["cells"] for m in c["results"]])
  for cell in report["cells"]:
    lines.append(f"{cell['flow']}, D={cell['dim']}, {cell['dtype']}, N={cell['num_points']} points "
                 f"({cell['num_bijectors']} bijectors)   $ {cell['command']}")
    lines.append(f"  default call: {cell['execution']['reason']}")
    lines.append(f"  {'method':{width}s}{'median':>10s}{'IQR':>19s}{'points/s':>10s}{'calls':>6s}{'/log_prob':>10s}"
                 f"{'/ours':>8s}{'1st call':>10s}{'dRSS MiB':>10s}{'rel err':>9s}")
    for method, r in cell["results"].items():
      head = f"  {_label(method):{width}s}"
      if r.get("median_ms") is None:
        extra = f"   (1st call {r['first_call_s']:.1f} s)" if r.get("first_call_s") is not None else ""
        lines.append(head + r["status"] + extra)
        continue
      iqr = f"{_format_ms(r['q1_ms'])}–{_format_ms(r['q3_ms'])}"
      error = "" if r.get("max_rel_error") is None else f"{r['max_rel_error']:.0e}" + ("" if r["agrees"] else "!")
      rss = "-" if r.get("peak_rss_delta_mib") is None else f"{r['peak_rss_delta_mib']:.0f}"
      lines.append(head + f"{_format_ms(r['median_ms']):>10s}{iqr:>19s}{_format_rate(r.get('points_per_s')):>10s}"
                   f"{r['calls']:6d}"
                   f"{r.get('ratio_to_log_prob', float('nan')):9.1f}x{r.get('ratio_to_ours', float('nan')):7.2f}x"
                   f"{r['first_call_s']:9.2f}s{rss:>10s}{error:>9s}")
    lines.append("")
  if report["exponents"]:
    lines.append("growth with D: log-log slope of median time vs D   $ " + cell_command(
        report.get("command_options", ""), report["settings"]["flows"], report["settings"]["dims"],
        report["settings"]["dtypes"], report["settings"]["num_points"]))
    rows = sorted({(e["flow"], e["dtype"], e["num_points"]) for e in report["exponents"]})
    methods = [m for m in list(METHODS) + list(PEERS) if any(e["method"] == m for e in report["exponents"])]
    lines.append(f"  {'flow, dtype, N':36s}" + "".join(f"{m:>13s}" for m in methods))
    for flow, dtype, num_points in rows:
      values = {e["method"]: e["exponent"] for e in report["exponents"]
                if (e["flow"], e["dtype"], e["num_points"]) == (flow, dtype, num_points)}
      lines.append(f"  {f'{flow}, {dtype}, N={num_points}':36s}" + "".join(
          f"{values[m]:13.2f}" if m in values else f"{'-':>13s}" for m in methods))
    lines.append("")
  for issue, title in ((13, f"targets (issue #13: N ≤ {FEW_POINTS} latency, N ≥ {MANY_POINTS} throughput; "
                            "D ≥ 64 rows for the stock flows)"),
                       (4, f"targets (issue #4, stated at 16 points: cells with N ≤ {FEW_POINTS})")):
    rows = [row for row in report["targets"] if row.get("issue", 4) == issue]
    if rows:
      measured = [row for row in rows if row["met"] is not None]
      lines.append(f"{title}: {sum(row['met'] for row in measured)}/{len(measured)} met")
      lines += [_format_target(row) for row in rows]
      lines.append("")
  disagreeing = [(c["flow"], c["dim"], c["dtype"], c["num_points"], m) for c in report["cells"]
                 for m, r in c["results"].items() if r.get("agrees") is False]
  lines.append("agreement with ours: " + ("every method that ran agrees" if not disagreeing else
                                          f"DISAGREEMENT in {disagreeing}"))
  return "\n".join(lines)


# ---------------------------------------------------------------------------------------------------------------
# The run


def _cpu_model():
  try:
    with open("/proc/cpuinfo") as cpuinfo:
      for line in cpuinfo:
        if line.startswith("model name"):
          return line.split(":", 1)[1].strip()
  except OSError:
    pass
  return platform.processor() or platform.machine()


def _machine():
  load = os.getloadavg() if hasattr(os, "getloadavg") else None
  return dict(cpu=_cpu_model(), cores=os.cpu_count(), platform=platform.platform(), python=platform.python_version(),
              load_average_at_start=load)


def _versions():
  return dict(tensorflow=tf.__version__, tensorflow_probability=tfp.__version__, tf_keras=tf_keras.__version__,
              numpy=np.__version__, tfp_hessian=tfp_hessian.__version__)


def run_bench(flows=DEFAULTS["flows"], dims=DEFAULTS["dims"], dtypes=DEFAULTS["dtypes"],
              num_points=DEFAULTS["num_points"], repeats=DEFAULTS["repeats"], budget=DEFAULTS["budget"],
              time_budget=DEFAULTS["time_budget"], methods=tuple(METHODS), peers=(), seed=0, jax_python=None,
              out=None, command=None):
  """Runs the benchmark and returns its report (the JSON document, as a dict).

  Args:
    flows: keys of `FLOWS`.
    dims: event sizes D.
    dtypes: "float32" and/or "float64".
    num_points: the numbers of points N per call (an int: one).
    repeats: timed calls per method and cell (at most; fewer for methods slower than `time_budget` allows).
    budget: seconds per call above which a method is skipped (predicted from a smaller cell, or measured).
    time_budget: seconds of timed calls per method and cell that decide how many calls a slow method gets.
    methods: keys of `METHODS` to time; "ours" and "log_prob" are always included.
    peers: keys of `PEERS`.
    seed: seed of weights and points.
    jax_python: the JAX venv's interpreter (default `benchmarks/jax_peer/.venv/bin/python`).
    out: text stream for progress and tables (default `sys.stdout`).
    command: the command line to record.

  Returns:
    A dict: `schema`, `command`, `created`, `machine`, `versions`, `settings`, `methods` (key → label),
    `cells` (one per flow, dtype, D, N: `command` reproducing it, `execution` (how the default call runs:
    `xla`, `reason`), `results` per method with `status`, `median_ms`, `q1_ms`, `q3_ms`, `min_ms`, `max_ms`,
    `calls`, `points_per_s`, `first_call_s`, `max_rel_error`, `agrees`, `peak_rss_delta_mib`, `ratio_to_log_prob`,
    `ratio_to_ours`), `exponents`, `targets`, `wall_time_s`.
  """
  out = sys.stdout if out is None else out
  for name, allowed, values in (("flows", FLOWS, flows), ("methods", METHODS, methods), ("peers", PEERS, peers),
                                ("dtypes", TOLERANCE, dtypes)):
    unknown = [v for v in values if v not in allowed]
    if unknown:
      raise ValueError(f"unknown {name} {unknown}; choose from {sorted(allowed)}")
  if not dims or min(dims) < 2:
    raise ValueError(f"`dims` must be at least 2; got {list(dims)}.")
  num_points = sorted(set([num_points] if isinstance(num_points, int) else num_points))
  if not num_points or num_points[0] < 1 or repeats < 1:
    raise ValueError(f"`num_points` and `repeats` must be at least 1; got {num_points}, {repeats}.")
  methods = [m for m in METHODS if m in _ALWAYS_RUN or m in methods]
  settings = dict(flows=list(flows), dims=sorted(set(dims)), dtypes=list(dtypes), num_points=num_points,
                  repeats=repeats, budget=budget, time_budget=time_budget, methods=methods, peers=list(peers),
                  seed=seed, tolerance=TOLERANCE)

  def say(line=""):
    print(line, file=out, flush=True)

  started = time.perf_counter()
  report = dict(schema=SCHEMA, command=command, created=datetime.datetime.now(datetime.timezone.utc).isoformat(),
                machine=_machine(), versions=_versions(), settings=settings,
                command_options=_command_options(settings), methods={m: _label(m) for m in methods + list(peers)},
                cells=[])
  peer_objects, peer_errors = {}, {}
  for name in peers:
    try:
      peer_objects[name] = _JaxPeer(jax_python, budget)
      report["versions"].update({f"jax_peer_{k}": v for k, v in peer_objects[name].versions.items()})
    except PeerError as error:
      peer_errors[name] = str(error)
      say(f"peer {name}: not available: {error}")

  total = len(flows) * len(dtypes) * len(settings["dims"]) * len(num_points)
  rng = np.random.default_rng(seed)
  try:
    with tempfile.TemporaryDirectory(prefix="tfp_hessian_bench_") as workdir:
      for flow_name in flows:
        for dtype in dtypes:
          history = {}
          for dim in settings["dims"]:
            bench_flow = build_flow(flow_name, dim, dtype, seed=seed)
            flow = bench_flow.distribution
            for n in num_points:
              index = len(report["cells"]) + 1
              name = f"{flow_name} D={dim} {dtype} N={n}"
              say(f"[{index}/{total}] {name}: building the flow and {n} points ...")
              z, kwargs = sample_points(bench_flow, n, seed)
              execution = _execution(flow, z, kwargs)
              runners = {m: (lambda m=m: _TfRunner(METHODS[m].make(flow, kwargs), z)) for m in methods}
              unsupported = {}
              for peer in peers:
                if bench_flow.layers is None:
                  unsupported[peer] = f"the {peer} peer rebuilds only the stock flows ({', '.join(STOCK_FLOWS)})"
                elif peer in peer_objects:
                  runners[peer] = lambda peer=peer: peer_objects[peer].runner(bench_flow, z.numpy(), workdir)
                else:
                  runners[peer] = lambda peer=peer: (_ for _ in ()).throw(PeerError(peer_errors[peer]))
              runners.update({peer: None for peer in unsupported})
              cell_started = time.perf_counter()
              results = _run_cell(z, dtype, runners, settings, history, rng, unsupported)
              for method, result in results.items():
                history.setdefault(method, {})[dim, n] = result
              cell = dict(flow=flow_name, dim=dim, dtype=dtype, num_points=n, num_bijectors=bench_flow.num_bijectors,
                          command=cell_command(report["command_options"], [flow_name], [dim], [dtype], [n]),
                          execution=execution, results=results)
              report["cells"].append(cell)
              say(f"[{index}/{total}] {name}: {_cell_summary(results)}; default call: {execution['reason']}; "
                  f"{time.perf_counter() - cell_started:.0f} s (total {time.perf_counter() - started:.0f} s)")
  finally:
    for peer in peer_objects.values():
      peer.close()

  report["exponents"] = _exponents(report["cells"])
  report["targets"] = _targets(report["cells"])
  report["wall_time_s"] = time.perf_counter() - started
  say()
  say(format_report(report))
  return report


def _execution(distribution, z, kwargs):
  """How the default call `log_prob_hessian` runs in a `tf.function` on these points: `{xla, reason}`."""
  try:
    plan = tfp_hessian.execution_plan(distribution, z, **kwargs)
  except Exception as error:  # pylint: disable=broad-except
    return dict(xla=None, reason=f"unknown: {_reason(error)}")
  return dict(xla=bool(plan.xla), reason=plan.reason)


def _command_options(settings):
  """The options of a run's settings that differ from the defaults, as a command line fragment."""
  options = []
  if settings["methods"] != list(METHODS):
    options.append("--methods " + " ".join(settings["methods"]))
  if settings["peers"]:
    options.append("--peers " + " ".join(settings["peers"]))
  for key in ("repeats", "budget", "time_budget", "seed"):
    default = DEFAULTS.get(key, 0)
    if settings[key] != default:
      options.append(f"--{key.replace('_', '-')} {settings[key]:g}")
  return " ".join(options)


def cell_command(options, flows, dims, dtypes, num_points):
  """The command that measures the given cells again, with the run's `options` (`_command_options`)."""
  parts = ["python -m tfp_hessian bench", "--flow " + " ".join(flows), "--dim " + " ".join(map(str, dims)),
           "--dtype " + " ".join(dtypes), "--num-points " + " ".join(map(str, num_points))]
  return " ".join(parts + ([options] if options else []))


def _cell_summary(results):
  ours = results.get("ours", {})
  if ours.get("median_ms") is None:
    return f"ours {ours.get('status', 'missing')}"
  parts = [f"ours {_format_ms(ours['median_ms'])}"]
  if results.get("log_prob", {}).get("ratio_to_ours"):
    parts.append(f"{1 / results['log_prob']['ratio_to_ours']:.1f}x log_prob")
  fastest, fastest_ms = _fastest_alternative(results)
  if fastest:
    parts.append(f"fastest alternative {fastest} {_format_ms(fastest_ms)}")
  problems = [m for m, r in results.items() if r["status"] != "ok" or r.get("agrees") is False]
  if problems:
    parts.append("not timed or disagreeing: " + ", ".join(problems))
  return ", ".join(parts)


# Issue #13's table: the stock flows at every D of its targets, the example flows at the small D, one document.
FULL_RUN = """issue #13's table (about 2 h on a quiet 2-core machine: 72 + 32 cells):
  python -m tfp_hessian bench --flow elementwise_affine realnvp maf --dim 2 4 8 16 64 128 --peers jax \\
      --json benchmarks/results.json
  python -m tfp_hessian bench --flow research_flow conditional_maf --dim 2 4 8 16 --peers jax \\
      --json benchmarks/results_examples.json
  python benchmarks/report.py benchmarks/results.json benchmarks/results_examples.json --markdown BENCHMARKS.md \\
      --plot benchmarks/time_vs_dim.png"""


def add_arguments(parser):
  """Adds the benchmark's options to an `argparse` (sub)parser."""
  parser.formatter_class = argparse.RawDescriptionHelpFormatter
  parser.epilog = FULL_RUN
  parser.add_argument("--flow", nargs="+", choices=list(FLOWS), default=None, dest="flows",
                      help=f"flows to benchmark (default: the stock flows, {' '.join(DEFAULTS['flows'])}); "
                           f"{' and '.join(EXAMPLE_FLOWS)} are tfp_hessian.examples' (their defaults but D), which "
                           "the JAX peer does not rebuild")
  parser.add_argument("--dim", nargs="+", type=int, default=None, dest="dims",
                      help="event sizes D, at least 2 (default: 16 64 128; --quick: 3 5)")
  parser.add_argument("--dtype", nargs="+", choices=sorted(TOLERANCE), default=None, dest="dtypes",
                      help="dtypes (default: float32 float64; --quick: float64)")
  parser.add_argument("--num-points", nargs="+", type=int, default=None,
                      help=f"points N per call, one cell per N (default: {FEW_POINTS} {MANY_POINTS}, latency and "
                           "throughput; --quick: 4)")
  parser.add_argument("--methods", nargs="+", choices=list(METHODS), default=None,
                      help="TensorFlow methods to time (default: all; log_prob and ours always run)")
  parser.add_argument("--peers", nargs="*", choices=sorted(PEERS), default=(),
                      help="other frameworks: jax (needs benchmarks/jax_peer/setup.sh)")
  parser.add_argument("--repeats", type=int, default=None,
                      help="timed calls per method and cell, at most (default: 15; --quick: 3)")
  parser.add_argument("--budget", type=float, default=None,
                      help="skip a method slower than this many seconds per call (default: 20)")
  parser.add_argument("--time-budget", type=float, default=None,
                      help="seconds of timed calls per method and cell; slower methods get fewer calls (default: 5)")
  parser.add_argument("--seed", type=int, default=0, help="seed of weights and points (default: 0)")
  parser.add_argument("--json", default=None, metavar="PATH", help="write the report as JSON to PATH")
  parser.add_argument("--jax-python", default=None, metavar="PATH",
                      help="interpreter of the JAX peer (default: benchmarks/jax_peer/.venv/bin/python)")
  parser.add_argument("--quick", action="store_true",
                      help="tiny flows and few calls, for a smoke test (D = 3 5, float64, 4 points, 3 calls, 0.5 s "
                           "of calls per method); the options given explicitly override it")


def run(args):
  """Runs the benchmark from parsed arguments; exit status 0 unless ours failed or a method disagreed."""
  settings = dict(DEFAULTS, **(QUICK if args.quick else {}))
  for key in ("flows", "dims", "dtypes", "num_points", "repeats", "budget", "time_budget"):
    if getattr(args, key) is not None:
      settings[key] = getattr(args, key)
  command = "python -m tfp_hessian bench" + "".join(f" {a}" for a in sys.argv[2:]) if sys.argv[1:2] == ["bench"] \
      else None
  report = run_bench(methods=tuple(args.methods or METHODS), peers=tuple(args.peers), seed=args.seed,
                     jax_python=args.jax_python, command=command, **settings)
  if args.json:
    path = pathlib.Path(args.json)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(_finite(report), indent=1, allow_nan=False) + "\n")
    print(f"wrote {path}")
  ok = all(c["results"].get("ours", {}).get("status") == "ok" for c in report["cells"])
  ok = ok and not any(r.get("agrees") is False for c in report["cells"] for r in c["results"].values())
  return 0 if ok else 1


def _finite(value):
  """The report with NaN and infinities as None (strict JSON has neither) and numpy scalars as Python's."""
  if isinstance(value, dict):
    return {k: _finite(v) for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return [_finite(v) for v in value]
  if isinstance(value, (np.integer, np.floating, np.bool_)):
    value = value.item()
  if isinstance(value, float) and not np.isfinite(value):
    return None
  return value
