"""The second-order backward sweep: value, gradient and Hessian of a flow's log density.

A flow `TransformedDistribution(base, f)` with inverse `h = f⁻¹` written as a chain of layers,
`y_K = z`, `y_{l-1} = h_l(y_l)`, `ω = y_0`, has `log q(z) = log q0(ω) + Σ_l ildj_l(y_l)`. The sweep

1. inverts `z` through the layers, keeping every layer's `Pullback` at its point `y_l`;
2. takes `(log q0, ∇ log q0, ∇² log q0)` of the base at `ω` (`bases.py`);
3. pulls them back, base side first, through every layer:

.. math::

    g_l = J_l^T g_{l-1} + ∇ ildj_l, \\qquad
    H_l = J_l^T H_{l-1} J_l + \\sum_k (g_{l-1})_k ∇^2 h_{l,k} + ∇^2 ildj_l, \\qquad J_l = ∂h_l/∂y(y_l).

`(g_K, H_K)` are the gradient and Hessian of `log q` at `z`. Which structured map each layer applies is the
registry's business (`registry.py`); the sweep only composes them. Step 3 is where the Hessians are formed, and
goes through `execution.pull_back`, which may compile it with XLA on its own (`execution.py`).

Events of any rank or structure are flat here (`events.py`): gradients and Hessians are over the flat event,
while each layer takes and gives its points in their own structure. Keyword arguments go where
`distribution.log_prob(z, **kwargs)` sends them: each `TransformedDistribution` splits them into its bijector's
(`bijector_kwargs`) and its base's (`distribution_kwargs`), a `Chain` passes its members theirs by name.
"""

import collections

import numpy as np
import tensorflow as tf
import tensorflow_probability as tfp

from tfp_hessian import bases, compiled, events, execution, private_api, registry
from tfp_hessian.pullback import AutodiffPullback, ComposedPullback, pull_back

tfd = tfp.distributions

__all__ = ["LogProbDerivatives", "execution_plan", "log_prob_and_derivatives", "log_prob_hessian"]

LogProbDerivatives = collections.namedtuple("LogProbDerivatives", ["log_prob", "gradient", "hessian"])
LogProbDerivatives.__doc__ = """Value `[*batch]`, gradient `[*batch, n]` and Hessian `[*batch, n, n]` of log q(z)."""


def _unwrap(distribution, kwargs):
  """`(layers, base, base_kwargs)`: the flow's `(bijector, its kwargs)` from the `z` side, the base and its kwargs."""
  layers = []
  while isinstance(distribution, private_api.TRANSFORMED) and not bases.is_structured_base(distribution):
    distribution_kwargs, bijector_kwargs = private_api.kwargs_split(distribution, kwargs)
    layers.append((distribution.bijector, dict(bijector_kwargs or {})))
    kwargs = dict(distribution_kwargs or {})
    distribution = private_api.resolve_deferred(distribution.distribution)
  return layers, distribution, kwargs


def check_distribution(distribution, kwargs=None):
  """The `EventLayout` of a distribution the sweep supports, or a clear error before any computation.

  Checks the dtype, the event shapes, and every layer with its kwargs (a condition of the wrong shape, a
  `bijector_kwargs` name that is no bijector's) from static information only.
  """
  if not isinstance(distribution, tfd.Distribution):
    raise TypeError(f"`distribution` must be a tfp.distributions.Distribution (or a DeferredModule building one); "
                    f"got {type(distribution).__name__}.")
  for dtype in tf.nest.flatten(distribution.dtype):
    if tf.as_dtype(dtype) not in (tf.float32, tf.float64):
      names = tf.nest.map_structure(lambda d: tf.as_dtype(d).name, distribution.dtype)
      raise TypeError(f"tfp_hessian supports float32 and float64 distributions; {distribution.name!r} has dtype "
                      f"{names}.")
  if len({tf.as_dtype(dtype) for dtype in tf.nest.flatten(distribution.dtype)}) != 1:
    raise TypeError(f"tfp_hessian needs one dtype across the event's parts; {distribution.name!r} has dtypes "
                    f"{distribution.dtype}.")
  layout = events.layout_of_distribution(distribution)
  layers, _, _ = _unwrap(distribution, {} if kwargs is None else kwargs)
  static = layout
  for bijector, bijector_kwargs in layers:
    if static is None:
      break
    registry.validate(bijector, static, bijector_kwargs)
    static = events.bijector_layout(bijector, static)
  return layout


def dtype_of(distribution):
  """The (single) floating dtype of `distribution`'s events."""
  return tf.as_dtype(tf.nest.flatten(distribution.dtype)[0])


def points(distribution, z, kwargs=None):
  """`(z, layout)`: `z` as tensors of the distribution's dtype and event layout, broadcast to `[*batch, *event]`.

  `*batch` is the broadcast of `z`'s batch shape and the distribution's; a clear error for anything else.
  """
  layout = check_distribution(distribution, kwargs)
  dtype = dtype_of(distribution)
  parts = []
  for part, shape in zip(layout.parts(z), layout.shapes):
    # Arrays and tensors keep their own dtype (a hint would silently cast float64, int and bool arrays); only
    # Python numbers and lists, which state none, take the distribution's.
    part = tf.convert_to_tensor(part, dtype_hint=None if hasattr(part, "dtype") else dtype, name="z")
    if not part.dtype.is_floating:
      raise TypeError(f"`z` must be a floating-point tensor of dtype {dtype.name}; got dtype {part.dtype.name}.")
    if part.dtype != dtype:
      raise TypeError(f"`z` has dtype {part.dtype.name} but the distribution has dtype {dtype.name}.")
    if layout.is_vector:
      if part.shape.rank is None or part.shape.rank < 1:
        raise ValueError(f"`z` must have shape [*batch, D] with D = {shape[0]}; got shape {part.shape}.")
      if not part.shape[-1:].is_compatible_with(shape):
        raise ValueError(f"`z` must have event size D = {shape[0]} (the distribution's event shape); got shape "
                         f"{part.shape}, event size {part.shape[-1]}.")
    elif part.shape.rank is None or part.shape.rank < shape.rank or (
        shape.rank and not part.shape[-shape.rank:].is_compatible_with(shape)):
      what = "`z`" if layout.is_single else f"part {len(parts)} of `z` (in tf.nest.flatten order)"
      expected = f"[*batch, {', '.join(str(d) for d in shape.as_list())}]" if shape.rank else "[*batch]"
      raise ValueError(f"{what} must have shape {expected} (the distribution's event {layout.describe()}); got "
                       f"shape {part.shape}.")
    if shape.rank and not part.shape[-shape.rank:].is_fully_defined():
      part = tf.ensure_shape(part, part.shape[:-shape.rank].concatenate(shape))
    parts.append(part)
  z = layout.pack(parts)
  return _broadcast_to_batch(distribution, z, layout), layout


def batch_shape(distribution):
  """`distribution.batch_shape`, in time linear in the nesting of `TransformedDistribution`s.

  TFP's own asks a `TransformedDistribution`'s base for its batch shape twice (once itself, once through the
  parameters it infers it from), so nested distributions take time `2^depth` or more: 90 s at depth 12 (6 layers, each
  nested with its domain map), against 0.8 s for nested tapes' whole Hessian. Here, as TFP infers it, a
  `TransformedDistribution`'s batch shape is its base's broadcast with its bijector's at the base's event ranks,
  each level asked once; a structured batch shape, a base of unknown event rank, or a bijector that cannot say its
  batch shape (no `_parameter_properties`) get TFP's own.
  """
  if not isinstance(distribution, private_api.TRANSFORMED):
    return distribution.batch_shape
  base = distribution.distribution
  base_batch = batch_shape(base)
  event_ndims = tf.nest.map_structure(lambda shape: shape.rank, base.event_shape)
  if tf.nest.is_nested(base_batch) or any(rank is None for rank in tf.nest.flatten(event_ndims)):
    return distribution.batch_shape
  try:
    bijector_batch = distribution.bijector.experimental_batch_shape(x_event_ndims=event_ndims)
  except NotImplementedError:  # a user's bijector without `_parameter_properties`: TFP's answer (unknown)
    return distribution.batch_shape
  return tf.broadcast_static_shape(base_batch, tf.TensorShape(bijector_batch))


def _batch_shapes(distribution):
  batch = batch_shape(distribution)
  return tf.nest.flatten(batch) if tf.nest.is_nested(distribution.dtype) else [batch]


def _batch_shape_tensors(distribution, shapes):
  """The distribution's batch shapes (`shapes`, its static `_batch_shapes`) as tensors: constants where known
  (TFP's `batch_shape_tensor` of nested distributions takes time `2^depth`, as `batch_shape` does)."""
  if all(shape.is_fully_defined() for shape in shapes):
    return [tf.constant(shape.as_list(), tf.int32) for shape in shapes]
  return tf.nest.flatten(distribution.batch_shape_tensor())


def _broadcast_to_batch(distribution, z, layout):
  """`z` broadcast to `[*batch, *event]`, `*batch` the broadcast of its batch shape and the distribution's.

  The autodiff paths (fallback layers, bases without a closed form) differentiate sums over the points, which
  gives per-point derivatives only if every point is its own: a point shared by several batch members of the
  distribution would collect all their derivatives. So every point is made its own before the sweep.
  """
  batch = layout.batch_shape(z)
  static = batch
  distribution_batches = _batch_shapes(distribution)
  try:
    for distribution_batch in distribution_batches:
      static = tf.broadcast_static_shape(static, distribution_batch)
  except ValueError:
    raise ValueError(f"`z` has batch shape {batch}, which does not broadcast against the distribution's batch "
                     f"shape {batch_shape(distribution)}.") from None
  if static.is_fully_defined() and all(part.shape[:part.shape.rank - shape.rank] == static
                                       for part, shape in zip(layout.parts(z), layout.shapes)):
    return z
  dynamic = None
  if not static.is_fully_defined():
    dynamic = layout.batch_shape_tensor(z)
    for distribution_batch in _batch_shape_tensors(distribution, distribution_batches):
      dynamic = tf.broadcast_dynamic_shape(dynamic, distribution_batch)
  return layout.broadcast(z, static, dynamic)


def _per_point_leaves(distribution, batch, leaves):
  """Indices of the kwargs' `leaves` that hold one row per point, if the sweep may run on chunks of the points
  (`execution.run`); else None.

  It may where the points lie along one axis (`z` of batch shape `[N]`), the distribution has no batch of its own
  and every kwarg is either a condition per point (`[N, C]`), shared by all points (`[C]` or a scalar tensor), or a
  flag (a bool, a string, None). Anything else (a Python number, which may be part of a nested list, a condition
  of another shape) keeps the points whole.
  """
  if batch.rank != 1 or batch[0] is None or any(shape != [] for shape in _batch_shapes(distribution)):
    return None
  per_point = []
  for index, leaf in enumerate(leaves):
    if leaf is None or isinstance(leaf, (bool, str)):
      continue
    if isinstance(leaf, np.ndarray):
      shape = leaf.shape
    elif isinstance(leaf, (tf.Tensor, tf.Variable)) and leaf.shape.rank is not None:
      shape = tuple(leaf.shape)
    else:
      return None
    if len(shape) == 2 and shape[0] == batch[0]:
      per_point.append(index)
    elif len(shape) > 1:
      return None
  return per_point


def sweep(distribution, z, layout, kwargs=None):
  """The sweep itself, on validated points `z` of event layout `layout`.

  TFP's bijector caches apply: where `z` came out of `distribution`'s own forward pass, every layer's inverse
  is looked up, not recomputed (so an IAF's sequential inverse is never run). Values are then exact, but the
  cached inverses are constants to autodiff: differentiate `log_prob_and_derivatives`, not this.
  """
  layers, base, base_kwargs = _unwrap(distribution, {} if kwargs is None else kwargs)
  pullbacks, y, layout = registry.pullbacks(layers, z, layout)
  # One composition across the nested distributions, so that its fusions (`ComposedPullback`) see every layer.
  pullbacks = ComposedPullback(pullbacks).layers if pullbacks else []
  if pullbacks and isinstance(pullbacks[-1], AutodiffPullback) and not base_kwargs:
    # A layer without a rule next to the base: differentiated together with the base's log density.
    x_layout = pullbacks[-1].x_layout
    log_prob, grad, hess = pullbacks.pop().log_prob_derivatives(
        lambda x: base.log_prob(x_layout.unflatten(x)))
  else:
    log_prob, grad, hess = bases.log_prob_derivatives(base, y, layout, base_kwargs)
  for pullback in reversed(pullbacks):
    log_prob = log_prob + pullback.ildj

  def back(grad, hess):
    grad, hess = pull_back(pullbacks, grad, hess)
    return grad, 0.5 * (hess + tf.linalg.matrix_transpose(hess))

  grad, hess = execution.pull_back(back, grad, hess)
  return LogProbDerivatives(log_prob, grad, hess)


@compiled.when_eager
def log_prob_and_derivatives(distribution, z, name="log_prob_and_derivatives", **kwargs):
  """Value, gradient and Hessian of `distribution.log_prob(z, **kwargs)` with respect to `z`, from one sweep.

  Args:
    distribution: what `log_prob` is called on: a `tfd.TransformedDistribution` (stock or
      `tfp_hessian.TransformedDistribution`, nested ones included), a JointDistribution, a `DeferredModule`
      building one (`tfp.experimental.vi` surrogate posteriors), or any distribution with float events.
    z: points, as `distribution.log_prob` takes them: `[*batch, *event]` of the distribution's dtype, or a
      structure of such tensors (a dict for a `JointDistributionNamed`).
    name: name scope of the ops.
    **kwargs: passed on exactly as `log_prob` passes them: `bijector_kwargs` (a `Chain`'s keyed by its members'
      names), `distribution_kwargs`. A condition `c` is held fixed: `[*batch, C]` beside `[*batch, *event]`
      points, or `[C]` for all of them.

  Returns:
    `LogProbDerivatives(log_prob [*batch], gradient [*batch, n], hessian [*batch, n, n])`, over the flat event
    (`tfp_hessian.flatten_event`: parts in `tf.nest.flatten` order, each row-major; `n = D` for vector events).
    `*batch` is the broadcast of `z`'s batch shape and the distribution's. The Hessian is exactly symmetric.

  Points outside the flow's support give NaN or inf, as `distribution.log_prob` does; with `validate_args=True`
  on the offending bijector, TFP's `InvalidArgumentError` is raised instead.
  """
  with tf.name_scope(name):
    distribution = private_api.resolve_deferred(distribution)
    z, layout = points(distribution, z, kwargs)
    if isinstance(distribution, private_api.TRANSFORMED):
      # Fresh tensors: TFP caches the inverse of tensors it sampled, and nothing of ours may be cut off from `z`.
      z = tf.nest.map_structure(tf.identity, z)
    batch = layout.batch_shape(z)
    num_points = batch.num_elements() if batch.is_fully_defined() else None
    leaves = tf.nest.flatten(kwargs)
    per_point = _per_point_leaves(distribution, batch, leaves)

    def run_sweep(inputs):
      points, conditions = inputs
      if not conditions:
        return sweep(distribution, points, layout, kwargs)
      given = list(leaves)
      for index, condition in zip(per_point, conditions):  # a chunk's conditions in place of all the points'
        given[index] = condition
      return sweep(distribution, points, layout, tf.nest.pack_sequence_as(kwargs, given))

    conditions = [tf.convert_to_tensor(leaves[index]) for index in per_point or []]
    return execution.run(run_sweep, (z, conditions), num_points, layout.size, splittable=per_point is not None)


@tf.autograph.experimental.do_not_convert  # graph code as it stands (see `compiled.py`)
def log_prob_hessian(distribution, z, name="log_prob_hessian", **kwargs):
  """The Hessian of `distribution.log_prob(z, **kwargs)` with respect to `z`, per point.

  Args:
    distribution: as in `log_prob_and_derivatives`.
    z: points `[*batch, *event]` (or a structure of them), as `distribution.log_prob` takes them.
    name: name scope of the ops.
    **kwargs: as `distribution.log_prob` takes them (`bijector_kwargs`, `distribution_kwargs`).

  Returns:
    `[*batch, n, n]`: `[..., i, j] = ∂² log q(z) / ∂z_i ∂z_j` over the flat event (`n = D` for vectors),
    exactly symmetric.

  >>> flow = tfd.TransformedDistribution(tfd.MultivariateNormalDiag(tf.zeros(3)), tfb.Softplus())
  >>> log_prob_hessian(flow, flow.sample(5)).shape
  TensorShape([5, 3, 3])
  """
  with tf.name_scope(name):
    # Eagerly this is the very compiled function `log_prob_and_derivatives` runs: the same Hessian, bit for bit.
    return log_prob_and_derivatives(distribution, z, **kwargs).hessian


def execution_plan(distribution, z, **kwargs):
  """How `log_prob_hessian(distribution, z, **kwargs)` runs in a `tf.function`: an `execution.Plan`, with why.

  `Plan(xla=True, ...)` where the sweep is compiled by XLA (flows whose ops XLA compiles well, at no more points
  than measured to pay: `execution.py`), `Plan(xla=False, ...)` where TensorFlow runs the traced graph; then
  `pull_back_xla` says whether its pull-back stage, where the Hessians are formed, is compiled on its own, and
  `chunks` in how many calls on chunks of the points a compiled sweep runs (1: one call). Traces the call once;
  nothing runs.
  """
  plans = []
  with execution.observe(plans.append):
    tf.function(lambda points: log_prob_and_derivatives(distribution, points, **kwargs),
                autograph=False).get_concrete_function(z)
  return plans[-1]


def flat_log_prob(distribution, z, kwargs=None):
  """`(flat, log_prob)`: validated points as `[*batch, n]`, and `flat ↦ distribution.log_prob` of them.

  For the autodiff entry points (`log_prob_hvp`, `top_eigenpairs`), which differentiate `log_prob` itself.
  """
  distribution = private_api.resolve_deferred(distribution)
  kwargs = {} if kwargs is None else kwargs
  z, layout = points(distribution, z, kwargs)

  def log_prob(flat):
    return distribution.log_prob(layout.unflatten(flat), **kwargs)

  # A fresh tensor: TFP's cache of sampled tensors would cut it off the tapes.
  return tf.identity(layout.flatten(z)), log_prob
