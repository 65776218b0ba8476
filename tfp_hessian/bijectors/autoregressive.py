"""Rules for affine coupling (`tfb.RealNVP`) and autoregressive (`tfb.MaskedAutoregressiveFlow`) layers.

Both invert as `x = (y - m(y)) ⊙ exp(-s(y))` with a conditioner `(m, s)`: for MAF the network of all of `y`
(autoregressive, so `∂m/∂y` and `∂s/∂y` are strictly triangular in the network's input order), for RealNVP a
network of the conditioning block only. MAF takes the dense `ConditionedAffinePullback`; RealNVP its block
form `CouplingPullback`, whose conditioner is differentiated with respect to the conditioning block alone. The
conditioner's derivatives come from its kernels for a `tfb.AutoregressiveNetwork` (MAF) or a
`conditioners.DenseShiftAndLogScale` (RealNVP), from nested tapes on the network alone for any other callable.
`Invert` of either (IAF) runs that pullback backwards.

Layers built with `bijector_fn` (any elementwise bijector per coordinate, e.g. a spline) get the autodiff
fallback.
"""

import tensorflow as tf
import tensorflow_probability as tfp

from tfp_hessian import conditioners, registry
from tfp_hessian.pullback import ConditionedAffinePullback, CouplingPullback

tfb = tfp.bijectors


def _shift_and_log_scale_fn(bijector):
  return bijector.parameters.get("shift_and_log_scale_fn")


def _has_shift_and_log_scale_fn(bijector):
  return _shift_and_log_scale_fn(bijector) is not None


def _as_pair(params, like):
  """TFP's conditioner output (a `[..., D, 2]` tensor, or a `(shift, log_scale)` pair with None for absent)."""
  if tf.is_tensor(params):
    shift, log_scale = tf.unstack(params, num=2, axis=-1)
  else:
    shift, log_scale = params
  zeros = tf.zeros_like(like)
  return (zeros if shift is None else shift), (zeros if log_scale is None else log_scale)


def _check_output_shape(bijector, outputs, y):
  """A conditioner whose outputs do not match the event would be silently broadcast: refuse it."""
  expected = y.shape[-1:]
  for name, value in zip(("shift", "log_scale"), outputs):
    if value.shape.rank is not None and not value.shape[-1:].is_compatible_with(expected):
      raise ValueError(
          f"The conditioner of {bijector.name!r} returned {name} of shape {value.shape}; expected its last "
          f"dimension to match the event size of y, {expected}.")


def _made_derivatives(network, y):
  """Analytic derivatives of an `AutoregressiveNetwork` with 2 params, outputs reordered to `[m, s]`."""
  layers = conditioners.made_layers(network)
  if layers is None or network.params != 2:
    return None
  kernel, bias, activation = layers[-1]
  # The network's output unit 2i + p is parameter p of coordinate i; reorder the last layer's columns to
  # [shift_0..shift_{D-1}, log_scale_0..log_scale_{D-1}] once, instead of every derivative afterwards.
  d = y.shape[-1]
  order = tf.concat([tf.range(0, 2 * d, 2), tf.range(1, 2 * d, 2)], axis=0)
  layers[-1] = (tf.gather(kernel, order, axis=1), None if bias is None else tf.gather(bias, order), activation)
  return conditioners.DenseNetworkDerivatives(layers, y)


@registry.register(tfb.MaskedAutoregressiveFlow, applies=_has_shift_and_log_scale_fn)
def masked_autoregressive_flow_rule(bijector, y):
  fn = _shift_and_log_scale_fn(bijector)
  derivatives = _made_derivatives(fn, y)
  if derivatives is None:

    def shift_and_log_scale(points):
      pair = _as_pair(fn(points), points)
      _check_output_shape(bijector, pair, points)
      return tf.concat(pair, axis=-1)

    derivatives = conditioners.AutodiffDerivatives(shift_and_log_scale, y)
  return ConditionedAffinePullback(y, derivatives)


def _coupling_split(bijector, d):
  """`(conditioning, transformed)` coordinate ranges of a RealNVP layer on events of size `d`."""
  masked = bijector._masked_size  # pylint: disable=protected-access
  if masked < 0:  # A reversed mask conditions on the last |masked| coordinates.
    return slice(d + masked, d), slice(0, d + masked)
  return slice(0, masked), slice(masked, d)


@registry.register(tfb.RealNVP, applies=_has_shift_and_log_scale_fn)
def real_nvp_rule(bijector, y):
  fn = _shift_and_log_scale_fn(bijector)
  bijector._cache_input_depth(y)  # pylint: disable=protected-access  # `_masked_size` needs it
  conditioning, transformed = _coupling_split(bijector, y.shape[-1])
  y_c = y[..., conditioning]
  if isinstance(fn, conditioners.DenseShiftAndLogScale) and fn._output is not None:  # pylint: disable=protected-access
    derivatives = conditioners.DenseNetworkDerivatives(fn.dense_layers(), y_c)
  else:
    units = transformed.stop - transformed.start
    like = y[..., transformed]

    def shift_and_log_scale(points):
      pair = _as_pair(fn(points, units), like)
      _check_output_shape(bijector, pair, like)
      return tf.concat(pair, axis=-1)

    derivatives = conditioners.AutodiffDerivatives(shift_and_log_scale, y_c)
  return CouplingPullback(y, conditioning, transformed, derivatives)
