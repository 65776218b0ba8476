"""Which pullback rule serves which bijector.

A *rule* is a function `rule(bijector, y) -> Pullback` (see `pullback.py`) for one TFP bijector class. Rules are
registered against TFP's own classes, so a trained, stock `tfb.Softplus` needs no rebuilding; the subclasses in
`tfp_hessian.bijectors` find the same rules through their method resolution order.

A *forward rule* `rule(bijector, x) -> Pullback` gives the pullback of `Invert(bijector)` at `x` from the
bijector's forward direction directly. `Invert` prefers it to running the inverse rule backwards: it needs no
point `bijector.forward(x)` to be inverted again, which keeps full precision at the edges of the support.

A subclass inherits its ancestor's rule only if it leaves the ancestor's math alone: a user's `tfb.Softplus`
subclass that overrides `_inverse` gets the autodiff fallback, never a silently wrong analytic rule. A bijector
can also carry its own rule as a `_hessian_pullback(y)` method.
"""

import tensorflow as tf

__all__ = [
    "register",
    "register_forward",
    "register_fallback",
    "lookup",
    "forward_rule",
    "pullback",
    "fallback",
    "has_analytic_rule",
    "analytic_bijectors",
    "validate",
]

_RULES = {}
_FORWARD_RULES = {}
_APPLIES = {}
_VALIDATORS = {}
_FALLBACK = []

# The methods whose override changes a bijector's math (and so voids an inherited rule).
_MATH_METHODS = ("_forward", "_inverse", "_forward_log_det_jacobian", "_inverse_log_det_jacobian")


def register(*bijector_classes, applies=None, validate=None):
  """Decorator: registers `rule(bijector, y) -> Pullback` for the given TFP bijector classes.

  Args:
    *bijector_classes: the TFP classes the rule serves (and their subclasses that keep their math).
    applies: optional `bijector -> bool`; where it is False the bijector gets the fallback instead.
    validate: optional `bijector -> None` that raises, from static information only, if the rule cannot
      serve this bijector; the sweep calls it for every layer before any computation starts.
  """

  def decorate(rule):
    for cls in bijector_classes:
      _RULES[cls] = rule
      if applies is not None:
        _APPLIES[cls] = applies
      if validate is not None:
        _VALIDATORS[cls] = validate
    return rule

  return decorate


def register_forward(*bijector_classes):
  """Decorator: registers `rule(bijector, x) -> Pullback` of `Invert(bijector)` at `x`."""

  def decorate(rule):
    for cls in bijector_classes:
      _FORWARD_RULES[cls] = rule
    return rule

  return decorate


def register_fallback(rule):
  """Sets the rule for bijectors without an analytic one (the per-bijector autodiff rule)."""
  _FALLBACK[:] = [rule]
  return rule


def _find(table, bijector):
  """The entry for the nearest registered ancestor of `bijector`'s class, if the class keeps its math."""
  cls = type(bijector)
  for ancestor in cls.__mro__:
    if ancestor in table:
      keeps_math = all(getattr(cls, m, None) is getattr(ancestor, m, None) for m in _MATH_METHODS)
      return ancestor if keeps_math else None
  return None


def _analytic_rule(bijector):
  own = getattr(bijector, "_hessian_pullback", None)
  if own is not None:
    return lambda _, y: own(y)
  ancestor = _find(_RULES, bijector)
  if ancestor is None or not _APPLIES.get(ancestor, lambda _: True)(bijector):
    return None
  return _RULES[ancestor]


def validate(bijector):
  """Raises if `bijector`'s rule cannot serve it (e.g. a batch-dependent layer); static checks only."""
  ancestor = _find(_VALIDATORS, bijector)
  if ancestor is not None:
    _VALIDATORS[ancestor](bijector)


def has_analytic_rule(bijector):
  """True if `bijector` is served by an analytic rule rather than the autodiff fallback."""
  return _analytic_rule(bijector) is not None


def forward_rule(bijector):
  """The forward rule of `bijector` (for `Invert(bijector)`), or None."""
  ancestor = _find(_FORWARD_RULES, bijector)
  return None if ancestor is None else _FORWARD_RULES[ancestor]


def fallback(bijector, y):
  """The autodiff pullback of `bijector` at `y`, whatever rules it has."""
  if not _FALLBACK:
    raise NotImplementedError(
        f"No Hessian rule for bijector {bijector.name!r} ({type(bijector).__name__}). Implement "
        "`_hessian_pullback(y)` on it, or register a rule with `tfp_hessian.registry.register`.")
  return _FALLBACK[0](bijector, y)


def lookup(bijector):
  """The rule for `bijector`: its analytic rule if it has one, else the autodiff fallback."""
  return _analytic_rule(bijector) or fallback


def pullback(bijector, y):
  """The pullback of `bijector` at points `y` (`[*batch, D]`), by whichever rule serves it."""
  # The name scope puts the bijector's name into the node names a graph-mode error reports; eagerly, an
  # error raised inside (a `validate_args` assertion) is given the bijector's name here.
  with tf.name_scope(f"{bijector.name}_pullback"):
    try:
      return lookup(bijector)(bijector, y)
    except tf.errors.InvalidArgumentError as error:
      raise type(error)(error.node_def, error.op, f"{error.message}\n  raised by bijector {bijector.name!r} "
                        f"({type(bijector).__name__}) at its inverse") from error


def analytic_bijectors():
  """Names of the TFP bijector classes with an analytic rule, sorted."""
  return sorted({cls.__name__.lstrip("_") for cls in _RULES})
