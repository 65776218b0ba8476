"""Rule for `tfb.Chain`: its bijectors' pullbacks, composed."""

import tensorflow as tf
from tensorflow_probability.python.bijectors import chain as chain_lib

from tfp_hessian import registry
from tfp_hessian.pullback import ComposedPullback, ElementwisePullback


# `_Chain` is the base of `tfb.Chain` that TFP builds when a member is not a CompositeTensor.
def _validate_members(bijector):
  for member in bijector.bijectors:
    registry.validate(member)


@registry.register(chain_lib._Chain, validate=_validate_members)  # pylint: disable=protected-access
def chain_rule(bijector, y):
  # `Chain([b1, b2]).inverse(y) = b2.inverse(b1.inverse(y))`: the first bijector sits on the `y` side.
  layers = []
  for member in bijector.bijectors:
    layers.append(registry.pullback(member, y))
    y = layers[-1].x
  if not layers:  # An empty chain is the identity.
    return ElementwisePullback(y, tf.zeros([], y.dtype))
  return ComposedPullback(layers)
