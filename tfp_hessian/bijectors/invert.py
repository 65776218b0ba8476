"""Rule for `tfb.Invert(b)`, whose inverse is `b.forward`.

In order of preference:

- `Invert(Chain([b_1, …, b_n]))` is `Chain([Invert(b_n), …, Invert(b_1)])`, and each member is inverted alone;
- `Invert(Invert(c))` is `c`;
- `b`'s forward rule, where it has one: derivatives of `b.forward` at the point itself, exact to the last digit
  at the edges of the support;
- `b`'s own pullback, taken at `v = b.forward(y)` and run backwards (`InvertedPullback`): exact, but at a
  rounded `v` where the support ends;
- with none of these, `Invert(b)` is served by the autodiff fallback.
"""

import tensorflow as tf
import tensorflow_probability as tfp
from tensorflow_probability.python.bijectors import chain as chain_lib
from tensorflow_probability.python.bijectors import invert as invert_lib

from tfp_hessian import registry
from tfp_hessian.pullback import ComposedPullback, ElementwisePullback, InvertedPullback

tfb = tfp.bijectors

# TFP builds these private bases (not the public subclasses) when a member is not a CompositeTensor.
_CHAIN = chain_lib._Chain  # pylint: disable=protected-access
_INVERT = invert_lib._Invert  # pylint: disable=protected-access


def _invertible_analytically(bijector):
  # Chains and double inversions are structure: their members find their own rules (or fallbacks).
  if isinstance(bijector, (_CHAIN, _INVERT)):
    return True
  return registry.forward_rule(bijector) is not None or registry.has_analytic_rule(bijector)


def inverted_pullback(bijector, y):
  """The pullback of `Invert(bijector)` at `y`."""
  if isinstance(bijector, _CHAIN):
    layers = []
    for member in reversed(bijector.bijectors):
      layers.append(inverted_pullback(member, y))
      y = layers[-1].x
    return ComposedPullback(layers) if layers else ElementwisePullback(y, tf.zeros([], y.dtype))
  if isinstance(bijector, _INVERT):
    return registry.pullback(bijector.bijector, y)
  rule = registry.forward_rule(bijector)
  if rule is not None:
    return rule(bijector, y)
  if registry.has_analytic_rule(bijector):
    v = bijector.forward(y)
    return InvertedPullback(registry.pullback(bijector, v), v)
  return registry.fallback(tfb.Invert(bijector), y)


def _inner_invertible_analytically(bijector):
  return _invertible_analytically(bijector.bijector)


def _validate_inner(bijector):
  registry.validate(bijector.bijector)


@registry.register(_INVERT, applies=_inner_invertible_analytically, validate=_validate_inner)
def invert_rule(bijector, y):
  return inverted_pullback(bijector.bijector, y)
