"""The TensorFlow methods timed (`METHODS`), the peers of other frameworks (`PEERS`), and forward-over-reverse.

A method is `make(distribution, kwargs of its log_prob) -> fn(z)`, `z` of shape [N, D]; all but log_prob return
[N, D, D] Hessians. `forward_over_reverse` is the matrix-free product of the same family, `H v`, timed against
`tfp_hessian.log_prob_hvp` by `benchmarks/large_d.py`. `ours` is the default call, or its sweep forced to run one
way (`execution.forced`), for the scripts that compare ways of running it.
"""

import contextlib
import dataclasses

import tensorflow as tf

import tfp_hessian
from tfp_hessian import execution, reference

__all__ = ["METHODS", "PEERS", "Method", "forward_over_reverse", "label", "ours"]


def _xla_dynamic_update_slice_gradient(op, grad):
  """The gradient TensorFlow lacks of `XlaDynamicUpdateSlice`, which forward-over-reverse under XLA needs.

  Traced for XLA (`jit_compile=True`), the gradient of `Slice` (as of a `tf.concat`, like RealNVP's) is an
  `XlaDynamicUpdateSlice`; `ForwardAccumulator` takes an op's JVP as the transpose of its gradient, so under the
  accumulator the gradient of a `Slice` on the tape needs this op's gradient too. TensorFlow registers none, and the
  trace fails ("gradient registry has no entry for: XlaDynamicUpdateSlice"), unless the non-XLA method traced the
  same JVP first (TensorFlow caches it per op and shapes, not per context). Written with `Slice` and `Pad` only,
  which `vectorized_map` vectorizes: the JVP of the `Slice` is then the slice of its tangent, as without XLA.
  """
  operand, update, indices = op.inputs
  index_type = indices.dtype
  update_shape = tf.shape(update, out_type=index_type)
  # XLA clamps the indices so that the update fits in the operand.
  indices = tf.clip_by_value(indices, tf.zeros_like(indices), tf.shape(operand, out_type=index_type) - update_shape)
  update_grad = tf.slice(grad, indices, update_shape)
  paddings = tf.stack([indices, tf.shape(grad, out_type=index_type) - indices - update_shape], axis=1)
  return grad - tf.pad(update_grad, paddings), update_grad, None


try:
  tf.RegisterGradient("XlaDynamicUpdateSlice")(_xla_dynamic_update_slice_gradient)
except KeyError:  # a TensorFlow that registers it
  pass


def forward_over_reverse(distribution, z, v):
  """`H v` as `tfp_hessian.log_prob_hvp`, by a `ForwardAccumulator` over the tape gradient.

  Every point must be its own (broadcast to the distribution's batch shape, as `sweep.points` does): the tape
  differentiates the summed log density, which is per point only then. Fails inside `tf.function` on flows with a
  `tf.while_loop` in `log_prob` (TensorFlow 2.21 raises a `SystemError` while building the tape gradient under the
  accumulator; see `tfp_hessian/hvp.py`'s docstring for why reverse-over-reverse is the package's choice).
  """
  with tf.autodiff.ForwardAccumulator(primals=z, tangents=v) as accumulator:
    with tf.GradientTape() as tape:
      tape.watch(z)
      log_prob = distribution.log_prob(z)
    gradient = tape.gradient(log_prob, z, unconnected_gradients=tf.UnconnectedGradients.ZERO)
  return accumulator.jvp(gradient, unconnected_gradients=tf.UnconnectedGradients.ZERO)


def _forward_over_reverse_hessian(distribution, kwargs):
  """Hessian columns `∂/∂t ∇ log q(z + t e_i)` by a `ForwardAccumulator` over a tape, `vectorized_map` over i."""

  def hessian(z):
    n, d = z.shape

    def column(tangent):  # tangent: [N, D], the same basis vector e_i for every point.
      with tf.autodiff.ForwardAccumulator(z, tangent) as accumulator:
        with tf.GradientTape() as tape:
          tape.watch(z)
          log_prob = tf.reduce_sum(distribution.log_prob(z, **kwargs))
        gradient = tape.gradient(log_prob, z)
      return accumulator.jvp(gradient)

    tangents = tf.broadcast_to(tf.eye(d, dtype=z.dtype)[:, tf.newaxis, :], [d, n, d])
    columns = tf.vectorized_map(column, tangents)  # [D, N, D]: columns[i, n] = H_n e_i
    return tf.transpose(columns, [1, 2, 0])

  return hessian


def _function(fn, jit_compile=False):
  return tf.function(fn, autograph=False, jit_compile=jit_compile)


@dataclasses.dataclass(frozen=True)
class Method:
  label: str
  make: object  # (distribution, kwargs of its log_prob) -> fn(z)
  hessian: bool = True
  alternative: bool = True  # one of the other ways to the same Hessian (not ours, not log_prob)
  # Time grows with the points N at least as N^points_power: tf.hessians differentiates the sum over the points,
  # so its Hessian is [N, D, N, D].
  points_power: float = 1.


def ours(distribution, kwargs=None, jit_compile=False, **forced):
  """`log_prob_hessian(distribution, z, **kwargs)` in a `tf.function` (`jit_compile`: all of it compiled by XLA):
  the default call, or with `forced` (the arguments of `execution.forced`: `xla`, `pull_back_xla`, `chunks`) its
  sweep forced to run that way."""
  kwargs = kwargs or {}

  def call(z):
    with execution.forced(**forced) if forced else contextlib.nullcontext():
      return tfp_hessian.log_prob_hessian(distribution, z, **kwargs)

  return _function(call, jit_compile)


def _tapes(jit_compile=False):
  return lambda flow, kwargs: _function(lambda z: reference.tape_hessian(flow, z, **kwargs), jit_compile)


METHODS = {
    "log_prob": Method("log_prob alone (tf.function)",
                       lambda flow, kwargs: _function(lambda z: flow.log_prob(z, **kwargs)), hessian=False,
                       alternative=False),
    "ours": Method("ours: log_prob_hessian (tf.function)", ours, alternative=False),
    "ours_xla": Method("ours + XLA (jit_compile)", lambda flow, kwargs: ours(flow, kwargs, jit_compile=True),
                       alternative=False),
    "tf_hessians": Method("tf.hessians (tf.function)",
                          lambda flow, kwargs: _function(lambda z: reference.naive_hessian(flow, z, **kwargs)),
                          points_power=2.),
    "tapes": Method("nested tapes (tf.function)", _tapes()),
    "tapes_xla": Method("nested tapes + XLA", _tapes(jit_compile=True)),
    "fwd_rev": Method("fwd-over-rev, vectorized_map (tf.function)",
                      lambda flow, kwargs: _function(_forward_over_reverse_hessian(flow, kwargs))),
    "fwd_rev_xla": Method("fwd-over-rev, vectorized_map + XLA",
                          lambda flow, kwargs: _function(_forward_over_reverse_hessian(flow, kwargs),
                                                         jit_compile=True)),
}

PEERS = {"jax": "JAX: jit(vmap(hessian(log_prob))), TFP JAX substrate"}


def label(method):
  """The label of a method of `METHODS` or a peer of `PEERS`, as the tables print it."""
  return METHODS[method].label if method in METHODS else PEERS.get(method, method)
