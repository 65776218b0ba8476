"""Hessian–vector products of a flow's log density, matrix-free: `∇²_z log q(z) · v` without the `D × D` Hessian.

Per point, forward-mode differentiation of the reverse-mode gradient (forward-over-reverse):

.. math::

    H v = \\frac{d}{dt} ∇_z \\log q(z + t v) \\Big|_{t=0},

a `tf.autodiff.ForwardAccumulator` (tangent `v`) around a `tf.GradientTape` gradient of `distribution.log_prob`.
It costs a small constant times one `log_prob` per product, whatever the bijectors (neural conditioners included),
and stores only what the gradient does: `O(D)` per point beyond the flow's own activations. The dense sweep
(`log_prob_hessian(...) @ v`) forms the `[*batch, D, D]` Hessian first; see BENCHMARKS.md, "Large D (matrix-free)",
for the measured comparison of forward-over-reverse with reverse-over-reverse and the dense sweep, which is how
this route was chosen.

>>> hv = tfp_hessian.log_prob_hvp(flow, z, v)   # z, v: [*batch, D] -> [*batch, D]
"""

import tensorflow as tf

from tfp_hessian import sweep

__all__ = ["log_prob_hvp"]


def log_prob_hvp(distribution, z, v, name="log_prob_hvp"):
  """Hessian–vector products `∇²_z log q(z) · v` per point, never forming the Hessian.

  Args:
    distribution: a distribution over vectors, as in `tfp_hessian.log_prob_hessian` (any bijector works: the
      products are taken by autodiff of `distribution.log_prob`).
    z: `[*batch, D]` points, of the distribution's dtype.
    v: `[*batch, D]` vectors, one per point, of the same dtype; a shape that broadcasts to the points' shape
      (e.g. `[D]`, one vector for every point) is accepted.
    name: name scope of the ops.

  Returns:
    `[*batch, D]`: `[..., i] = Σ_j ∂² log q(z) / ∂z_i ∂z_j · v_j`, where `*batch` is the broadcast of `z`'s batch
    shape and the distribution's (as for `log_prob_hessian`).

  Raises:
    TypeError: if `z` or `v` is not of the distribution's dtype.
    ValueError: if `z` is not `[*batch, D]`, or `v` does not broadcast to the points' shape `[*batch, D]`.

  >>> flow = tfd.TransformedDistribution(tfd.MultivariateNormalDiag(tf.zeros(3)), tfb.Softplus())
  >>> log_prob_hvp(flow, flow.sample(5), tf.ones([5, 3])).shape
  TensorShape([5, 3])
  """
  with tf.name_scope(name):
    z = sweep._points(distribution, z)  # pylint: disable=protected-access
    v = tangents(z, v)
    # A fresh tensor: TFP caches the inverse of tensors it sampled, which would cut `z` off the tape.
    return forward_over_reverse(distribution, tf.identity(z), v)


def tangents(z, v):
  """`v` as a tensor of `z`'s dtype and shape `[*batch, D]` (broadcast if it must), or a clear error.

  Args:
    z: validated `[*batch, D]` points (from `sweep._points`).
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


def forward_over_reverse(distribution, z, v):
  """`H v` on validated points `z` and tangents `v` of the same shape, `[*batch, D]`.

  Every point must be its own (broadcast to the distribution's batch shape, as `sweep._points` does): the tape
  differentiates the summed log density, which is per point only then.
  """
  with tf.autodiff.ForwardAccumulator(primals=z, tangents=v) as accumulator:
    with tf.GradientTape() as tape:
      tape.watch(z)
      log_prob = distribution.log_prob(z)
    gradient = tape.gradient(log_prob, z, unconnected_gradients=tf.UnconnectedGradients.ZERO)
  return accumulator.jvp(gradient, unconnected_gradients=tf.UnconnectedGradients.ZERO)


def reverse_over_reverse(distribution, z, v):
  """`H v` as `forward_over_reverse`, by differentiating `∇ log q · v` with a second tape (for comparison)."""
  with tf.GradientTape() as outer:
    outer.watch(z)
    with tf.GradientTape() as inner:
      inner.watch(z)
      log_prob = distribution.log_prob(z)
    gradient = inner.gradient(log_prob, z, unconnected_gradients=tf.UnconnectedGradients.ZERO)
    directional = tf.reduce_sum(gradient * v)
  return outer.gradient(directional, z, unconnected_gradients=tf.UnconnectedGradients.ZERO)
