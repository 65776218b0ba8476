"""The JAX peer: `jax.jit(jax.vmap(jax.hessian(log_prob)))` on the identical flow, in a worker process.

The worker (`benchmarks/jax_peer/worker.py`) runs in a virtual environment of its own (`benchmarks/jax_peer/
setup.sh`) and rebuilds a stock flow with TFP's JAX substrate from the recipe and weights of `flows.BenchFlow`.
"""

import json
import os
import pathlib
import select
import subprocess
import threading

import numpy as np

__all__ = ["JaxPeer", "JaxRunner", "PeerError"]


class PeerError(RuntimeError):
  """The peer's worker process failed or is not installed."""


class JaxPeer:
  """A worker process of the JAX venv, driven by one JSON line per request (`benchmarks/jax_peer/worker.py`).

  A request that outlives its timeout kills the worker (a hopeless size must not hold up the run); the next
  cell starts a new one.

  Args:
    python: the JAX venv's interpreter (None: `benchmarks/jax_peer/.venv/bin/python`).
    budget: seconds per call; a request's default timeout is twice that.
  """

  def __init__(self, python, budget):
    root = pathlib.Path(__file__).resolve().parents[1] / "jax_peer"
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
    return JaxRunner(self, bench_flow, z, workdir)

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


class JaxRunner:
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

