"""Rule for `tfb.BatchNormalization` in inference mode: a coordinatewise affine map.

In inference mode (`training=False`) the bijector's inverse normalises each coordinate by the layer's moving
statistics, and its forward map undoes that:

.. math::

    x = h(y) = γ \\frac{y - μ}{\\sqrt{σ^2 + ε}} + β, \\qquad φ' = \\frac{γ}{\\sqrt{σ^2 + ε}}, \\quad φ'' = 0,
    \\qquad ildj = \\sum_i \\log γ_i - \\tfrac12 \\log(σ_i^2 + ε),

with `μ`, `σ²` the layer's `moving_mean` and `moving_variance`, `γ` its `gamma` (1 without `scale`, though TFP's
own log-det then fails) and `β` its `beta` (0 without `center`). Both directions are linear, so the pullbacks
only scale rows and columns.

In training mode `inverse` normalises by the mean and variance of the batch of points it is given (and updates
the moving statistics): every point's image depends on every other point, so there is no per-point Hessian to
compute. `Invert` does not escape it: TFP's `forward` uses the moving statistics, but a `TransformedDistribution`
takes the log-det of `Invert(bijector)` as `bijector.inverse_log_det_jacobian` at the base points, which in training
mode is the batch variance of those points. Both rules refuse training mode before touching the layer.
"""

import tensorflow as tf
import tensorflow_probability as tfp

from tfp_hessian import registry
from tfp_hessian.pullback import ElementwisePullback

tfb = tfp.bijectors


def _check_inference_mode(bijector, layout=None, kwargs=None):
  del layout, kwargs
  # The constructor's `training` argument, as given (TFP keeps the same object as `_training`). A tensor or
  # variable could turn True later, so only a static False passes.
  training = bijector.parameters["training"]
  static = tf.get_static_value(training)
  if static is None or bool(static):
    raise ValueError(
        f"tfp_hessian computes Hessians of BatchNormalization {bijector.name!r} in inference mode only; it has "
        f"training={training!r}. In training mode its inverse normalises by the statistics of the "
        "batch of points itself, so the points interact and no per-point Hessian exists. Build the bijector "
        "in inference mode on the same layer: `tfb.BatchNormalization(batchnorm_layer=bijector.batchnorm, "
        "training=False)`.")


def _check_event_axis(bijector, rank):
  layer = bijector.batchnorm
  spec = layer.input_spec
  built_rank = None if spec is None else spec.ndim
  if built_rank is not None and built_rank != rank:
    # Keras resolves `axis=-1` against the first input's rank and accepts no other rank afterwards.
    raise ValueError(
        f"The layer of BatchNormalization {bijector.name!r} was built for points of rank {built_rank} and "
        f"Keras accepts no other; got points of rank {rank}. Reshape the points to [N, D].")
  axis = layer.axis
  axis = [axis] if isinstance(axis, int) else list(axis)
  if len(axis) != 1 or axis[0] % rank != rank - 1:
    raise NotImplementedError(
        f"BatchNormalization {bijector.name!r} normalises axis {axis} of points of rank {rank}; tfp_hessian "
        "supports normalisation of the event axis (the last, `axis=-1`) only.")


def _scale(bijector, dtype):
  """`γ / √(σ² + ε)`, shape `[D]`: the derivative of the inverse (the layer's own `rsqrt` form)."""
  layer = bijector.batchnorm
  # `epsilon` is a Python float: `tf.cast` would round it through float32 first (1e-3 by 5e-11).
  epsilon = tf.cast(tf.convert_to_tensor(layer.epsilon, dtype_hint=dtype), dtype)
  scale = tf.math.rsqrt(tf.cast(layer.moving_variance, dtype) + epsilon)
  if layer.scale:
    scale = scale * tf.cast(layer.gamma, dtype)
  return scale


@registry.register(tfb.BatchNormalization, validate=_check_inference_mode)
def batch_normalization_rule(bijector, y, layout, kwargs):
  """`x = γ (y - μ)/√(σ² + ε) + β` per coordinate; refuses training mode (module docstring)."""
  del layout
  _check_inference_mode(bijector)
  _check_event_axis(bijector, y.shape.rank)
  x = bijector.inverse(y, **kwargs)  # Builds the layer on first use, so its statistics exist below.
  ildj = bijector.inverse_log_det_jacobian(y, event_ndims=1, **kwargs)
  return ElementwisePullback(x, ildj, d1=_scale(bijector, y.dtype))


@registry.register_forward(tfb.BatchNormalization)
def batch_normalization_forward_rule(bijector, x, layout, kwargs):
  """`y = (x - β) √(σ² + ε)/γ + μ` per coordinate, the pullback of `Invert(bijector)`."""
  del layout
  _check_inference_mode(bijector)
  _check_event_axis(bijector, x.shape.rank)
  y = bijector.forward(x, **kwargs)
  fldj = bijector.forward_log_det_jacobian(x, event_ndims=1, **kwargs)
  return ElementwisePullback(y, fldj, d1=tf.math.reciprocal(_scale(bijector, x.dtype)))
