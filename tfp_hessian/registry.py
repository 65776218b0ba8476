"""Which pullback rule serves which bijector.

A *rule* is a function `rule(bijector, y) -> Pullback` (see `pullback.py`) for one TFP bijector class. Rules are
registered against TFP's own classes, so a trained, stock `tfb.Softplus` needs no rebuilding; the subclasses in
`tfp_hessian.bijectors` find the same rules through their method resolution order.

A subclass inherits its ancestor's rule only if it leaves the ancestor's math alone: a user's `tfb.Softplus`
subclass that overrides `_inverse` gets the autodiff fallback, never a silently wrong analytic rule. A bijector
can also carry its own rule as a `_hessian_pullback(y)` method.
"""

import tensorflow as tf

__all__ = ["register", "lookup", "pullback", "has_analytic_rule", "analytic_bijectors"]

_RULES = {}
_FALLBACK = []

# The methods whose override changes a bijector's math (and so voids an inherited rule).
_MATH_METHODS = ("_forward", "_inverse", "_forward_log_det_jacobian", "_inverse_log_det_jacobian")


def register(*bijector_classes):
  """Decorator: registers `rule(bijector, y) -> Pullback` for the given TFP bijector classes."""

  def decorate(rule):
    for cls in bijector_classes:
      _RULES[cls] = rule
    return rule

  return decorate


def register_fallback(rule):
  """Sets the rule for bijectors without an analytic one (the per-bijector autodiff rule)."""
  _FALLBACK[:] = [rule]
  return rule


def _analytic_rule(bijector):
  own = getattr(bijector, "_hessian_pullback", None)
  if own is not None:
    return lambda _, y: own(y)
  cls = type(bijector)
  for ancestor in cls.__mro__:
    rule = _RULES.get(ancestor)
    if rule is None:
      continue
    if all(getattr(cls, m, None) is getattr(ancestor, m, None) for m in _MATH_METHODS):
      return rule
    return None
  return None


def has_analytic_rule(bijector):
  """True if `bijector` is served by an analytic rule rather than the autodiff fallback."""
  return _analytic_rule(bijector) is not None


def lookup(bijector):
  """The rule for `bijector`: its analytic rule if it has one, else the autodiff fallback."""
  rule = _analytic_rule(bijector)
  if rule is not None:
    return rule
  if not _FALLBACK:
    raise NotImplementedError(
        f"No Hessian rule for bijector {bijector.name!r} ({type(bijector).__name__}). Implement "
        "`_hessian_pullback(y)` on it, or register a rule with `tfp_hessian.registry.register`.")
  return _FALLBACK[0]


def pullback(bijector, y):
  """The pullback of `bijector` at points `y` (`[*batch, D]`), by whichever rule serves it."""
  with tf.name_scope(f"{bijector.name}_pullback"):
    return lookup(bijector)(bijector, y)


def analytic_bijectors():
  """Names of the TFP bijector classes with an analytic rule, sorted."""
  return sorted({cls.__name__.lstrip("_") for cls in _RULES})
