"""Rule for `tfb.Invert(b)`, whose inverse is `b.forward`.

In order of preference:

- `Invert(Chain([b_1, …, b_n]))` is `Chain([Invert(b_n), …, Invert(b_1)])`, and each member is inverted alone
  (likewise `Invert(JointMap(bs))` is the `JointMap` of the inverted members); a walk over a composition's
  members (`registry.pullbacks`) takes these in its place, and so sees a round trip across its boundary;
- `Invert(Invert(c))` is `c`;
- `b`'s forward rule, where it has one: derivatives of `b.forward` at the point itself, exact to the last digit
  at the edges of the support;
- `b`'s own pullback, taken at `v = b.forward(y)` and run backwards (`Pullback.inverted`: generally
  `InvertedPullback`, three solves with its Jacobian per point; a coupling layer's inverse is a coupling layer,
  which keeps its block form): exact, but at a rounded `v` where the support ends;
- with none of these, `Invert(b)` is served by the autodiff fallback.

Keyword arguments go where TFP sends them: `Invert(b).inverse(y, **kw)` is `b.forward(y, **kw)`.
"""

import tensorflow_probability as tfp

from tfp_hessian import events, private_api, registry
from tfp_hessian.bijectors.chain import chain_members, composed, joint_map_pullback

tfb = tfp.bijectors


def _invertible_analytically(bijector, layout):
  # Compositions and double inversions are structure: their members find their own rules (or fallbacks).
  if isinstance(bijector, (private_api.CHAIN, private_api.INVERT, private_api.JOINT_MAP)):
    return True
  if registry.forward_rule(bijector, layout) is not None:
    return True
  forward = events.bijector_layout(bijector, layout, "forward")
  return forward is not None and registry.has_analytic_rule(bijector, forward)


def inverted_members(bijector, kwargs):
  """`(member, its kwargs)` from the `y` side that `Invert(bijector)` composes, or None if it is no composition:
  `Invert(Chain([b_1, …, b_n]))` is `Chain([Invert(b_n), …, Invert(b_1)])`, and `Invert(Invert(c))` is `c`.

  A walk (`registry.pullbacks`) takes them in the place of `Invert(bijector)`, so that a round trip inside it,
  or with one end outside, is seen as TFP's cache makes it: the identity.
  """
  if isinstance(bijector, private_api.CHAIN):
    # `Invert(Invert(b))` is `b`: no wrapper whose name the user never wrote, in name scopes and errors.
    return [(member.bijector if isinstance(member, private_api.INVERT) else tfb.Invert(member), member_kw)
            for member, member_kw in reversed(chain_members(bijector, kwargs))]
  if isinstance(bijector, private_api.INVERT):
    return [(bijector.bijector, kwargs)]
  return None


def inverted_pullback(bijector, y, layout, kwargs):
  """The pullback of `Invert(bijector)` at `y` (event layout `layout`)."""
  if isinstance(bijector, private_api.CHAIN):
    return composed(inverted_members(bijector, kwargs), y, layout)
  if isinstance(bijector, private_api.JOINT_MAP):
    return joint_map_pullback(bijector, y, layout, kwargs, inverted_pullback)
  if isinstance(bijector, private_api.INVERT):
    return registry.pullback(bijector.bijector, y, layout, kwargs)
  rule = registry.forward_rule(bijector, layout)
  if rule is not None:
    return rule(bijector, y, layout, kwargs)
  v = bijector.forward(y, **kwargs)
  v_layout = events.layout_of(v, bijector.forward_event_ndims(layout.ranks, **kwargs))
  if registry.has_analytic_rule(bijector, v_layout):
    return registry.pullback(bijector, v, v_layout, kwargs).inverted(v, v_layout)
  return registry.fallback(tfb.Invert(bijector), y, layout, kwargs)


def _applies(bijector, layout):
  return _invertible_analytically(bijector.bijector, layout)


def _validate_inner(bijector, layout, kwargs):
  forward = events.bijector_layout(bijector.bijector, layout, "forward")
  if forward is not None:
    registry.validate(bijector.bijector, forward, kwargs)


@registry.register(private_api.INVERT, events="any", applies=_applies, validate=_validate_inner,
                   members=lambda bijector, kwargs: inverted_members(bijector.bijector, kwargs))
def invert_rule(bijector, y, layout, kwargs):
  return inverted_pullback(bijector.bijector, y, layout, kwargs)
