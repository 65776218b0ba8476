"""What the pieces of a factored MAF layer's pullback cost alone, at N = 1024 points, D = 128, H = 64, float32.

    python benchmarks/pass_costs.py

Each piece is its own `tf.function` on random tensors of the layer's shapes (`H` the incoming Hessians
`[N, D, D]`, `p`, `tl` the `[N, D, H]` factors, `W` a shared `[D, H]` kernel); medians of 15 interleaved calls.
The "passes" over `[N, D, D]` (scaling, transpose, gathers, sums) are set beside the products and a plain copy.
"""
import time

import numpy as np
import tensorflow as tf

N, D, H = 1024, 128, 64
r = np.random.default_rng(0)
f32 = lambda *s: tf.constant(r.normal(size=s).astype(np.float32))
hess, p, tl, a, W = f32(N, D, D), f32(N, D, H), f32(N, D, H), f32(N, D), f32(D, H)
h2, h3, h4 = f32(N, D, D), f32(N, D, D), f32(N, D, D)
PERMUTATION = tf.constant(r.permutation(D), tf.int32)
ops = {
  "H*outer(a,a)": lambda: hess * (a[..., :, None] * a[..., None, :]),
  "H*a_col*a_row": lambda: hess * a[..., :, None] * a[..., None, :],
  "transpose": lambda: tf.linalg.matrix_transpose(hess),
  "H@p": lambda: tf.linalg.matmul(hess, p),
  "p@tlT": lambda: tf.linalg.matmul(p, tl, transpose_b=True),
  "[p,tl]@[tl,p]T": lambda: tf.linalg.matmul(tf.concat([p, tl], -1), tf.concat([tl, p], -1), transpose_b=True),
  "concat2": lambda: tf.concat([p, tl], -1),
  "GEMM tensordot p W^T": lambda: tf.tensordot(p, W, [[-1], [1]]),
  "AddN5": lambda: tf.add_n([hess, h2, h3, h4, hess]),
  "AddN3": lambda: tf.add_n([hess, h2, h3]),
  "gather rows": lambda: tf.gather(hess, PERMUTATION, axis=-2),
  # PermutationPullback._permute: rows, transpose, rows.
  "permutation pullback": lambda: tf.gather(tf.linalg.matrix_transpose(tf.gather(hess, PERMUTATION, axis=-2)),
                                            PERMUTATION, axis=-2),
  "copy (hess+0)": lambda: hess + 0.,
}
fns = {k: tf.function(v) for k, v in ops.items()}
for f in fns.values(): f(); f()
times = {k: [] for k in fns}
for _ in range(15):
  for k, f in fns.items():
    t = time.perf_counter(); f().numpy(); times[k].append(time.perf_counter() - t)
for k, v in times.items(): print(f"{k:24s} {1e3*np.median(v):8.1f} ms")
