"""The second-order backward sweep: value, gradient and Hessian of a flow's log density.

A flow `TransformedDistribution(base, f)` with inverse `h = f⁻¹` written as a chain of layers,
`y_K = z`, `y_{l-1} = h_l(y_l)`, `ω = y_0`, has `log q(z) = log q0(ω) + Σ_l ildj_l(y_l)`. The sweep

1. inverts `z` through the layers, keeping every layer's `Pullback` at its point `y_l`;
2. takes `(log q0, ∇ log q0, ∇² log q0)` of the base at `ω` (`bases.py`);
3. pulls them back, base side first, through every layer:

.. math::

    g_l = J_l^T g_{l-1} + ∇ ildj_l, \\qquad
    H_l = J_l^T H_{l-1} J_l + \\sum_k (g_{l-1})_k ∇^2 h_{l,k} + ∇^2 ildj_l, \\qquad J_l = ∂h_l/∂y(y_l).

`(g_K, H_K)` are the gradient and Hessian of `log q` at `z`. Which structured map each layer applies is the
registry's business (`registry.py`); the sweep only composes them.
"""

import collections

import numpy as np
import tensorflow as tf
import tensorflow_probability as tfp
from tensorflow_probability.python.distributions import transformed_distribution as td_lib

from tfp_hessian import bases, registry
from tfp_hessian.bijectors import autodiff

tfd = tfp.distributions

__all__ = ["LogProbDerivatives", "log_prob_and_derivatives", "log_prob_hessian"]

# TFP builds this private base (not the public subclass) when a member is not a CompositeTensor.
_TRANSFORMED = td_lib._TransformedDistribution  # pylint: disable=protected-access

LogProbDerivatives = collections.namedtuple("LogProbDerivatives", ["log_prob", "gradient", "hessian"])
LogProbDerivatives.__doc__ = """Value `[*batch]`, gradient `[*batch, D]` and Hessian `[*batch, D, D]` of log q(z)."""


def _unwrap(distribution):
  """`(bijectors, base)`: the flow's bijectors from the `z` side, and the base its sweep starts from."""
  bijectors = []
  while isinstance(distribution, _TRANSFORMED) and not bases.has_closed_form(distribution):
    bijectors.append(distribution.bijector)
    distribution = distribution.distribution
  return bijectors, distribution


def _event_size(distribution):
  if not isinstance(distribution, tfd.Distribution):
    raise TypeError(f"`distribution` must be a tfp.distributions.Distribution; got {type(distribution).__name__}.")
  event_shape = distribution.event_shape
  if not isinstance(event_shape, tf.TensorShape) or event_shape.rank != 1 or event_shape[0] is None:
    raise ValueError(
        "tfp_hessian supports distributions over vectors (static event shape [D]); "
        f"{distribution.name!r} has event shape {event_shape}. Wrap a scalar base in "
        "`tfd.Independent(..., reinterpreted_batch_ndims=1)` or `tfd.Sample(..., D)`.")
  return int(event_shape[0])


def _check_structure(distribution, size):
  """Raises before any computation if a layer or the base is outside what the sweep supports."""
  bijectors, base = _unwrap(distribution)
  event = tf.TensorShape([size])
  for bijector in bijectors:
    registry.validate(bijector)
    min_ndims = bijector.forward_min_event_ndims
    if not isinstance(min_ndims, (int, np.integer)) or min_ndims > 1:
      raise NotImplementedError(
          f"Bijector {bijector.name!r} ({type(bijector).__name__}) acts on events of rank "
          f"{min_ndims}; tfp_hessian supports bijectors of vector events (rank 0 or 1) only.")
    if bijector.inverse_event_shape(event) != event:
      raise NotImplementedError(
          f"Bijector {bijector.name!r} ({type(bijector).__name__}) changes the event shape "
          f"{event} to {bijector.inverse_event_shape(event)}; tfp_hessian supports shape-preserving "
          "bijectors of vector events only.")
  _event_size(base)


def check_distribution(distribution):
  """The event size D of a distribution the sweep supports, or a clear error before any computation."""
  size = _event_size(distribution)
  dtype = tf.as_dtype(distribution.dtype)
  if dtype not in (tf.float32, tf.float64):
    raise TypeError(f"tfp_hessian supports float32 and float64 distributions; {distribution.name!r} has dtype "
                    f"{dtype.name}.")
  _check_structure(distribution, size)
  return size


def _points(distribution, z):
  """`z` as a tensor of the distribution's dtype and shape `[*batch, D]`, or a clear error."""
  size = check_distribution(distribution)
  dtype = tf.as_dtype(distribution.dtype)
  # Arrays and tensors keep their own dtype (a hint would silently cast float64, int and bool arrays); only
  # Python numbers and lists, which state none, take the distribution's.
  z = tf.convert_to_tensor(z, dtype_hint=None if hasattr(z, "dtype") else dtype, name="z")
  if not z.dtype.is_floating:
    raise TypeError(f"`z` must be a floating-point tensor of dtype {dtype.name}; got dtype {z.dtype.name}.")
  if z.dtype != dtype:
    raise TypeError(f"`z` has dtype {z.dtype.name} but the distribution has dtype {dtype.name}.")
  if z.shape.rank is None or z.shape.rank < 1:
    raise ValueError(f"`z` must have shape [*batch, D] with D = {size}; got shape {z.shape}.")
  if z.shape[-1] is not None and z.shape[-1] != size:
    raise ValueError(f"`z` must have event size D = {size} (the distribution's event shape); got shape "
                     f"{z.shape}, event size {z.shape[-1]}.")
  z = tf.ensure_shape(z, z.shape[:-1].concatenate([size]))
  return _broadcast_to_batch(distribution, z)


def _broadcast_to_batch(distribution, z):
  """`z` broadcast to `[*batch, D]`, `*batch` the broadcast of its batch shape and the distribution's.

  The autodiff paths (fallback layers, bases without a closed form) differentiate sums over the points, which
  gives per-point derivatives only if every point is its own: a point shared by several batch members of the
  distribution would collect all their derivatives. So every point is made its own before the sweep.
  """
  batch = z.shape[:-1]
  try:
    static = tf.broadcast_static_shape(batch, distribution.batch_shape)
  except ValueError:
    raise ValueError(f"`z` of shape {z.shape} has batch shape {batch}, which does not broadcast against "
                     f"the distribution's batch shape {distribution.batch_shape}.") from None
  if static.is_fully_defined() and batch.is_fully_defined():
    if static == batch:
      return z
    return tf.broadcast_to(z, static.concatenate(z.shape[-1:]))
  shape = tf.broadcast_dynamic_shape(tf.shape(z)[:-1], distribution.batch_shape_tensor())
  return tf.ensure_shape(tf.broadcast_to(z, tf.concat([shape, tf.shape(z)[-1:]], 0)),
                         static.concatenate(z.shape[-1:]))


def log_prob_and_derivatives(distribution, z, name="log_prob_and_derivatives"):
  """Value, gradient and Hessian of `distribution.log_prob` at `z`, from one sweep.

  Args:
    distribution: a `tfd.TransformedDistribution` (stock or `tfp_hessian.TransformedDistribution`, nested
      ones included) over vectors, or any distribution with event shape `[D]`.
    z: `[*batch, D]` points, of the distribution's dtype.
    name: name scope of the ops.

  Returns:
    `LogProbDerivatives(log_prob [*batch], gradient [*batch, D], hessian [*batch, D, D])`, where `*batch` is
    the broadcast of `z`'s batch shape and the distribution's. The Hessian is exactly symmetric.

  Points outside the flow's support give NaN or inf, as `distribution.log_prob` does; with `validate_args=True`
  on the offending bijector, TFP's `InvalidArgumentError` is raised instead.
  """
  with tf.name_scope(name):
    z = _points(distribution, z)
    # A fresh tensor: TFP caches the inverse of tensors it sampled, and nothing of ours may be cut off from `z`.
    return sweep(distribution, tf.identity(z))


def sweep(distribution, z):
  """The sweep itself, on validated points `z`.

  TFP's bijector caches apply: where `z` came out of `distribution`'s own forward pass, every layer's inverse
  is looked up, not recomputed (so an IAF's sequential inverse is never run). Values are then exact, but the
  cached inverses are constants to autodiff: differentiate `log_prob_and_derivatives`, not this.
  """
  bijectors, base = _unwrap(distribution)
  # Before any layer runs: the dense autodiff layers' [*batch, D + 1, D, D] tensors against the memory limit.
  for bijector in bijectors:
    autodiff.check_dense_memory(bijector, z.shape[:-1], z.shape[-1], z.dtype)
  y = z
  pullbacks = []
  for bijector in bijectors:
    pullbacks.append(registry.pullback(bijector, y))
    y = pullbacks[-1].x
  log_prob, grad, hess = bases.log_prob_derivatives(base, y)
  for pullback in reversed(pullbacks):
    grad, hess = pullback(grad, hess)
    log_prob = log_prob + pullback.ildj
  hess = 0.5 * (hess + tf.linalg.matrix_transpose(hess))
  return LogProbDerivatives(log_prob, grad, hess)


def log_prob_hessian(distribution, z, name="log_prob_hessian"):
  """The Hessian of `distribution.log_prob` with respect to `z`, per point.

  Args:
    distribution: as in `log_prob_and_derivatives`.
    z: `[*batch, D]` points.
    name: name scope of the ops.

  Returns:
    `[*batch, D, D]`: `[..., i, j] = ∂² log q(z) / ∂z_i ∂z_j`, exactly symmetric.

  >>> flow = tfd.TransformedDistribution(tfd.MultivariateNormalDiag(tf.zeros(3)), tfb.Softplus())
  >>> log_prob_hessian(flow, flow.sample(5)).shape
  TensorShape([5, 3, 3])
  """
  return log_prob_and_derivatives(distribution, z, name=name).hessian
