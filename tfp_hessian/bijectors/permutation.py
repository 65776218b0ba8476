"""Rule for `tfb.Permute` along the event axis: derivatives are gathered, never multiplied."""

import tensorflow as tf
import tensorflow_probability as tfp

from tfp_hessian import registry
from tfp_hessian.pullback import PermutationPullback

tfb = tfp.bijectors


@registry.register(tfb.Permute)
def permute_rule(bijector, y):
  axis = tf.get_static_value(tf.convert_to_tensor(bijector.axis))
  if axis is None or int(axis) != -1:
    raise NotImplementedError(
        f"tfp_hessian supports Permute along the event axis (axis=-1) only; bijector {bijector.name!r} has "
        f"axis={bijector.axis}.")
  source = tf.math.invert_permutation(tf.convert_to_tensor(bijector.permutation))
  return PermutationPullback(bijector.inverse(y), tf.zeros([], y.dtype), source=source)
