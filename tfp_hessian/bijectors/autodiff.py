"""The fallback rule: any bijector, differentiated by nested `GradientTape`s on that layer alone.

It is exact and costs what autodiff of that one layer costs; the rest of the chain keeps its structured
pullbacks. Two cases:

- a *coordinatewise* bijector (`forward_min_event_ndims == 0`: `tfb.RationalQuadraticSpline`, `tfb.GumbelCDF`,
  `tfb.KumaraswamyCDF`, `tfb.SoftClip`, …) on one tensor acts on each coordinate alone, `x_i = φ_i(y_i)`. Its
  four scalar derivatives `φ'`, `φ''`, `(log|φ'|)'`, `(log|φ'|)''` come from four backward passes, whatever the
  event size, and serve an `ElementwisePullback`: O(n) per point, a diagonal Jacobian and Hessian by
  construction. `Invert` of such a bijector is coordinatewise too, so it gets the same rule.
- any other bijector, on events of any layout, is a function of the flat points (`events.py`) and gets an
  `AutodiffPullback`: its Jacobian and `∇²(g·h + ildj)` by nested tapes when the sweep reaches it, `n` backward
  passes per point and no `[n, n, n]` tensor.
- where that bijector's inverse costs far more than its forward map (a loop over the coordinates, as an
  autoregressive map written by hand inverts, or a `tf.while_loop`, as TFP's `Invert(MaskedAutoregressiveFlow)`
  does), the tapes differentiate the forward map at `x = inverse(y)` instead, and the pullback is that of
  `Invert(bijector)` run backwards (`InvertedPullback`, the second-order inverse-function theorem): three solves
  with the `[n, n]` Jacobian per point instead of tapes through the loop (`forward_is_cheaper`).

Points are independent under a bijector, so derivatives of sums over the batch are per-point derivatives; that
lets one `gradient` or `jacobian` call serve any batch shape, and the layer's parameters keep their own
broadcasting. For a coordinatewise bijector the coordinates are independent too, so the gradient of the sum over
*all* entries is the tensor of per-coordinate derivatives.
"""

import numpy as np
import tensorflow as tf
import tensorflow_probability as tfp

from tfp_hessian import events, registry, tapes
from tfp_hessian.pullback import AutodiffPullback, ElementwisePullback

tfb = tfp.bijectors

__all__ = ["autodiff_rule", "elementwise_autodiff_rule", "flat_autodiff_rule", "forward_autodiff_rule",
           "forward_is_cheaper", "inverted_forward_autodiff_rule", "is_coordinatewise"]

# The fallback differentiates a vector-event bijector's forward map instead of its inverse where the inverse's graph
# has at least this many times the forward's ops (log-dets included in both), or a loop the forward has not.
# Measured on flows with user-written `Shear`s (`examples.Shear`: ~14 ops per coordinate to invert, ~37 forward),
# float32, `python benchmarks/fallback_direction.py`: the forward direction 1.25–2.8× faster at D = 16 and 32, within
# 0.95–1.1× at D = 8 (op ratio 3.8), 0.5–0.8× at D = 4 (ratio 2.3), at 1024 points; first call 4–5 s instead of
# 11–29 s from D = 16. Since its solves see a triangular Jacobian at run time (session 37), D = 8 takes the forward
# map too: per call 0.97–1.07× the inverse's, first call 2.0–2.8 s instead of 3.4–3.7 (research flow and 4 shears, 16
# and 1024 points; `python benchmarks/fallback_direction.py --flows research_flow shears --dims 6 7 8`), where at D = 7
# (ratio 3.4) the forward map ran 0.79–1.36×.
INVERSE_COST_RATIO = 3.5
_LOOPS = frozenset({"While", "StatelessWhile", "For"})


def is_coordinatewise(bijector):
  """True if `bijector` acts on each coordinate alone (TFP's scalar-event bijectors).

  TFP's contract for `forward_min_event_ndims == 0` is that the bijector maps scalars to scalars, with its
  parameters broadcasting over the rest; a nested (multipart) `forward_min_event_ndims` is never coordinatewise.
  """
  min_ndims = bijector.forward_min_event_ndims
  return isinstance(min_ndims, (int, np.integer)) and min_ndims == 0


def _raise_if_not_differentiable(bijector, gradient):
  """The fallback differentiates `bijector.inverse`; a `None` gradient means autodiff cannot see through it."""
  if gradient is None:
    raise NotImplementedError(
        f"Bijector {bijector.name!r} ({type(bijector).__name__}) has no Hessian rule, and its inverse is not "
        "differentiable by tf.GradientTape (the gradient of `inverse(y)` with respect to `y` is None: a "
        "non-differentiable op such as tf.round, tf.stop_gradient or a numpy call in a tf.py_function). "
        "Give it a rule: define `_hessian_pullback(self, y)` returning a `tfp_hessian.pullback.Pullback`, or "
        "register one with `tfp_hessian.registry.register`.")


def elementwise_autodiff_rule(bijector, y, layout, kwargs):
  """`ElementwisePullback` of a coordinatewise `bijector` at `y` (one tensor, any event rank) by nested tapes.

  With `x_i = φ_i(y_i)` every entry of `x` depends on its own entry of `y` only, so `∂(Σ x)/∂y = φ'(y)` and
  `∂(Σ φ')/∂y = φ''(y)`; the same holds for the per-coordinate log-det `log|φ'(y_i)|`, which TFP gives as
  `inverse_log_det_jacobian(y, event_ndims=0)`.
  """
  # A fresh tensor: TFP caches the inverse of tensors it produced, which would cut `x` off the tape.
  y = tf.identity(y)

  def inverse_and_log_d1(y):
    return bijector.inverse(y, **kwargs), bijector.inverse_log_det_jacobian(y, event_ndims=0, **kwargs)

  # None for `φ'` where autodiff cannot see through the inverse (a clear error); zero for a constant log-det.
  (x, _), (d1, dlog1), (d2, dlog2) = tapes.coordinatewise_derivatives(
      inverse_and_log_d1, y, unconnected_gradients=(tapes.NONE, tapes.ZERO),
      check=lambda first: _raise_if_not_differentiable(bijector, first[0]))
  # TFP reduces the per-coordinate log-det it has just cached, so this costs a sum.
  ildj = bijector.inverse_log_det_jacobian(y, event_ndims=layout.ranks, **kwargs)
  return ElementwisePullback(x, ildj, d1=d1, d2=d2, dlog1=dlog1, dlog2=dlog2, x_layout=layout)


def flat_autodiff_rule(bijector, y, layout, kwargs):
  """`AutodiffPullback` of any `bijector` at `y` (any event layout): the inverse as a function of flat points."""
  x_ranks = bijector.inverse_event_ndims(layout.ranks, **kwargs)
  flat_y = tf.identity(layout.flatten(y))  # Fresh: TFP's cache of sampled tensors would cut it off the tape.

  def summed_inverse(flat_y):
    x = bijector.inverse(layout.unflatten(flat_y), **kwargs)
    return tf.reduce_sum(events.layout_of(x, x_ranks).flatten(x))

  _, gradient = tapes.gradient(summed_inverse, flat_y)
  _raise_if_not_differentiable(bijector, gradient)
  # The layer's `x` and log-det at `y` itself, not at the tape's copy: TFP's cache answers them where `y` came out
  # of the layer's forward (the sampling pass: `x` exact where `y` is its rounding), and where the layer below is
  # this one's own inverse (`Chain([Invert(b), b])` at fresh points), that layer's `x` is then the very tensor
  # this one took, a round trip `registry.pullbacks` leaves out as TFP's `log_prob` does. From the copy, the
  # round trip was taken as two layers and lost what `b` rounds off: log q 7e-7 from the exact value where TFP's
  # is exact, at a `Chain([Invert(Ascending), Ascending])` of the long property profile.
  x = bijector.inverse(y, **kwargs)
  x_layout = events.layout_of(x, x_ranks)
  ildj = bijector.inverse_log_det_jacobian(y, event_ndims=layout.ranks, **kwargs)

  def inverse(points):
    """`points [*batch, n_y] -> (x [*batch, n_x], ildj [*batch])`, the layer on flat points."""
    structured = layout.unflatten(points)
    image = x_layout.flatten(bijector.inverse(structured, **kwargs))
    log_det = bijector.inverse_log_det_jacobian(structured, event_ndims=layout.ranks, **kwargs)
    # TFP's log-det of a constant-Jacobian layer is a scalar, and may be float32 for an empty `Chain`.
    return image, tf.broadcast_to(tf.cast(log_det, points.dtype), tf.shape(points)[:-1])

  return AutodiffPullback(inverse, flat_y, x, ildj, x_layout)


def _graph_cost(fn, values):
  """`(number of ops, whether it loops)` of `fn` traced alone at the shapes and dtypes of `values`, or None where
  it cannot be traced: a method the bijector does not implement, or eager-only code (a `.numpy()` call) in a
  bijector whose flow otherwise runs, which keeps the direction the fallback always took."""
  specs = tf.nest.map_structure(lambda t: tf.TensorSpec(t.shape, t.dtype), values)
  try:
    graph = tf.function(fn, autograph=False).get_concrete_function(specs).graph
  except Exception:  # pylint: disable=broad-except  (whatever tracing it alone raises: no choice is made from it)
    return None
  operations = graph.get_operations()
  return len(operations), any(op.type in _LOOPS for op in operations)


def forward_is_cheaper(bijector, y, x, layout, x_layout, kwargs):
  """Whether the fallback should differentiate `bijector.forward` at `x = bijector.inverse(y)` rather than its
  inverse at `y`: a square map whose inverse graph (log-det included) loops where its forward's does not, or has
  `INVERSE_COST_RATIO` times its ops. Both are traced once, alone, when the sweep is traced."""
  if layout.size != x_layout.size:
    return False
  inverse_cost = _graph_cost(
      lambda y: (bijector.inverse(y, **kwargs),
                 bijector.inverse_log_det_jacobian(y, event_ndims=layout.ranks, **kwargs)), y)
  forward_cost = _graph_cost(
      lambda x: (bijector.forward(x, **kwargs),
                 bijector.forward_log_det_jacobian(x, event_ndims=x_layout.ranks, **kwargs)), x)
  if inverse_cost is None or forward_cost is None:
    return False
  (inverse_ops, inverse_loops), (forward_ops, forward_loops) = inverse_cost, forward_cost
  if forward_loops:
    return False
  return inverse_loops or inverse_ops >= INVERSE_COST_RATIO * forward_ops


def inverted_forward_autodiff_rule(bijector, y, layout, kwargs):
  """The pullback of `bijector` at `y` from nested tapes on its forward map at `x = bijector.inverse(y)`: the
  flat autodiff pullback of `Invert(bijector)` at `x`, run backwards (`Pullback.inverted`)."""
  x = bijector.inverse(y, **kwargs)  # TFP's cache: the tensor the sweep's inverse pass took, no new op
  x_layout = events.layout_of(x, bijector.inverse_event_ndims(layout.ranks, **kwargs))
  return flat_autodiff_rule(tfb.Invert(bijector), x, x_layout, kwargs).inverted(x, x_layout)


@registry.register_fallback
def autodiff_rule(bijector, y, layout, kwargs):
  """The autodiff pullback of `bijector` at `y`: elementwise for a coordinatewise bijector, else flat, by tapes on
  the inverse or, where that is far cheaper, on the forward map (`forward_is_cheaper`)."""
  if is_coordinatewise(bijector) and layout.is_single:
    return elementwise_autodiff_rule(bijector, y, layout, kwargs)
  x = bijector.inverse(y, **kwargs)
  x_layout = events.layout_of(x, bijector.inverse_event_ndims(layout.ranks, **kwargs))
  if forward_is_cheaper(bijector, y, x, layout, x_layout, kwargs):
    return inverted_forward_autodiff_rule(bijector, y, layout, kwargs)
  return flat_autodiff_rule(bijector, y, layout, kwargs)


@registry.register_fallback_forward
def forward_autodiff_rule(bijector, x, layout, kwargs):
  """The autodiff pullback of `Invert(bijector)` at `x` (its forward map's four derivatives there) for a
  coordinatewise `bijector`, which the registry inverts to serve `bijector` at `forward(x)` from the exact `x`.

  None for any other bijector, whose inverted autodiff pullback would solve with its Jacobian at every step and
  could not be merged with its neighbours' tapes, and where autodiff cannot see through `bijector.forward`: the
  fallback at `forward(x)` then serves it as before.
  """
  if not (is_coordinatewise(bijector) and layout.is_single):
    return None
  try:
    return elementwise_autodiff_rule(tfb.Invert(bijector), x, layout, kwargs)
  except NotImplementedError:
    return None
