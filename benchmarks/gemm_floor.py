"""How close the MAF sweep is to the floor of its own matrix products (issue #3's 3x target).

At D = H (the benchmark's MAF: D = 64, hidden layers of 64) the Jacobian of an autoregressive layer has no
zero blocks, and the dense pullback does 8 `[N, D, D] x [N, D, D]` products' worth of work per layer
(the conditioner's forward Jacobian: 3, `J^T H J`: 2, `S^T (...)`: 1, the two hidden layers' curvature: 2).
This script times, side by side in one process and interleaved call by call:

- `gemms`: exactly those `8 * layers` batched products in one `tf.function` and nothing else (two independent
  chains, so two may run at once, as in the sweep);
- `log_prob`: the flow's `log_prob` (the inverse pass that any sweep also runs);
- `ours`: `log_prob_hessian`;
- `tapes`: nested `GradientTape` + `batch_jacobian` (issue #3's reference).

    python benchmarks/gemm_floor.py [--dim 64] [--dtype float32] [--rounds 40]

It prints the medians and the ratio `tapes / (gemms + log_prob)`: roughly the most a dense per-layer pullback
could gain over nested tapes with TF's batched matmul on this machine (it must do those products and invert the
flow; the two could overlap only where the products of one layer wait for nothing of the inverse pass).
"""

import argparse
import time

import numpy as np
import tensorflow as tf

import harness  # benchmarks/harness/, beside this script


def _gemm_chains(num_products, shape, dtype):
  """A `tf.function` of `num_products` batched `[N, D, D]` products in two independent chains.

  Two chains, so that TF's executor may run two products at once on two cores, as it does in the sweep (where a
  layer's independent products overlap); `b` is scaled by `1/sqrt(D)`, so nothing overflows without an
  elementwise op between the products.
  """

  @tf.function(autograph=False)
  def chains(a, b):
    left, right = a, tf.identity(a)
    for _ in range(num_products // 2):
      left, right = tf.linalg.matmul(left, b), tf.linalg.matmul(right, b)
    return left, right

  return chains


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--dim", type=int, default=64)
  parser.add_argument("--dtype", default="float32", choices=["float32", "float64"])
  parser.add_argument("--num-points", type=int, default=16)
  parser.add_argument("--rounds", type=int, default=40)
  args = parser.parse_args()
  dtype = tf.as_dtype(args.dtype)
  flow = harness.build_flow("maf", args.dim, dtype)
  z = flow.distribution.sample(args.num_points, seed=1)
  products = 8 * harness.flows.NUM_LAYERS
  shape = [args.num_points, args.dim, args.dim]
  a = tf.random.normal(shape, dtype=dtype)
  b = tf.random.normal(shape, dtype=dtype) / np.sqrt(args.dim).astype(dtype.as_numpy_dtype)
  gemms = _gemm_chains(products, shape, dtype)
  calls = {
      "gemms": lambda: gemms(a, b),
      "log_prob": lambda f=harness.METHODS["log_prob"].make(flow.distribution, {}): f(z),
      "ours": lambda f=harness.METHODS["ours"].make(flow.distribution, {}): f(z),
      "tapes": lambda f=harness.METHODS["tapes"].make(flow.distribution, {}): f(z),
  }
  for call in calls.values():
    for _ in range(3):
      call()
  times = {name: [] for name in calls}
  rng = np.random.default_rng(0)
  for _ in range(args.rounds):
    for name in rng.permutation(list(calls)):
      start = time.perf_counter()
      calls[name]()
      times[name].append(time.perf_counter() - start)
  median = {name: 1e3 * np.median(values) for name, values in times.items()}
  print(f"MAF, {harness.flows.NUM_LAYERS} layers, D = H = {args.dim}, N = {args.num_points}, {args.dtype}; "
        f"median ms over {args.rounds} interleaved rounds")
  print(f"  {products} batched [{args.num_points}, {args.dim}, {args.dim}] products alone: {median['gemms']:.2f}")
  for name in ("log_prob", "ours", "tapes"):
    print(f"  {name}: {median[name]:.2f}")
  print(f"  tapes / ours = {median['tapes'] / median['ours']:.2f}")
  print(f"  tapes / (products + log_prob) = {median['tapes'] / (median['gemms'] + median['log_prob']):.2f}"
        "  (the most a dense per-layer pullback could reach here)")


if __name__ == "__main__":
  main()
