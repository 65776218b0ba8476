"""Batched products with a short contraction: `tf.linalg.matmul` against a broadcast product and a sum.

    python benchmarks/small_products.py [--num-points 1024] [--sizes 2 3 4 5 6 7 8 12 16] [--calls 30]
    python benchmarks/small_products.py --flows conditional_maf:4:1024 maf:4:1024 maf:4:16 [--calls 25]
    python benchmarks/small_products.py --flows elementwise_affine:4:16 --old shared-dots
    python benchmarks/small_products.py --flows research_flow:4:1024 --old fallback-matvec

For each size K, 1024 products `[K, K] × [K, K]` (and `[K, 32] × [32, 32]`, a long contraction, for contrast),
each as a `tf.function` of ten products in a row (so a call's overhead is a tenth of each figure), with and without
XLA (`jit_compile=True`); calls interleaved, medians per product in ms. `tfp_hessian.products.matmul` writes a
product of two batches of matrices as the broadcast form up to `products.SHORT_CONTRACTION` terms.

With `--flows name:D:N ...` (bench flows, float32), the default call `log_prob_hessian` in a `tf.function` as
it is ("new") and traced with `products.SHORT_CONTRACTION = 0` ("old": every product a batched dot; with `--old
shared-dots`, only the products with one matrix shared by every point, as before session 34; with `--old
fallback-matvec`, only the autodiff fallback's quadratic form, as a `tf.linalg.matvec` as before session 36), beside
`log_prob` and forward-over-reverse + XLA, calls interleaved, medians in ms. `--xla` forces the sweeps of both
compiled whole (`execution.forced(True)`), to compare them where the default call keeps the graph.
"""

import argparse
import contextlib
import time

import numpy as np
import tensorflow as tf

import tfp_hessian
from tfp_hessian import execution, products, pullback

import harness  # benchmarks/harness/, beside this script

PRODUCTS_PER_CALL = 10


def _matmul(a, b):
  return tf.linalg.matmul(a, b)


def _broadcast(a, b):
  return tf.reduce_sum(a[..., :, :, tf.newaxis] * b[..., tf.newaxis, :, :], axis=-2)


def _chain(product):
  def chained(a, b):
    c = a
    for _ in range(PRODUCTS_PER_CALL):
      c = product(c, b)
      c = c / (tf.reduce_max(tf.abs(c)) + 1.)  # keep the values bounded (and every product needed)
    return c
  return chained


def _shared_as_dots(matmul):
  """`matmul` but for a product with one operand a single matrix (rank 2), which stays `tf.linalg.matmul`."""
  def rule(a, b, transpose_a=False, transpose_b=False):
    if min(a.shape.rank or 0, b.shape.rank or 0) < 3:
      return tf.linalg.matmul(a, b, transpose_a=transpose_a, transpose_b=transpose_b)
    return matmul(a, b, transpose_a, transpose_b)
  return rule


def _quadratic_form_as_matvec(matrix, vector):
  return tf.reduce_sum(vector * tf.linalg.matvec(matrix, vector))


def _traced(distribution, z, kwargs, xla):
  def call(z):
    with execution.forced(True) if xla else contextlib.nullcontext():
      return tfp_hessian.log_prob_hessian(distribution, z, **kwargs)

  function = tf.function(call, autograph=False)
  function(z)  # traced now, with the products as they are set
  return function


def _whole_calls(cells, calls, rng, old_rule, xla):
  for cell in cells:
    name, dim, num_points = cell.split(":")
    flow = harness.build_flow(name, int(dim), tf.float32)
    z, kwargs = harness.sample_points(flow, int(num_points))
    distribution = flow.distribution
    functions = {"log_prob": tf.function(lambda z: distribution.log_prob(z, **kwargs), autograph=False)}
    default, matmul, quadratic_form = products.SHORT_CONTRACTION, products.matmul, pullback._quadratic_form
    if old_rule == "shared-dots":
      products.matmul = _shared_as_dots(matmul)
    elif old_rule == "fallback-matvec":
      pullback._quadratic_form = _quadratic_form_as_matvec  # pylint: disable=protected-access
    else:
      products.SHORT_CONTRACTION = 0
    try:
      functions["old"] = _traced(distribution, z, kwargs, xla)
    finally:
      products.SHORT_CONTRACTION, products.matmul = default, matmul
      pullback._quadratic_form = quadratic_form  # pylint: disable=protected-access
    functions["new"] = _traced(distribution, z, kwargs, xla)
    functions["fwd_rev_xla"] = harness.METHODS["fwd_rev_xla"].make(distribution, kwargs)
    old, new = functions["old"](z).numpy(), functions["new"](z).numpy()
    ms = {key: 1e3 * seconds for key, seconds in harness.interleaved_medians(functions, z, calls, rng).items()}
    print(f"{name} D={dim} N={num_points}: " + ", ".join(f"{key} {value:.2f} ms" for key, value in ms.items())
          + f"; old/new {ms['old'] / ms['new']:.2f}x; max |new - old| / max |old| "
          f"{np.max(np.abs(new - old)) / np.max(np.abs(old)):.1e}", flush=True)


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--num-points", type=int, default=1024)
  parser.add_argument("--sizes", type=int, nargs="+", default=[2, 3, 4, 5, 6, 7, 8, 12, 16])
  parser.add_argument("--calls", type=int, default=30)
  parser.add_argument("--flows", nargs="+", metavar="NAME:D:N", help="whole calls on bench flows instead")
  parser.add_argument("--old", choices=["dots", "shared-dots", "fallback-matvec"], default="dots",
                      help="with --flows, what 'old' traces as a batched dot: every product, those with a shared "
                           "matrix only, or the autodiff fallback's quadratic form only")
  parser.add_argument("--xla", action="store_true", help="with --flows, both sweeps forced compiled whole")
  args = parser.parse_args()
  rng = np.random.default_rng(0)
  if args.flows:
    _whole_calls(args.flows, args.calls, rng, args.old, args.xla)
    return
  print(f"{args.num_points} products per call, ms per product (median of {args.calls} interleaved calls)")
  print(f"{'shape':>14s} {'matmul':>8s} {'bcast':>8s} {'matmul+XLA':>11s} {'bcast+XLA':>10s}")
  for k in args.sizes:
    for inner in (k, 32):
      a = tf.constant(rng.standard_normal([args.num_points, k, inner]), tf.float32)
      b = tf.constant(rng.standard_normal([args.num_points, inner, inner]), tf.float32)
      functions = {}
      for name, product in (("matmul", _matmul), ("bcast", _broadcast)):
        for xla in (False, True):
          function = tf.function(_chain(product), jit_compile=xla)
          function(a, b).numpy()
          functions[(name, xla)] = function
      times = {key: [] for key in functions}
      for _ in range(args.calls):
        for index in rng.permutation(len(functions)):
          key = list(functions)[index]
          start = time.perf_counter()
          functions[key](a, b).numpy()
          times[key].append(time.perf_counter() - start)
      ms = {key: 1e3 * np.median(value) / PRODUCTS_PER_CALL for key, value in times.items()}
      print(f"{f'[{k},{inner}]x[{inner},{inner}]':>14s} {ms[('matmul', False)]:8.3f} {ms[('bcast', False)]:8.3f} "
            f"{ms[('matmul', True)]:11.3f} {ms[('bcast', True)]:10.3f}", flush=True)


if __name__ == "__main__":
  main()
