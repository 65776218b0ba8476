"""What the sweep's operations cost on this machine at one size: batched products, the same flops as one GEMM with
a shared weight, an elementwise pass, a transpose, and gathers of rows and of columns.

    python benchmarks/product_shapes.py --points 1024 --dim 64

The MAF and coupling pullbacks are laid out from these ratios (`conditioners.py`, docs/performance.md): on a
2-core CPU a `[N, D, D] × [N, D, D]` batched product runs at about half the rate of one `[N·D, D] × [D, D]` GEMM,
an elementwise pass over `[N, D, D]` costs about half a batched product, and a gather of columns several times a
gather of rows. A linear layer's `Mᵀ H M` with `M` shared by every point is two GEMMs and a transpose from D = 96
(`pullback._CONGRUENCE_GEMM_SIZE`; at 1024 points from D = 32). Calls are interleaved, medians reported.
"""

import argparse
import time

import numpy as np
import tensorflow as tf


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--points", type=int, default=1024)
  parser.add_argument("--dim", type=int, default=64)
  parser.add_argument("--rounds", type=int, default=15)
  parser.add_argument("--dtype", default="float32")
  args = parser.parse_args()
  n, d, dtype = args.points, args.dim, tf.as_dtype(args.dtype)
  rng = np.random.default_rng(0)
  a, b = (tf.constant(rng.normal(size=(n, d, d)), dtype) for _ in range(2))
  w = tf.constant(rng.normal(size=(d, d)), dtype)
  source = tf.constant(rng.permutation(d), tf.int32)
  cases = {
      "batched product [N,D,D]x[N,D,D]": (lambda x, y: tf.linalg.matmul(x, y), (a, b)),
      "batched product, shared right operand": (lambda x, y: tf.linalg.matmul(x, y), (a, w)),
      "one GEMM [N*D,D]x[D,D] (tensordot)": (lambda x, y: tf.tensordot(x, y, [[-1], [0]]), (a, w)),
      "elementwise product": (lambda x, y: x * y, (a, b)),
      "transpose": (tf.linalg.matrix_transpose, (a,)),
      "gather rows": (lambda x: tf.gather(x, source, axis=-2), (a,)),
      "gather columns": (lambda x: tf.gather(x, source, axis=-1), (a,)),
      # A linear layer's `Mᵀ H M` with `M` shared (`pullback._congruence`): batched products with a broadcast
      # operand, against two GEMMs and a transpose.
      "congruence M^T H M, batched": (lambda x, y: tf.linalg.matmul(y, tf.linalg.matmul(x, y), adjoint_a=True),
                                      (a, w)),
      "congruence (H M)^T M, tensordots": (
          lambda x, y: tf.tensordot(tf.linalg.matrix_transpose(tf.tensordot(x, y, [[-1], [0]])), y, [[-1], [0]]),
          (a, w)),
  }
  functions = {name: (tf.function(fn), inputs) for name, (fn, inputs) in cases.items()}
  for fn, inputs in functions.values():
    fn(*inputs)
    fn(*inputs)
  seconds = {name: [] for name in functions}
  for _ in range(args.rounds):
    for name in np.random.permutation(list(functions)):
      fn, inputs = functions[name]
      start = time.perf_counter()
      fn(*inputs).numpy()
      seconds[name].append(time.perf_counter() - start)
  flops = 2 * n * d ** 3
  print(f"N = {n}, D = {d}, {dtype.name}; medians of {args.rounds} interleaved calls")
  for name, values in seconds.items():
    median = float(np.median(values))
    rate = f"  ({flops / median / 1e9:.0f} GFLOP/s)" if "product" in name or "GEMM" in name else ""
    print(f"  {name:42s} {median * 1e3:8.2f} ms{rate}")


if __name__ == "__main__":
  main()
