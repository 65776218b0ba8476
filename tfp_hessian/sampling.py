"""Hessians at fresh samples, without inverting the flow.

Sampling pushes base draws forward through every layer; TFP caches each layer's (input, output) pair, so the
sweep that follows looks every inverse up instead of computing it. For an IAF (`Invert(MAF)`) the inverse is a
D-step sequential loop: here it never runs, and the IAF's pullback comes from its forward (MADE) pass by the
second-order inverse-function theorem (`InvertedPullback`, DESIGN.md section 3).
"""

import tensorflow as tf

from tfp_hessian import compiled, private_api
from tfp_hessian import sweep as sweep_lib

__all__ = ["sample_and_log_prob_derivatives", "sample_and_log_prob_hessian"]


@tf.autograph.experimental.do_not_convert  # graph code as it stands (see `compiled.py`)
def sample_and_log_prob_derivatives(distribution, sample_shape=(), seed=None, name="sample_and_log_prob_derivatives",
                                    **kwargs):
  """Draws `z ~ distribution` and returns `(z, LogProbDerivatives)` at it, from the sampling pass.

  Args:
    distribution: as in `tfp_hessian.log_prob_and_derivatives`.
    sample_shape: shape of the draw (`[*sample_shape, *batch, *event]` points).
    seed: passed to `distribution.sample`.
    name: name scope of the ops.
    **kwargs: passed to `distribution.sample` and to the sweep, as `sample` and `log_prob` take them
      (`bijector_kwargs`, `distribution_kwargs`): the condition of a conditional flow.

  Returns:
    `(z, LogProbDerivatives(log_prob, gradient, hessian))`, the same values `log_prob_and_derivatives(distribution,
    z)` gives (up to rounding), without running any layer's inverse.
  """
  if isinstance(seed, (tuple, list)):
    # A stateless seed as a tensor: the compiled function is then traced once for every seed.
    seed = tf.convert_to_tensor(seed, tf.int32)
  return _sample_and_sweep(distribution, sample_shape, seed, name, **kwargs)


@compiled.when_eager
def _sample_and_sweep(distribution, sample_shape, seed, name, **kwargs):
  with tf.name_scope(name):
    distribution = private_api.resolve_deferred(distribution)
    layout = sweep_lib.check_distribution(distribution, kwargs)
    z = distribution.sample(sample_shape, seed=seed, **kwargs)
    return z, sweep_lib.sweep(distribution, z, layout, kwargs)


@tf.autograph.experimental.do_not_convert  # graph code as it stands (see `compiled.py`)
def sample_and_log_prob_hessian(distribution, sample_shape=(), seed=None, name="sample_and_log_prob_hessian",
                                **kwargs):
  """Draws `z ~ distribution` and returns `(z, hessian)`, the `[*sample_shape, *batch, n, n]` Hessians at `z`.

  >>> z, hessian = sample_and_log_prob_hessian(iaf, 16, seed=1)   # no sequential inverse is run
  """
  z, derivatives = sample_and_log_prob_derivatives(distribution, sample_shape, seed=seed, name=name, **kwargs)
  return z, derivatives.hessian
