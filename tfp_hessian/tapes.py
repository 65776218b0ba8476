"""Derivatives by `tf.GradientTape`, written once for every autodiff path of the package.

Second derivatives take two nested tapes: the inner one records `fn(x)` and gives its gradient, the outer one
records that gradient so that it can be differentiated again. What is differentiated again is all that differs:

- `per_point_hessian`: the Jacobian of the gradient summed over the batch, `[*batch, n, n]` (fallback layers,
  bases without a closed form, conditioner networks);
- `batch_hessian`: `batch_jacobian` of the gradient, `[N, n, n]`, with the gradient (the tape reference,
  `reference.py`);
- `coordinatewise_derivatives`: the gradient of the gradient, for functions of each coordinate alone;
- `hessian_vector_product` and `linearized_hessian_vector_product`: the gradient of `∇f · v` (reverse over
  reverse), or of `∇f` with output gradient `v` on a tape kept for many `v`.

First derivatives take one tape: `gradient`, and `per_point_jacobian` (the Jacobian of outputs summed over the
batch, batch moved first).

Points are independent everywhere: `fn` gives per-point values or their sum, and derivatives of sums over the
batch are per-point derivatives. `x` is watched as given; a caller whose `x` TFP may have cached (TFP caches the
inverse of tensors it produced, which would cut them off the tapes) passes a fresh `tf.identity(x)`.
"""

import tensorflow as tf

__all__ = ["batch_first", "batch_hessian", "coordinatewise_derivatives", "gradient", "hessian_vector_product",
           "linearized_hessian_vector_product", "per_point_hessian", "per_point_jacobian", "use_pfor"]

ZERO = tf.UnconnectedGradients.ZERO
NONE = tf.UnconnectedGradients.NONE

# Called eagerly, a Jacobian vectorized by pfor traces a new graph on every call (1.5–3 s for the test flows, seen),
# while its loop of n gradients replays the tape n times: 2–3× faster at n = 5 (measured on the tape reference).
# Kept up to n = 32, where n replays should still cost less than one trace. Inside `tf.function` pfor is traced
# once, with the function, and vectorizes the n gradients: kept there.
EAGER_LOOP_MAX_SIZE = 32


def use_pfor(size):
  """Whether a Jacobian with `size` columns (None: unknown) is best vectorized by pfor here and now."""
  return not tf.executing_eagerly() or size is None or size > EAGER_LOOP_MAX_SIZE


def batch_first(jacobian, batch_rank):
  """`[m, *batch, n]` (a Jacobian of sums over the batch) to `[*batch, m, n]`."""
  return tf.transpose(jacobian, list(range(1, batch_rank + 1)) + [0, batch_rank + 1])


def gradient(fn, x, unconnected_gradients=NONE, has_aux=False):
  """`(fn(x), ∇ fn(x))` by one tape.

  Args:
    fn: `x -> value` (per point or summed: the gradient is that of the sum), or with `has_aux`
      `x -> (value, aux)`, `aux` not differentiated.
    x: the tensor to differentiate with respect to.
    unconnected_gradients: `NONE` gives None where `fn` does not depend on `x` (a caller's check), `ZERO` zeros.
    has_aux: whether `fn` returns `(value, aux)`.
  """
  with tf.GradientTape() as tape:
    tape.watch(x)
    output = fn(x)
  value = output[0] if has_aux else output
  return output, tape.gradient(value, x, unconnected_gradients=unconnected_gradients)


def per_point_jacobian(fn, x, with_gradient=False):
  """`(outputs, J [*batch, m, n], ∇s)`: per-point Jacobians of `fn: x [*batch, n] -> outputs [*batch, m]`.

  Args:
    fn: `x -> outputs`, or with `with_gradient` `x -> (outputs, s)`, `s [*batch]` per-point scalars.
    x: `[*batch, n]`.
    with_gradient: also give `∇s [*batch, n]` (zero where unconnected) from the same recording; else None.
  """
  batch_rank = x.shape.rank - 1
  pfor = use_pfor(x.shape[-1])
  with tf.GradientTape(persistent=with_gradient or not pfor) as tape:
    tape.watch(x)
    outputs, scalars = fn(x) if with_gradient else (fn(x), None)
    summed = tf.reduce_sum(outputs, axis=list(range(batch_rank)))
  jacobian = batch_first(tape.jacobian(summed, x, unconnected_gradients=ZERO, experimental_use_pfor=pfor),
                         batch_rank)
  scalars_gradient = tape.gradient(scalars, x, unconnected_gradients=ZERO) if with_gradient else None
  return outputs, jacobian, scalars_gradient


def _recorded_gradient(fn, x, then=None, persistent=False, unconnected_gradients=NONE, output_gradients=None,
                       check=None):
  """`(value, gradient, outer, then(gradient))`: `value = fn(x)` and its gradient, recorded on the tape `outer`.

  Args:
    fn: `x -> value`, or a tuple of values (several functions recorded once; their gradients are a tuple too).
    x: the tensor to differentiate with respect to, watched by both tapes.
    then: what to differentiate again, computed from the gradient while `outer` records; None for nothing.
    persistent: whether `outer` may be differentiated more than once.
    unconnected_gradients: for the inner gradient; a tuple, one for each value, where `fn` gives a tuple.
    output_gradients: weights of `value`'s entries in the inner gradient (a single `value` only).
    check: called with the gradient before anything differentiates it (to raise a clear error for a None).
  """
  several = tf.nest.is_nested(unconnected_gradients)
  with tf.GradientTape(persistent=persistent) as outer:
    outer.watch(x)
    with tf.GradientTape(persistent=several) as inner:
      inner.watch(x)
      value = fn(x)
    grad = tf.nest.map_structure(
        lambda target, unconnected: inner.gradient(target, x, output_gradients=output_gradients,
                                                   unconnected_gradients=unconnected),
        value, unconnected_gradients)
    if check is not None:
      check(grad)
    recorded = None if then is None else then(grad)
  return value, grad, outer, recorded


def per_point_hessian(fn, x, unconnected_gradients=ZERO, output_gradients=None, check=None):
  """`(fn(x), ∇ [*batch, n], ∇² [*batch, n, n])` at every point of `x [*batch, n]`.

  The Hessians are the Jacobian of the gradient summed over the batch, `[n, *batch, n]`, batch moved first:
  one recorded pass and `n` vectorized backward passes, whatever the batch.

  Args:
    fn: `x -> values`, per point or their sum; with `output_gradients`, `x -> outputs [*batch, m]`.
    x: `[*batch, n]`.
    unconnected_gradients: for the gradient (`NONE` lets `check` see a `fn` autodiff cannot differentiate).
    output_gradients: `w [*batch, m]`: the gradient and Hessians are then of `Σ_k w_k fn_k`.
    check: called with the gradient before it is differentiated again.
  """
  batch_rank = x.shape.rank - 1
  pfor = use_pfor(x.shape[-1])
  value, grad, outer, summed = _recorded_gradient(
      fn, x, lambda g: tf.reduce_sum(g, axis=list(range(batch_rank))), persistent=not pfor,
      unconnected_gradients=unconnected_gradients, output_gradients=output_gradients, check=check)
  return value, grad, batch_first(outer.jacobian(summed, x, unconnected_gradients=ZERO, experimental_use_pfor=pfor),
                                  batch_rank)


def batch_hessian(fn, x, experimental_use_pfor=True):
  """`(∇ [N, n], ∇² [N, n, n])` at `x [N, n]`: the gradient of `fn` (per point or summed) and its
  `batch_jacobian`, from one recording.

  `experimental_use_pfor=False` replays the tape once per coordinate instead of vectorizing (no trace).
  """
  _, grad, outer, _ = _recorded_gradient(fn, x, persistent=True)
  return grad, outer.batch_jacobian(grad, x, experimental_use_pfor=experimental_use_pfor)


def coordinatewise_derivatives(fn, x, unconnected_gradients=NONE, check=None):
  """`(fn(x), f', f'')` of a function acting on each coordinate alone, entry by entry, shaped as `fn(x)`.

  With `fn(x)_i = f_i(x_i)`, the gradient of the sum is the tensor of `f_i'(x_i)` and the gradient of its sum
  that of `f_i''(x_i)`: two backward passes, whatever the size.

  Args:
    fn: `x -> f(x)`, or a tuple of such values (all recorded once; derivatives are then tuples).
    x: any shape.
    unconnected_gradients: for `f'`, one for each value where `fn` gives a tuple; `f''` is zero where unconnected.
    check: called with `f'` before it is differentiated again.
  """
  several = tf.nest.is_nested(unconnected_gradients)
  value, d1, outer, _ = _recorded_gradient(fn, x, persistent=several, unconnected_gradients=unconnected_gradients,
                                           check=check)
  d2 = tf.nest.map_structure(lambda d: outer.gradient(d, x, unconnected_gradients=ZERO), d1)
  return value, d1, d2


def hessian_vector_product(fn, x, v):
  """`∇²f(x) · v` per point, `[*batch, n]`: the gradient of `∇f(x) · v` (reverse over reverse).

  Args:
    fn: `x [*batch, n] -> f` per point or summed; each point its own.
    x: `[*batch, n]`.
    v: `[*batch, n]`.
  """
  _, _, outer, directional = _recorded_gradient(fn, x, lambda g: tf.reduce_sum(g * v), unconnected_gradients=ZERO)
  return outer.gradient(directional, x, unconnected_gradients=ZERO)


def linearized_hessian_vector_product(fn, x):
  """The map `v ↦ ∇²f(x) · v`, `[*batch, n] -> [*batch, n]`, with `∇f(x)` recorded once on a persistent tape.

  Each call is one backward pass through the recorded gradient, with output gradient `v`.
  """
  _, grad, outer, _ = _recorded_gradient(fn, x, persistent=True, unconnected_gradients=ZERO)
  return lambda v: outer.gradient(grad, x, output_gradients=v, unconnected_gradients=ZERO)
