"""Hessians at fresh samples, without inverting the flow.

Sampling pushes base draws forward through every layer; TFP caches each layer's (input, output) pair, so the
sweep that follows looks every inverse up instead of computing it. For an IAF (`Invert(MAF)`) the inverse is a
D-step sequential loop: here it never runs, and the IAF's pullback comes from its forward (MADE) pass by the
second-order inverse-function theorem (`InvertedPullback`, DESIGN.md section 3).
"""

import tensorflow as tf

from tfp_hessian import sweep as sweep_lib

__all__ = ["sample_and_log_prob_derivatives", "sample_and_log_prob_hessian"]


def sample_and_log_prob_derivatives(distribution, sample_shape=(), seed=None, name="sample_and_log_prob_derivatives"):
  """Draws `z ~ distribution` and returns `(z, LogProbDerivatives)` at it, from the sampling pass.

  Args:
    distribution: as in `tfp_hessian.log_prob_and_derivatives`.
    sample_shape: shape of the draw (`[*sample_shape, *batch, D]` points).
    seed: passed to `distribution.sample`.
    name: name scope of the ops.

  Returns:
    `(z, LogProbDerivatives(log_prob, gradient, hessian))`, the same values `log_prob_and_derivatives(distribution,
    z)` gives (up to rounding), without running any layer's inverse.
  """
  with tf.name_scope(name):
    sweep_lib.check_distribution(distribution)
    z = distribution.sample(sample_shape, seed=seed)
    return z, sweep_lib.sweep(distribution, z)


def sample_and_log_prob_hessian(distribution, sample_shape=(), seed=None, name="sample_and_log_prob_hessian"):
  """Draws `z ~ distribution` and returns `(z, hessian)`, the `[*sample_shape, *batch, D, D]` Hessians at `z`.

  >>> z, hessian = sample_and_log_prob_hessian(iaf, 16, seed=1)   # no sequential inverse is run
  """
  z, derivatives = sample_and_log_prob_derivatives(distribution, sample_shape, seed=seed, name=name)
  return z, derivatives.hessian
