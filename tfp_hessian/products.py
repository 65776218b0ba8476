"""Batched matrix products of the pullbacks, in the form that runs fastest for their shapes.

XLA on CPU runs a batched dot whose contraction is short (`K` = 4 to 7: the `[N, D, D]` Jacobians and Hessians of
a flow at small D) as a loop of tiny products, 6–16× slower than the same product written as a broadcast
multiplication and a sum, which it fuses into one vectorised loop: per 1024 products, 3.0 ms against 0.22 ms at
`[4, 4] × [4, 4]`, 3.8 against 0.58 ms at `[7, 7]`; from `K = 8` the dot is no longer pathological (0.59 against
0.37 ms), and at `K = 32` it is the faster (`python benchmarks/small_products.py`). A 4-layer conditional MAF at
D = 4 and 1024 points spent 14 of its 17 ms in six such dots. TensorFlow's own executor runs the batched dot
faster (0.51 against 0.86 ms at `[4, 4]`), but the sweeps it runs are those XLA does not compile
(`execution.py`), and there these products are a small part of the call.

A batch of matrices times one matrix shared by every point (a linear layer's `Mᵀ H M`) with a short contraction
takes the broadcast form too. As traced, TensorFlow runs it as a oneDNN batched product with a broadcast operand,
whose cost at these sizes is its setup: in the 4-layer elementwise + affine flow at D = 2 and 16 points, where the
pull-back is not compiled, its eight such products were 74% of the call's op time (`python benchmarks/op_profile.py
elementwise_affine 2 16`); in the broadcast form the whole call ran 1.7× as fast at D = 2 and 4 (16 points),
1.12× and 1.08× at 64 and 1024 points of D = 4 (compiled pull-back), and unchanged elsewhere (`python
benchmarks/small_products.py --flows elementwise_affine:2:16 elementwise_affine:4:16 elementwise_affine:4:64
elementwise_affine:4:1024 …`, BENCHMARKS.md session 34).

Since session 35 that flow is compiled whole at D ≤ 16, where XLA would have made a GEMM of such a product; there
the broadcast form ran level with it, 0.98–1.07× (D = 2 and 4, 16 and 1024 points; two identical traces at D = 16,
whose contraction is too long for the rule, differed by 1.05×: `python benchmarks/small_products.py --flows
elementwise_affine:2:16 elementwise_affine:4:16 elementwise_affine:2:1024 elementwise_affine:4:1024
elementwise_affine:16:16 --old shared-dots --calls 41`). It stays for the flows kept in the graph at these sizes
(the research flow's affine layer).
"""

import tensorflow as tf

__all__ = ["matmul"]

# The longest contraction written as a broadcast product and a sum (measured: `benchmarks/small_products.py`).
SHORT_CONTRACTION = 7


def matmul(a, b, transpose_a=False, transpose_b=False):
  """`op(a) @ op(b)`, batch dimensions broadcast as `tf.linalg.matmul` broadcasts them; `op` transposes the last
  two axes where asked.

  A product with a contraction of at most `SHORT_CONTRACTION` terms, known when traced, of two batches of matrices
  or of a batch (rank 3 or more) and one matrix (rank 2), is one broadcast product and a sum over its axis (no
  transpose is formed; the module's docstring says why); anything else is `tf.linalg.matmul` (a longer contraction
  with a shared matrix keeps the GEMM XLA makes of it, and TensorFlow's executor does not materialise a product
  `K` times the size of the result).
  """
  k = a.shape[-2] if transpose_a else a.shape[-1]
  ranks = sorted([a.shape.rank or 0, b.shape.rank or 0])
  if k is None or k > SHORT_CONTRACTION or ranks[0] < 2 or ranks[1] < 3:
    return tf.linalg.matmul(a, b, transpose_a=transpose_a, transpose_b=transpose_b)
  if transpose_a and transpose_b:
    a, transpose_a = tf.linalg.matrix_transpose(a), False
  if transpose_a:  # a: [..., k, i], b: [..., k, j]
    return tf.reduce_sum(a[..., :, :, tf.newaxis] * b[..., :, tf.newaxis, :], axis=-3)
  if transpose_b:  # a: [..., i, k], b: [..., j, k]
    return tf.reduce_sum(a[..., :, tf.newaxis, :] * b[..., tf.newaxis, :, :], axis=-1)
  return tf.reduce_sum(a[..., :, :, tf.newaxis] * b[..., tf.newaxis, :, :], axis=-2)
