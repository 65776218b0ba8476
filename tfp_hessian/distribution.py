"""`TransformedDistribution` with the Hessian of its log density as a method."""

import tensorflow_probability as tfp

from tfp_hessian import sweep

__all__ = ["TransformedDistribution"]


class TransformedDistribution(tfp.distributions.TransformedDistribution):
  """Drop-in `tfd.TransformedDistribution` with `log_prob_hessian` and `log_prob_and_derivatives`.

  >>> flow = TransformedDistribution(tfd.MultivariateNormalDiag(tf.zeros(3)), tfb.Exp())
  >>> flow.log_prob_hessian(flow.sample(5)).shape
  TensorShape([5, 3, 3])
  """

  def log_prob_hessian(self, value, name="log_prob_hessian", **kwargs):
    """`[*batch, n, n]` Hessian of `log_prob(value, **kwargs)`; see `tfp_hessian.log_prob_hessian`."""
    return sweep.log_prob_hessian(self, value, name=name, **kwargs)

  def log_prob_and_derivatives(self, value, name="log_prob_and_derivatives", **kwargs):
    """Value, gradient and Hessian of `log_prob(value, **kwargs)`; see `tfp_hessian.log_prob_and_derivatives`."""
    return sweep.log_prob_and_derivatives(self, value, name=name, **kwargs)
