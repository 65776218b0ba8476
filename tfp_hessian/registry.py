"""Which pullback rule serves which bijector.

A *rule* is a function `rule(bijector, y, layout, kwargs) -> Pullback` (see `pullback.py`) for one TFP bijector
class: `y` the points (a tensor or structure of tensors of the event layout `layout`, `events.py`) and `kwargs`
the keyword arguments `bijector.inverse` takes (a condition). Rules are registered against TFP's own classes, so
a trained, stock `tfb.Softplus` needs no rebuilding; the subclasses in `tfp_hessian.bijectors` find the same rules
through their method resolution order.

Each rule says which events it serves (`events`):

- `"vector"`: one vector per point, `[*batch, D]`: coupling, autoregressive and matrix layers;
- `"coordinatewise"`: one tensor of any event rank: bijectors acting on each coordinate alone;
- `"any"`: any layout, structures included: index bookkeeping, `JointMap`, `Chain`, `Invert`.

A bijector applied to an event its rule does not serve (a matrix layer on matrix events), or without a rule,
gets the autodiff fallback: exact, at the cost of nested tapes on that layer alone.

A *forward rule* `forward(bijector, x, layout, kwargs) -> Pullback` gives the pullback of `Invert(bijector)` at
`x` from the bijector's forward direction directly. `Invert` prefers it to running the inverse rule backwards: it
needs no point `bijector.forward(x)` to be inverted again, which keeps full precision at the edges of the support.

Where `y` came out of `bijector.forward(x)` and TFP's cache still holds `x` (the sampling pass; a layer below
`Invert(b)` equal to `b`), a bijector with a forward rule is served from `x`, not `y`: the forward rule's terms
at `x`, inverted (`Pullback.inverted`). `x` is exact where `y` is its rounding, which next to the edge of the
bijector's range leaves its inverse's derivatives only `ε / distance to the edge`; and a layer followed by its
own inverse then has both layers' derivatives at the same `x`, so they cancel as nested tapes' do. A bijector
the fallback serves is served from `x` the same way, by the fallback's forward counterpart
(`register_fallback_forward`: for a coordinatewise bijector, autodiff of `bijector.forward` at `x`, inverted),
except `Invert(b)`: its forward is `b.inverse`, which TFP answers from `b`'s cache in a round trip `b⁻¹ ∘ b`,
so its cached "preimage" may be the rounded side. Where the cache makes a stretch of layers the identity
outright (a layer's `x` is the tensor an earlier one took), the stretch is left out of the composition
(`pullbacks`), wherever its ends sit: the walk goes through a composition whose rule names its members
(`Rule.members`: a nested `Chain`, `Invert(Chain(…))`) member by member.

A subclass inherits its ancestor's rule only if it leaves the ancestor's math alone: a user's `tfb.Softplus`
subclass that overrides `_inverse` gets the autodiff fallback, never a silently wrong analytic rule. A bijector
of vector events can also carry its own rule as a `_hessian_pullback(y, **kwargs)` method.
"""

import contextlib
import dataclasses
from typing import Callable, Optional

import tensorflow as tf

from tfp_hessian import private_api
from tfp_hessian.events import EventLayout

__all__ = [
    "Rule",
    "register",
    "register_forward",
    "register_fallback",
    "register_fallback_forward",
    "lookup",
    "forward_rule",
    "pullback",
    "pullbacks",
    "fallback",
    "has_analytic_rule",
    "analytic_bijectors",
    "validate",
]

_EVENTS = ("vector", "coordinatewise", "any")


@dataclasses.dataclass(frozen=True)
class Rule:
  """How one bijector class is served.

  Attributes:
    pullback: `(bijector, y, layout, kwargs) -> Pullback` at points `y`; None if only `forward` is known.
    events: which event layouts `pullback` serves: "vector", "coordinatewise" or "any" (module docstring).
    forward: `(bijector, x, layout, kwargs) -> Pullback` of `Invert(bijector)` at `x`, or None.
    applies: `(bijector, layout) -> bool`; where False the bijector gets the fallback instead. None: always.
    validate: `(bijector, layout, kwargs) -> None`, raising from static information only if the rule cannot
      serve this bijector at this event with these kwargs; the sweep calls it for every layer before any runs.
    members: `(bijector, kwargs) -> [(member, its kwargs), …]` from the `y` side, or None: for a composition
      whose pullback is its members' composed (`pullbacks`), the members a walk takes in its place, so that it
      sees the identity stretches TFP's cache makes across the composition's boundary. None: never one.
  """

  pullback: Optional[Callable] = None
  events: str = "vector"
  forward: Optional[Callable] = None
  applies: Optional[Callable] = None
  validate: Optional[Callable] = None
  members: Optional[Callable] = None

  def serves(self, bijector, layout):
    if self.pullback is None or (self.applies is not None and not self.applies(bijector, layout)):
      return False
    if self.events == "vector":
      return layout.is_vector
    if self.events == "coordinatewise":
      return layout.is_single
    return True


_RULES = {}
_FALLBACK = []
_FALLBACK_FORWARD = []

# The methods whose override changes a bijector's math (and so voids an inherited rule).
_MATH_METHODS = ("_forward", "_inverse", "_forward_log_det_jacobian", "_inverse_log_det_jacobian")


def register(*bijector_classes, events="vector", applies=None, validate=None, members=None):
  """Decorator: registers `rule(bijector, y, layout, kwargs) -> Pullback` for the given TFP bijector classes.

  Args:
    *bijector_classes: the TFP classes the rule serves (and their subclasses that keep their math).
    events: the event layouts the rule serves: "vector", "coordinatewise" or "any".
    applies: optional `(bijector, layout) -> bool`; where it is False the bijector gets the fallback instead.
    validate: optional `(bijector, layout, kwargs) -> None` that raises, from static information only, if the
      rule cannot serve this bijector; the sweep calls it for every layer before any computation starts.
    members: optional `(bijector, kwargs) -> [(member, its kwargs), …]` (or None where the bijector is no
      sequence of members) for a composition whose `rule` composes its members' pullbacks by `pullbacks`: a walk
      over a composition's members takes these in its place (`Rule.members`).
  """
  if events not in _EVENTS:
    raise ValueError(f"`events` must be one of {_EVENTS}; got {events!r}.")

  def decorate(rule):
    for cls in bijector_classes:
      _RULES[cls] = dataclasses.replace(_RULES.get(cls, Rule()), pullback=rule, events=events, applies=applies,
                                        validate=validate, members=members)
    return rule

  return decorate


def register_forward(*bijector_classes):
  """Decorator: registers `rule(bijector, x, layout, kwargs) -> Pullback` of `Invert(bijector)` at `x`."""

  def decorate(rule):
    for cls in bijector_classes:
      _RULES[cls] = dataclasses.replace(_RULES.get(cls, Rule()), forward=rule)
    return rule

  return decorate


def register_fallback(rule):
  """Sets the rule for bijectors without an analytic one (the per-bijector autodiff rule)."""
  _FALLBACK[:] = [rule]
  return rule


def register_fallback_forward(rule):
  """Sets the fallback's forward counterpart, `rule(bijector, x, layout, kwargs) -> Pullback` of `Invert(bijector)`
  at `x`, or None where it has none; it serves a bijector without an analytic rule from its cached preimage."""
  _FALLBACK_FORWARD[:] = [rule]
  return rule


def _find(bijector):
  """The `Rule` of the nearest registered ancestor of `bijector`'s class, if the class keeps its math."""
  cls = type(bijector)
  for ancestor in cls.__mro__:
    if ancestor in _RULES:
      keeps_math = all(getattr(cls, m, None) is getattr(ancestor, m, None) for m in _MATH_METHODS)
      return _RULES[ancestor] if keeps_math else None
  return None


def _own_rule(bijector):
  """A `_hessian_pullback(y, **kwargs)` method on the bijector itself, as a rule of vector events."""
  own = getattr(bijector, "_hessian_pullback", None)
  if own is None:
    return None
  return Rule(pullback=lambda _, y, layout, kwargs: own(y, **kwargs), events="vector")


def _analytic_rule(bijector, layout):
  rule = _own_rule(bijector) or _find(bijector)
  return rule if rule is not None and rule.serves(bijector, layout) else None


_VECTOR = EventLayout.vector(1)  # Any vector: rules tell vectors apart by layout kind, never by size.


def validate(bijector, layout, kwargs):
  """Raises if `bijector` cannot be served at `layout` with `kwargs` (static checks only)."""
  rule = _analytic_rule(bijector, layout)
  if rule is not None and rule.validate is not None:
    rule.validate(bijector, layout, kwargs)


def has_analytic_rule(bijector, layout=None):
  """True if `bijector` (at events of `layout`, a vector by default) is served by an analytic rule."""
  return _analytic_rule(bijector, _VECTOR if layout is None else layout) is not None


def forward_rule(bijector, layout=None):
  """The forward rule of `bijector` (for `Invert(bijector)`) at events of `layout` (a vector by default), or None."""
  rule = _find(bijector)
  if rule is None or rule.forward is None:
    return None
  return rule.forward if dataclasses.replace(rule, pullback=rule.forward).serves(
      bijector, _VECTOR if layout is None else layout) else None


def _preimage_rule(bijector, layout):
  """The forward rule that serves `bijector` from its cached preimage (module docstring), or None: its own, else,
  for a bijector the fallback serves (other than `Invert(b)`), the fallback's forward counterpart."""
  forward = forward_rule(bijector, layout)
  if forward is not None or not _FALLBACK_FORWARD or _analytic_rule(bijector, layout) is not None:
    return forward
  # `Invert(b).forward` is `b.inverse`: in a round trip `b⁻¹ ∘ b` TFP answers it from `b`'s cache, and the
  # "preimage" it records for `Invert(b)` is then `b`'s rounded output, not an exact point.
  return None if isinstance(bijector, private_api.INVERT) else _FALLBACK_FORWARD[0]


def _from_preimage(bijector, y, layout, kwargs):
  """The pullback of `bijector` at `y` from its cached preimage `x` (module docstring), or None."""
  forward = _preimage_rule(bijector, layout)
  if forward is None:
    return None
  x = private_api.cached_preimage(bijector, y, kwargs)
  if x is None:
    return None
  # Forward rules serve maps that keep the event's layout (coordinatewise, or vectors to vectors).
  inverse = forward(bijector, x, layout, kwargs)
  return None if inverse is None else inverse.inverted(x, layout)


def fallback(bijector, y, layout, kwargs):
  """The autodiff pullback of `bijector` at `y`, whatever rules it has."""
  if not _FALLBACK:
    raise NotImplementedError(
        f"No Hessian rule for bijector {bijector.name!r} ({type(bijector).__name__}). Implement "
        "`_hessian_pullback(y)` on it, or register a rule with `tfp_hessian.registry.register`.")
  return _FALLBACK[0](bijector, y, layout, kwargs)


def lookup(bijector, layout=None):
  """The rule function for `bijector` at `layout` (a vector by default): its analytic rule, else the fallback."""
  rule = _analytic_rule(bijector, _VECTOR if layout is None else layout)
  return fallback if rule is None else rule.pullback


def pullback(bijector, y, layout, kwargs=None):
  """The pullback of `bijector` at points `y` of event layout `layout`, by whichever rule serves it.

  Args:
    bijector: the layer.
    y: its points, `[*batch, *event]` or a structure of such tensors, as `layout` describes.
    layout: the `EventLayout` of `y`.
    kwargs: the keyword arguments of `bijector.inverse` (a `dict`; None for none).
  """
  kwargs = {} if kwargs is None else kwargs
  with _scope(bijector):
    from_preimage = _from_preimage(bijector, y, layout, kwargs)
    if from_preimage is not None:
      return from_preimage
    return lookup(bijector, layout)(bijector, y, layout, kwargs)


@contextlib.contextmanager
def _scope(bijector):
  """Where `bijector`'s pullback is formed: its name in the ops' name scope and in the errors raised there."""
  # The name scope puts the bijector's name into the node names a graph-mode error reports; eagerly, an
  # error raised inside (a `validate_args` assertion) is given the bijector's name here.
  with tf.name_scope(f"{bijector.name}_pullback"):
    try:
      yield
    except tf.errors.InvalidArgumentError as error:
      raise type(error)(error.node_def, error.op, f"{error.message}\n  raised by bijector {bijector.name!r} "
                        f"({type(bijector).__name__}) at its inverse") from error


def pullbacks(members, y, layout):
  """`(layers, x, x_layout)`: the pullbacks of a composition's `members`, `(bijector, kwargs)` from the `y` side,
  each at its predecessor's `x`, and the composition's `x` and layout.

  A stretch of members that TFP's cache makes the identity is left out: where a member's `x` is the very tensor
  an earlier member took (`Chain([Invert(b), b])` at points `b` produced), TFP's own `log_prob` runs no map
  there and its log-dets cancel. Taken member by member, the derivatives would multiply a vanishing Jacobian by
  its reciprocal once the middle point saturates (0 · inf where `tanh(z)` rounds to ±1).

  A member whose rule names its own members (`Rule.members`: a nested `Chain`, `Invert(Chain(…))`) is walked
  through, its members in its place, so that a stretch is seen wherever its ends sit: `Chain([Invert(b),
  Chain([b, c])])` is walked as `Chain([Invert(b), b, c])`. Its name scope still encloses its members' and
  still names it in their errors, as when its own rule runs.
  """
  layers, inputs = [], []

  def walk(members):
    nonlocal y, layout
    for bijector, kwargs in members:
      kwargs = {} if kwargs is None else kwargs
      inner = _members(bijector, layout, kwargs)
      if inner is not None:
        with _scope(bijector):
          walk(inner)
        continue
      inputs.append(y)
      layers.append(pullback(bijector, y, layout, kwargs))
      y, layout = layers[-1].x, layers[-1].x_layout
      for start, earlier in enumerate(inputs):
        if _same_tensors(earlier, y):
          del layers[start:], inputs[start:]
          break

  walk(members)
  return layers, y, layout


def _members(bijector, layout, kwargs):
  """The members a walk takes in place of `bijector` (`Rule.members`), or None to take `bijector` itself."""
  rule = _analytic_rule(bijector, layout)
  if rule is None or rule.members is None:
    return None
  return rule.members(bijector, kwargs)


def _same_tensors(a, b):
  """Whether `a` and `b` are the very same tensors in the same structure (a `Restructure` keeps the tensors but
  not their order or nesting: a permutation of the event, not the identity)."""
  try:
    tf.nest.assert_same_structure(a, b, check_types=True)
  except (ValueError, TypeError):
    return False
  return all(x is y for x, y in zip(tf.nest.flatten(a), tf.nest.flatten(b)))


def analytic_bijectors():
  """Names of the TFP bijector classes with an analytic rule, sorted."""
  return sorted({cls.__name__.lstrip("_") for cls, rule in _RULES.items() if rule.pullback is not None})
