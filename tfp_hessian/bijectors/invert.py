"""Rule for `tfb.Invert(b)`: the pullback of `b` (at `b.forward(y)`), run backwards."""

import tensorflow_probability as tfp
from tensorflow_probability.python.bijectors import invert as invert_lib

from tfp_hessian import registry
from tfp_hessian.pullback import InvertedPullback

tfb = tfp.bijectors


# `_Invert` is the base of `tfb.Invert` that TFP builds when the inner bijector is not a CompositeTensor.
@registry.register(invert_lib._Invert)  # pylint: disable=protected-access
def invert_rule(bijector, y):
  inner = bijector.bijector
  v = inner.forward(y)
  return InvertedPullback(registry.pullback(inner, v), v)
