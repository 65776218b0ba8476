"""Hessian–vector products of a flow's log density, matrix-free: `∇²_z log q(z) · v` without the `D × D` Hessian.

Per point, reverse-mode differentiation of the directional derivative of the reverse-mode gradient
(reverse-over-reverse):

.. math::

    H v = ∇_z \\big( ∇_z \\log q(z) \\cdot v \\big),

two nested `tf.GradientTape`s around `distribution.log_prob`. It costs a small constant times one `log_prob` per
product, whatever the bijectors (neural conditioners included), and stores only what a gradient of the gradient
does: the flow's activations and `O(D)` per point, never `[*batch, D, D]`.

Why not forward-over-reverse (a `tf.autodiff.ForwardAccumulator` over the tape gradient), the textbook choice?
It is slower in TensorFlow (every cell of "Large D (matrix-free)" in BENCHMARKS.md, which has the timings:
`python benchmarks/large_d.py`): most ops have no forward-mode rule there, so the accumulator runs their
backward function twice. It also fails inside `tf.function` on flows whose `log_prob` runs a
`tf.while_loop` (an IAF's sequential forward pass): TensorFlow 2.21 raises a `SystemError` while building the tape
gradient under the accumulator. The benchmark's version is in `benchmarks/harness/methods.py`. Against the
dense sweep (`log_prob_hessian(...) @ v`) a product is far cheaper, the more so the larger D (the same
measurements).

Many products at the same points (Lanczos, CG) share one linearization: `hessian_operator` records the gradient
once, on a persistent tape, and each product is then one backward pass of the gradient, cheaper than a
`log_prob_hvp` call (the same measurements).

>>> hv = tfp_hessian.log_prob_hvp(flow, z, v)   # z, v: [*batch, D] -> [*batch, D]
"""

import tensorflow as tf

from tfp_hessian import compiled, sweep, tapes

__all__ = ["hessian_operator", "log_prob_hvp"]


@compiled.when_eager
def log_prob_hvp(distribution, z, v, name="log_prob_hvp", **kwargs):
  """Hessian–vector products `∇²_z log q(z) · v` per point, never forming the Hessian.

  Args:
    distribution: as in `tfp_hessian.log_prob_hessian` (any bijector works: the products are taken by autodiff
      of `distribution.log_prob`).
    z: points, as `distribution.log_prob` takes them (`[*batch, D]` for vector events).
    v: `[*batch, n]` vectors over the flat event (`tfp_hessian.flatten_event`), one per point, of the same
      dtype; a shape that broadcasts to the points' (e.g. `[n]`, one vector for every point) is accepted.
    name: name scope of the ops.
    **kwargs: as `distribution.log_prob` takes them (`bijector_kwargs`, `distribution_kwargs`).

  Returns:
    `[*batch, n]`: `[..., i] = Σ_j ∂² log q(z) / ∂z_i ∂z_j · v_j` over the flat event, where `*batch` is the
    broadcast of `z`'s batch shape and the distribution's (as for `log_prob_hessian`).

  Raises:
    TypeError: if `z` or `v` is not of the distribution's dtype.
    ValueError: if `z` is not of the distribution's events, or `v` does not broadcast to the flat points'
      shape `[*batch, n]`.

  >>> flow = tfd.TransformedDistribution(tfd.MultivariateNormalDiag(tf.zeros(3)), tfb.Softplus())
  >>> log_prob_hvp(flow, flow.sample(5), tf.ones([5, 3])).shape
  TensorShape([5, 3])
  """
  with tf.name_scope(name):
    z, log_prob = sweep.flat_log_prob(distribution, z, kwargs)
    return reverse_over_reverse(log_prob, z, tangents(z, v))


def tangents(z, v):
  """`v` as a tensor of `z`'s dtype and shape `[*batch, D]` (broadcast if it must), or a clear error.

  Args:
    z: validated flat `[*batch, n]` points (from `sweep.flat_log_prob`).
    v: the vectors given by the user.
  """
  dtype = z.dtype
  v = tf.convert_to_tensor(v, dtype_hint=None if hasattr(v, "dtype") else dtype, name="v")
  if v.dtype != dtype:
    raise TypeError(f"`v` must have the points' dtype {dtype.name} (the distribution's); got dtype {v.dtype.name}.")
  expected = z.shape
  if v.shape.rank is None or v.shape.rank < 1:
    raise ValueError(f"`v` must have the points' shape [*batch, D] = {expected}; got shape {v.shape}.")
  try:
    static = tf.broadcast_static_shape(v.shape, expected)
  except ValueError:
    static = None
  if static is None or static.rank != expected.rank or not static.is_compatible_with(expected):
    raise ValueError(f"`v` must have the points' shape [*batch, D] = {expected} (`z` broadcast against the "
                     f"distribution's batch shape), or broadcast to it; got shape {v.shape}.")
  if v.shape.is_fully_defined() and expected.is_fully_defined():
    return v if v.shape == expected else tf.broadcast_to(v, expected)
  return tf.ensure_shape(tf.broadcast_to(v, tf.shape(z)), expected)


@tf.autograph.experimental.do_not_convert  # graph code as it stands (see `compiled.py`)
def hessian_operator(distribution, z, name="hessian_operator", **kwargs):
  """The map `v ↦ ∇²_z log q(z) · v` at fixed points, linearized once for many products.

  `distribution.log_prob` and its gradient run once, here, on a persistent tape; each call of the returned
  function is then one backward pass through the recorded gradient. Works eagerly and inside `tf.function`
  (including inside a `tf.while_loop` body there).

  Args:
    distribution: as in `log_prob_hvp`.
    z: points, as `distribution.log_prob` takes them.
    name: name scope of the ops.
    **kwargs: as `distribution.log_prob` takes them.

  Returns:
    `(points, matvec)`: the validated flat points `[*batch, n]` (broadcast against the distribution's batch
    shape), and a function taking `v` of the flat points' shape and dtype to `H v`, `[*batch, n]`.
  """
  with tf.name_scope(name):
    z, log_prob_fn = sweep.flat_log_prob(distribution, z, kwargs)
    product = tapes.linearized_hessian_vector_product(log_prob_fn, z)
  return z, lambda v: product(tangents(z, v))


def reverse_over_reverse(log_prob_fn, z, v):
  """`H v` at flat points `z` and tangents `v`, `[*batch, n]`, by differentiating `∇ log q · v` again.

  Args:
    log_prob_fn: `z [*batch, n] -> log q [*batch]` (`sweep.flat_log_prob`).
    z: `[*batch, n]`, each point its own (broadcast against the distribution's batch shape).
    v: `[*batch, n]`.
  """
  return tapes.hessian_vector_product(log_prob_fn, z, v)
