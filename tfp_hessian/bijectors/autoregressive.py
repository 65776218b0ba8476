"""Rules for affine coupling (`tfb.RealNVP`) and autoregressive (`tfb.MaskedAutoregressiveFlow`) layers.

Both invert as `x = (y - m(y)) ⊙ exp(-s(y))` with a conditioner `(m, s)`: for MAF the network of all of `y`
(autoregressive, so `∂m/∂y` and `∂s/∂y` are strictly triangular in the network's input order), for RealNVP a
network of the conditioning block only. MAF takes the dense `ConditionedAffinePullback`; RealNVP its block
form `CouplingPullback`, whose conditioner is differentiated with respect to the conditioning block alone. The
conditioner's derivatives come from its kernels for a `tfb.AutoregressiveNetwork` (MAF) or a
`conditioners.DenseShiftAndLogScale` (RealNVP), from nested tapes on the network alone for any other callable.
`Invert` of either (IAF) runs that pullback backwards.

Conditional layers take their condition as TFP does, through the keyword arguments of `inverse`
(`flow.log_prob(z, bijector_kwargs={"conditional_input": c})`): a conditional `AutoregressiveNetwork` and a
`DenseShiftAndLogScale` called with `conditional_input` stay analytic (the condition is a per-point bias of their
layers), and any other conditioner is called with the kwargs under its tapes. The Hessian is with respect to `y`
with the condition held fixed.

Layers built with `bijector_fn` (any elementwise bijector per coordinate, e.g. a spline) get the autodiff
fallback.
"""

import numpy as np
import tensorflow as tf
import tensorflow_probability as tfp
from tensorflow_probability.python.bijectors import masked_autoregressive as maf_lib

from tfp_hessian import conditioners, private_api, registry
from tfp_hessian.pullback import ConditionedAffinePullback, CouplingPullback

tfb = tfp.bijectors


def _shift_and_log_scale_fn(bijector):
  return bijector.parameters.get("shift_and_log_scale_fn")


def _has_shift_and_log_scale_fn(bijector, layout):
  del layout
  return _shift_and_log_scale_fn(bijector) is not None


def _as_pair(params, like):
  """TFP's conditioner output (a `[..., D, 2]` tensor, or a `(shift, log_scale)` pair with None for absent)."""
  if tf.is_tensor(params):
    shift, log_scale = tf.unstack(params, num=2, axis=-1)
  else:
    shift, log_scale = params
  if shift is None and log_scale is None:
    return tf.zeros_like(like), tf.zeros_like(like)
  # An absent half is zero in the other's shape (a condition may give both more points than `like` has).
  return (tf.zeros_like(log_scale) if shift is None else shift), (
      tf.zeros_like(shift) if log_scale is None else log_scale)


def _check_output_shape(bijector, outputs, y):
  """A conditioner whose outputs do not match the event would be silently broadcast: refuse it."""
  expected = y.shape[-1:]
  for name, value in zip(("shift", "log_scale"), outputs):
    if value.shape.rank is not None and not value.shape[-1:].is_compatible_with(expected):
      raise ValueError(
          f"The conditioner of {bijector.name!r} returned {name} of shape {value.shape}; expected its last "
          f"dimension to match the event size of y, {expected}.")


def _made_derivatives(network, y, kwargs):
  """Analytic derivatives of an `AutoregressiveNetwork` with 2 params, outputs reordered to `[m, s]`."""
  if not isinstance(network, maf_lib.AutoregressiveNetwork) or network.params != 2:
    return None
  layers = conditioners.made_layers(network, kwargs.get("conditional_input"))
  if layers is None:
    return None
  kernel, bias, activation = layers[-1]
  # The network's output unit 2i + p is parameter p of coordinate i; reorder the last layer's columns to
  # [shift_0..shift_{D-1}, log_scale_0..log_scale_{D-1}] once, instead of every derivative afterwards.
  d = y.shape[-1]
  order = tf.concat([tf.range(0, 2 * d, 2), tf.range(1, 2 * d, 2)], axis=0)
  layers[-1] = (tf.gather(kernel, order, axis=1), None if bias is None else tf.gather(bias, order, axis=-1),
                activation)
  return conditioners.DenseNetworkDerivatives(layers, y)


def _validate_condition(bijector, layout, kwargs):
  """A conditional `AutoregressiveNetwork` needs `conditional_input` of its size and dtype; checked statically."""
  network = _shift_and_log_scale_fn(bijector)
  if not isinstance(network, maf_lib.AutoregressiveNetwork) or not private_api.made_is_conditional(network):
    return
  what = f"MaskedAutoregressiveFlow {bijector.name!r} (a conditional AutoregressiveNetwork)"
  if "conditional_input" not in kwargs:
    raise ValueError(
        f"{what} needs its condition: pass `bijector_kwargs={{'conditional_input': c}}` (inside a Chain, keyed by "
        f"this bijector's name: `bijector_kwargs={{{bijector.name!r}: {{'conditional_input': c}}}}`); got kwargs "
        f"{sorted(kwargs)}.")
  _check_condition(what, kwargs["conditional_input"], private_api.made_conditional_size(network), network.dtype)


def _check_condition(what, condition, size, dtype):
  condition = tf.convert_to_tensor(condition, dtype_hint=dtype)
  if dtype is not None and condition.dtype != tf.as_dtype(dtype):
    raise TypeError(f"{what} takes `conditional_input` of dtype {tf.as_dtype(dtype).name}; got dtype "
                    f"{condition.dtype.name}.")
  if condition.shape.rank is not None and (condition.shape.rank < 1 or condition.shape[-1] not in (None, size)):
    raise ValueError(f"{what} takes `conditional_input` of shape [*batch, {size}] (or [{size}], one condition for "
                     f"every point); got shape {condition.shape}.")


def _jacobian_triangle(network, size):
  """`"lower"` where the layer's Jacobian `∂x/∂y` is lower triangular, by the masks of its `AutoregressiveNetwork`
  (every output of coordinate `i` reads inputs `j < i` only: TFP's default `input_order="left-to-right"`),
  `"upper"` for the reverse order, None for any other order or network.

  The masks say which inputs each output can reach, whatever values the kernels hold; TFP's own IAF relies on the
  same structure (its `log_prob` inverts the layer by running the network once per coordinate, in that order).
  """
  masks = private_api.made_masks(network) if isinstance(network, maf_lib.AutoregressiveNetwork) else None
  if not masks or size is None:
    return None
  reach = np.eye(size, dtype=bool)  # reach[j, k]: input j reaches unit k of the layer so far
  for mask in masks:
    reach = (reach.astype(np.int64) @ (np.asarray(mask) != 0)) > 0
  if reach.shape[-1] % size:
    return None
  reads = reach.reshape(size, size, -1).any(axis=-1)  # [j, i]: an output of coordinate i reads input j
  if not np.tril(reads).any():
    return "lower"
  if not np.triu(reads).any():
    return "upper"
  return None


@registry.register(tfb.MaskedAutoregressiveFlow, applies=_has_shift_and_log_scale_fn, validate=_validate_condition)
def masked_autoregressive_flow_rule(bijector, y, layout, kwargs):
  del layout
  fn = _shift_and_log_scale_fn(bijector)
  derivatives = _made_derivatives(fn, y, kwargs)
  if derivatives is None:

    def shift_and_log_scale(points):
      pair = _as_pair(fn(points, **kwargs), points)
      _check_output_shape(bijector, pair, points)
      return tf.concat(pair, axis=-1)

    derivatives = conditioners.AutodiffDerivatives(shift_and_log_scale, y)
  return ConditionedAffinePullback(y, derivatives, triangle=_jacobian_triangle(fn, y.shape[-1]))


def _coupling_split(bijector, d):
  """`(conditioning, transformed)` coordinate ranges of a RealNVP layer on events of size `d`."""
  masked = private_api.real_nvp_masked_size(bijector, d)
  if masked < 0:  # A reversed mask conditions on the last |masked| coordinates.
    return slice(d + masked, d), slice(0, d + masked)
  return slice(0, masked), slice(masked, d)


@registry.register(tfb.RealNVP, applies=_has_shift_and_log_scale_fn)
def real_nvp_rule(bijector, y, layout, kwargs):
  del layout
  fn = _shift_and_log_scale_fn(bijector)
  conditioning, transformed = _coupling_split(bijector, y.shape[-1])
  if isinstance(fn, conditioners.DenseShiftAndLogScale) and fn.built_for_output:
    derivatives = conditioners.DenseNetworkDerivatives(fn.dense_layers(**kwargs), y[..., conditioning])
  else:
    units = transformed.stop - transformed.start
    like = y[..., transformed]

    def shift_and_log_scale(points):
      pair = _as_pair(fn(points, units, **kwargs), like)
      _check_output_shape(bijector, pair, like)
      return tf.concat(pair, axis=-1)

    derivatives = conditioners.AutodiffDerivatives(shift_and_log_scale, y[..., conditioning])
  return CouplingPullback(y, conditioning, transformed, derivatives)
