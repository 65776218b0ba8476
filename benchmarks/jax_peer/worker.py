"""The JAX peer of `python -m tfp_hessian bench --peers jax`, run in its own venv (see setup.sh).

It reads one JSON request per line on stdin and answers one JSON line on stdout:

- `{"op": "versions"}`: the versions of jax, jaxlib, numpy and TFP here.
- `{"op": "load", "inputs": NPZ, "output": NPY}`: rebuilds the flow of NPZ (written by `benchmarks/harness/peer.py`:
  the recipe as JSON under `spec`, the arrays by key, the points under `z`) with TFP's JAX substrate, compiles
  `jax.jit(jax.vmap(jax.hessian(log_prob)))`, calls it once on the points (timed: tracing and compiling
  included, `first_call_s`) and saves the Hessians `[N, D, D]` to NPY.
- `{"op": "time"}`: one more call, timed to `block_until_ready` (`seconds`).
- `{"op": "warm_up"}`: one untimed call (a few if short) under an RSS sampler (every 0.5 ms): `seconds` of the
  first and `peak_rss_delta_mib`, the peak above the RSS before it.
- `{"op": "unload"}`, `{"op": "quit"}`.

The substrate has no `AutoregressiveNetwork` (a Keras layer), so the MADE is written out here from the same
masked kernels: dense layers with tanh between, the output unit `2 i + p` being parameter `p` (shift, log-scale)
of coordinate `i`, as TFP's network reshapes it. RealNVP's conditioner is the same dense network with
`[shift | log_scale]` halves of its output, as `tfp_hessian.conditioners.DenseShiftAndLogScale`.
"""

import json
import os
import sys
import threading
import time
import traceback

os.environ.setdefault("JAX_PLATFORMS", "cpu")
# jaxlib runs triangular solves (ScaleMatvecTriL) through scipy's OpenBLAS. Its worker threads wait in sleeps
# that this VM rounds up to a 4 ms jiffy: one 16x16 solve took 8 ms instead of 20 us, and a Hessian of the
# elementwise-affine flow 64 ms instead of 0.4 ms. XLA's own ops keep their thread pool.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import jax  # pylint: disable=wrong-import-position
import jax.numpy as jnp  # pylint: disable=wrong-import-position
import numpy as np  # pylint: disable=wrong-import-position
from tensorflow_probability.substrates import jax as tfp  # pylint: disable=wrong-import-position

jax.config.update("jax_enable_x64", True)  # float64 flows; float32 ones stay float32 (their arrays are).

tfb, tfd = tfp.bijectors, tfp.distributions

_ACTIVATIONS = {"tanh": jnp.tanh}


def _dense_network(kernels, biases, activation):
  def network(x):
    for k, (kernel, bias) in enumerate(zip(kernels, biases)):
      x = x @ kernel + bias
      if k + 1 < len(kernels):
        x = activation(x)
    return x

  return network


def _bijector(layer, arrays):
  kind = layer["kind"]
  get = lambda key: jnp.asarray(arrays[layer[key]])
  if kind == "scale_tril":
    return tfb.ScaleMatvecTriL(get("scale_tril"))
  if kind == "shift":
    return tfb.Shift(get("shift"))
  if kind == "sinh_arcsinh":
    return tfb.SinhArcsinh(skewness=get("skewness"), tailweight=get("tailweight"))
  if kind == "permute":
    return tfb.Permute(np.asarray(arrays[layer["permutation"]]))
  kernels = [jnp.asarray(arrays[k]) for k in layer["kernels"]]
  biases = [jnp.asarray(arrays[k]) for k in layer["biases"]]
  network = _dense_network(kernels, biases, _ACTIVATIONS[layer["activation"]])
  if kind == "real_nvp":

    def shift_and_log_scale(x, output_units):
      out = network(x)
      return out[..., :output_units], out[..., output_units:]

    return tfb.RealNVP(num_masked=layer["num_masked"], shift_and_log_scale_fn=shift_and_log_scale)
  if kind == "maf":

    def made(y):
      out = network(y)
      out = out.reshape(out.shape[:-1] + (out.shape[-1] // 2, 2))
      return out[..., 0], out[..., 1]

    return tfb.MaskedAutoregressiveFlow(shift_and_log_scale_fn=made)
  raise ValueError(f"unknown layer kind {kind!r}")


def build(inputs):
  """`(log_prob of one point [D] -> scalar, z [N, D])` from a bench `.npz`."""
  arrays = np.load(inputs)
  spec = json.loads(str(arrays["spec"]))
  base = tfd.MultivariateNormalDiag(jnp.asarray(arrays[spec["base"]["loc"]]),
                                    jnp.asarray(arrays[spec["base"]["scale_diag"]]))
  bijectors = [_bijector(layer, arrays) for layer in spec["layers"]]
  flow = tfd.TransformedDistribution(base, tfb.Chain(bijectors[::-1]))
  return flow.log_prob, jnp.asarray(arrays["z"])


def _rss_bytes():
  with open("/proc/self/statm") as statm:
    return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _warm_up(call):
  """`(seconds of one call, peak RSS above the RSS before it in MiB)`, sampled every 0.5 ms."""
  baseline = peak = _rss_bytes()
  stop = threading.Event()

  def sample():
    nonlocal peak
    while not stop.is_set():
      peak = max(peak, _rss_bytes())
      time.sleep(5e-4)

  thread = threading.Thread(target=sample, daemon=True)
  thread.start()
  start = time.perf_counter()
  call()
  seconds = time.perf_counter() - start
  while time.perf_counter() - start < 0.02:  # Short calls: a few more, so the sampler sees one.
    call()
  stop.set()
  thread.join()
  return seconds, (max(peak, _rss_bytes()) - baseline) / 2**20


def main():
  state = {}
  for line in sys.stdin:
    request = json.loads(line)
    op = request["op"]
    try:
      if op == "quit":
        print(json.dumps({"ok": True}), flush=True)
        return
      if op == "versions":
        import jaxlib  # pylint: disable=import-outside-toplevel
        reply = {"versions": {"jax": jax.__version__, "jaxlib": jaxlib.__version__, "numpy": np.__version__,
                              "tensorflow_probability": tfp.__version__}}
      elif op == "load":
        state.clear()
        start = time.perf_counter()
        log_prob, z = build(request["inputs"])
        hessian = jax.jit(jax.vmap(jax.hessian(log_prob)))
        output = hessian(z).block_until_ready()
        first = time.perf_counter() - start
        np.save(request["output"], np.asarray(output))
        state.update(call=lambda: hessian(z).block_until_ready())
        reply = {"first_call_s": first, "dtype": str(output.dtype), "shape": list(output.shape)}
      elif op == "time":
        start = time.perf_counter()
        state["call"]()
        reply = {"seconds": time.perf_counter() - start}
      elif op == "warm_up":
        seconds, delta = _warm_up(state["call"])
        reply = {"seconds": seconds, "peak_rss_delta_mib": delta}
      elif op == "unload":
        state.clear()
        reply = {}
      else:
        raise ValueError(f"unknown op {op!r}")
      print(json.dumps(dict(reply, ok=True)), flush=True)
    except Exception as error:  # pylint: disable=broad-except
      traceback.print_exc(file=sys.stderr)
      message = " ".join(f"{type(error).__name__}: {error}".split())
      print(json.dumps({"ok": False, "error": message[:300]}), flush=True)


if __name__ == "__main__":
  main()
