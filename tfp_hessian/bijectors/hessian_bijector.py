"""Second-order derivatives of a bijector's inverse, for any bijector with vector events.

The functions take a stock TFP bijector (served through the registry); `HessianBijector` puts the same
functions on a bijector as methods. Points `y` are `[*batch, D]` (or, with `event_ndims` as TFP takes it, events
of any rank or structure, flattened as `tfp_hessian.flatten_event` does); keyword arguments are those of
`bijector.inverse` (a condition). Shapes below are for vectors; for other events `D` is the flat size.
"""

import tensorflow as tf

from tfp_hessian import events, memory, registry


def _pullback(bijector, y, name, event_ndims, kwargs, check=None):
  with tf.name_scope(name):
    dtype = tf.nest.flatten(bijector.dtype)[0] if bijector.dtype is not None else None
    y = tf.nest.map_structure(lambda part: tf.convert_to_tensor(part, dtype_hint=dtype, name="y"), y)
    for part, rank in zip(tf.nest.flatten(y), tf.nest.flatten(event_ndims)):
      if part.shape.rank is None or part.shape.rank < rank:
        raise ValueError(f"`y` must have rank >= event_ndims = {rank}; got shape {part.shape}.")
    layout = events.layout_of(y, event_ndims)
    if check is not None:
      check(y, layout)
    return registry.pullback(bijector, y, layout, kwargs)


def hessian_pullback(bijector, y, event_ndims=1, **kwargs):
  """The `Pullback` of `bijector` at `y`: the map `(∇F, ∇²F)` at `x = h(y)` ↦ `(∇G, ∇²G)` at `y`."""
  return _pullback(bijector, y, "hessian_pullback", event_ndims, kwargs)


def inverse_jacobian(bijector, y, event_ndims=1, **kwargs):
  """`∂x/∂y` of `x = bijector.inverse(y)`, shape `[*batch, D, D]`, `[..., k, i] = ∂x_k/∂y_i`."""
  return _pullback(bijector, y, "inverse_jacobian", event_ndims, kwargs).jacobian()


def inverse_hessian(bijector, y, event_ndims=1, **kwargs):
  """`∂²x/∂y²` of `x = bijector.inverse(y)`, shape `[*batch, D, D, D]`, `[..., k, i, j] = ∂²x_k/∂y_i∂y_j`.

  For inspection and tests: it holds D³ numbers per point, which the Hessian sweep never forms. Its size is
  checked against `tfp_hessian.get_memory_limit()`, from `y`'s static shape, before anything is computed.
  """

  def check(y, layout):
    memory.check_memory(
        f"`inverse_hessian` of bijector {bijector.name!r} ({type(bijector).__name__})",
        layout.batch_shape(y).concatenate([layout.size] * 3), tf.nest.flatten(y)[0].dtype,
        "For the Hessian of a flow's log density use `tfp_hessian.log_prob_hessian`, which never forms this "
        "tensor; or pass fewer points per call.")

  return _pullback(bijector, y, "inverse_hessian", event_ndims, kwargs, check).hessian()


def inverse_log_det_jacobian_gradient(bijector, y, event_ndims=1, **kwargs):
  """`∇_y log|det ∂x/∂y|`, shape `[*batch, D]`."""
  return _pullback(bijector, y, "inverse_log_det_jacobian_gradient", event_ndims, kwargs).ildj_derivatives()[0]


def inverse_log_det_jacobian_hessian(bijector, y, event_ndims=1, **kwargs):
  """`∇²_y log|det ∂x/∂y|`, shape `[*batch, D, D]`."""
  return _pullback(bijector, y, "inverse_log_det_jacobian_hessian", event_ndims, kwargs).ildj_derivatives()[1]


class HessianBijector:
  """Mixin giving a TFP bijector the second-order derivatives of its inverse.

  Combine it with a TFP bijector class, first in the bases, and every TFP behaviour (caching, `tf.function`,
  CompositeTensor) is kept:

  >>> class Softplus(HessianBijector, tfb.Softplus):
  ...   pass

  The class finds its rule in the registry through its TFP base. A new bijector instead defines
  `_hessian_pullback(self, y)` returning a `tfp_hessian.pullback.Pullback`.
  """

  def hessian_pullback(self, y, event_ndims=1, **kwargs):
    """See `tfp_hessian.bijectors.hessian_pullback`."""
    return hessian_pullback(self, y, event_ndims, **kwargs)

  def inverse_jacobian(self, y, event_ndims=1, **kwargs):
    """See `tfp_hessian.bijectors.inverse_jacobian`."""
    return inverse_jacobian(self, y, event_ndims, **kwargs)

  def inverse_hessian(self, y, event_ndims=1, **kwargs):
    """See `tfp_hessian.bijectors.inverse_hessian`."""
    return inverse_hessian(self, y, event_ndims, **kwargs)

  def inverse_log_det_jacobian_gradient(self, y, event_ndims=1, **kwargs):
    """See `tfp_hessian.bijectors.inverse_log_det_jacobian_gradient`."""
    return inverse_log_det_jacobian_gradient(self, y, event_ndims, **kwargs)

  def inverse_log_det_jacobian_hessian(self, y, event_ndims=1, **kwargs):
    """See `tfp_hessian.bijectors.inverse_log_det_jacobian_hessian`."""
    return inverse_log_det_jacobian_hessian(self, y, event_ndims, **kwargs)
