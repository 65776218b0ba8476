"""Rules for compositions: `tfb.Chain` (its bijectors' pullbacks, composed) and `tfb.JointMap` (one per part).

Both pass keyword arguments to their members as TFP does, by member name: `Chain([maf1, maf2])` takes
`{"maf1": {"conditional_input": c}, …}`. A name that is no member's is refused before any layer runs: TFP would
drop it silently, and the layer that needed it would fail or, worse, run unconditioned.
"""

import tensorflow as tf

from tfp_hessian import events, private_api, registry
from tfp_hessian.pullback import ComposedPullback, ElementwisePullback, block_pullback


def member_kwargs(bijector, kwargs):
  """`{member: its kwargs}` of a `Chain` or `JointMap` for `kwargs` keyed by member name; refuses unknown names."""
  members = tf.nest.flatten(bijector.bijectors)
  names = [member.name for member in members]
  unknown = sorted(set(kwargs) - set(names))
  if unknown:
    what = f"{type(bijector).__name__.lstrip('_')} {bijector.name!r}"
    if not names:
      raise ValueError(f"bijector_kwargs for the empty {what} name {unknown}.")
    raise ValueError(
        f"bijector_kwargs for {what} name {unknown}, which are not among its bijectors {names}. TFP passes a "
        f"composition's kwargs to its members by name: e.g. `bijector_kwargs={{{names[0]!r}: "
        "{'conditional_input': c}}`")
  return [kwargs.get(member.name, {}) for member in members]


def _validate_chain(bijector, layout, kwargs):
  for member, member_kw in zip(bijector.bijectors, member_kwargs(bijector, kwargs)):
    if layout is None:
      return
    registry.validate(member, layout, member_kw)
    layout = events.bijector_layout(member, layout)


def chain_members(bijector, kwargs):
  """`(member, its kwargs)` of a `Chain` from the `y` side: `Chain([b1, b2]).inverse(y) = b2.inverse(b1.inverse(y))`,
  the first bijector sits on the `y` side."""
  return list(zip(bijector.bijectors, member_kwargs(bijector, kwargs)))


def composed(members, y, layout):
  """The pullback of a composition of `members` (`(bijector, kwargs)` from the `y` side) at `y`.

  `registry.pullbacks` walks them, and walks through a member that is itself a composition (`chain_members`,
  `invert.inverted_members`): the identity stretches TFP's cache makes are left out wherever they sit.
  """
  layers, y, layout = registry.pullbacks(members, y, layout)
  if not layers:  # An empty composition, or one TFP's cache makes the identity at `y`.
    return ElementwisePullback(y, tf.zeros([], tf.nest.flatten(y)[0].dtype), x_layout=layout)
  return ComposedPullback(layers)


@registry.register(private_api.CHAIN, events="any", validate=_validate_chain, members=chain_members)
def chain_rule(bijector, y, layout, kwargs):
  return composed(chain_members(bijector, kwargs), y, layout)


def part_layouts(bijector, layout):
  """Each member's event layout in `layout`, in flat order (a member's part may be a structure itself)."""
  shapes = private_api.flatten_up_to(bijector.bijectors, layout.pack(layout.shapes))
  ranks = private_api.flatten_up_to(bijector.bijectors, layout.ranks)
  return [events.EventLayout(r if tf.nest.is_nested(r) else None, tf.nest.flatten(s) if tf.nest.is_nested(r) else [s])
          for s, r in zip(shapes, ranks)]


def _validate_joint_map(bijector, layout, kwargs):
  for member, part, member_kw in zip(tf.nest.flatten(bijector.bijectors), part_layouts(bijector, layout),
                                     member_kwargs(bijector, kwargs)):
    registry.validate(member, part, member_kw)


def joint_map_pullback(bijector, y, layout, kwargs, member_pullback):
  """The pullback of a `JointMap` at `y`, each part's by `member_pullback(member, part, layout, kwargs)`.

  The Jacobian is block diagonal over the parts (`pullback.block_pullback`); `Invert` passes its own per-part
  rule, since `Invert(JointMap(bs))` is the `JointMap` of the inverted members.
  """
  layouts = part_layouts(bijector, layout)
  blocks = [member_pullback(member, part, part_layout, member_kw) for member, part, part_layout, member_kw in
            zip(tf.nest.flatten(bijector.bijectors), private_api.flatten_up_to(bijector.bijectors, y), layouts,
                member_kwargs(bijector, kwargs))]
  x = tf.nest.pack_sequence_as(bijector.bijectors, [block.x for block in blocks])
  x_layout = events.EventLayout(
      tf.nest.pack_sequence_as(bijector.bijectors, [block.x_layout.structure for block in blocks]),
      [shape for block in blocks for shape in block.x_layout.shapes])
  return block_pullback(blocks, x, x_layout, y_sizes=[part.size for part in layouts])


@registry.register(private_api.JOINT_MAP, events="any", validate=_validate_joint_map)
def joint_map_rule(bijector, y, layout, kwargs):
  """One pullback per part, each by its own member's rule."""
  return joint_map_pullback(bijector, y, layout, kwargs, registry.pullback)
