"""Rules for coordinatewise bijectors: each states only the scalar derivatives of its maps.

For the inverse `x_i = φ(y_i)` an inverse rule returns, at `y`, the four vectors

    φ'(y),  φ''(y),  (log|φ'|)'(y) = φ''/φ',  (log|φ'|)''(y) = φ'''/φ' - (φ''/φ')²

(``None`` for a term that is identically zero); a forward rule returns the same four for the forward map
`ψ = φ⁻¹` at `x`, which is what `Invert` of the bijector needs. The point and the log-det value come from the
bijector's own methods, so TFP's numerics and `validate_args` checks apply unchanged; the diagonal pullback and
the event reduction live in `ElementwisePullback`.

Each formula is written in terms that stay accurate at the edge of the support (`expm1` for softplus, the two
distances `p = y - low` and `q = high - y` for sigmoid, `(1 - y)(1 + y)` for tanh, `sigmoid(±x)` and `1/cosh²`
for the forward maps).
"""

import math

import numpy as np
import tensorflow as tf
import tensorflow_probability as tfp

from tfp_hessian import registry
from tfp_hessian.pullback import ElementwisePullback

tfb = tfp.bijectors


def elementwise_rule(*bijector_classes, support=None):
  """Registers `derivatives(bijector, y, x) -> (φ', φ'', (log|φ'|)', (log|φ'|)'')` of the inverse at `y`.

  The rule serves events of any rank: the derivatives are elementwise in the points' own shape, and the log-det
  is reduced over the event's dimensions.

  Args:
    *bijector_classes: the TFP classes the rule serves.
    support: optional `(bijector, y) -> assertions` that `y` lies in the inverse's domain, for bijectors whose
      TFP class checks nothing there; they run only under `validate_args=True`, ahead of the log-det and the
      derivatives (never of `x`, which would cut TFP's cache of the inverse).
  """

  def decorate(derivatives):

    @registry.register(*bijector_classes, events="coordinatewise")
    def rule(bijector, y, layout, kwargs):
      x = bijector.inverse(y, **kwargs)
      ildj = bijector.inverse_log_det_jacobian(y, event_ndims=layout.ranks, **kwargs)
      terms = derivatives(bijector, y, x)
      if support is not None and bijector.validate_args:
        with tf.control_dependencies(support(bijector, y)):
          ildj = tf.identity(ildj)
          terms = [None if t is None else tf.identity(t) for t in terms]
      return ElementwisePullback(x, ildj, *terms, x_layout=layout)

    return derivatives

  return decorate


def elementwise_forward_rule(*bijector_classes):
  """Registers `derivatives(bijector, x, y) -> (ψ', ψ'', (log|ψ'|)', (log|ψ'|)'')` of the forward map at `x`."""

  def decorate(derivatives):

    @registry.register_forward(*bijector_classes)
    def rule(bijector, x, layout, kwargs):
      y = bijector.forward(x, **kwargs)
      fldj = bijector.forward_log_det_jacobian(x, event_ndims=layout.ranks, **kwargs)
      return ElementwisePullback(y, fldj, *derivatives(bijector, x, y), x_layout=layout)

    return derivatives

  return decorate


def _param(value, y):
  return None if value is None else tf.cast(value, y.dtype)


def _assert_inside(bijector, y, low=None, high=None):
  """Assertions that `low < y < high` (open bounds, either may be None), naming the bijector."""
  what = f"{type(bijector).__name__} bijector {bijector.name!r}: the inverse's input must be"
  assertions = []
  if low is not None:
    assertions.append(tf.debugging.assert_greater(y, tf.cast(low, y.dtype), message=f"{what} > {low}"))
  if high is not None:
    assertions.append(tf.debugging.assert_less(y, tf.cast(high, y.dtype), message=f"{what} < {high}"))
  return assertions


def _bound(value):
  """A printable bound: the number for a constant, else the tensor (its name appears in the message)."""
  static = tf.get_static_value(value)
  return value if static is None or np.ndim(static) else float(static)


@elementwise_forward_rule(tfb.Identity)
@elementwise_rule(tfb.Identity)
def _identity(bijector, y, x):
  del bijector, y, x
  return None, None, None, None


@elementwise_rule(tfb.Exp)
def _exp(bijector, y, x):
  # φ = log y.
  del bijector, x
  r = tf.math.reciprocal(y)
  return r, -r * r, -r, r * r


@elementwise_rule(tfb.Expm1, support=lambda bijector, y: _assert_inside(bijector, y, low=-1.))
def _expm1(bijector, y, x):
  # φ = log1p y.
  del bijector, x
  r = tf.math.reciprocal(1 + y)
  return r, -r * r, -r, r * r


@elementwise_rule(tfb.Softplus, support=lambda bijector, y: _assert_inside(
    bijector, y, low=0. if bijector.low is None else _bound(bijector.low)))
def _softplus(bijector, y, x):
  # φ = c·log(expm1(t)) with t = (y - low)/c. With e = exp(-t) and s = 1 - e = -expm1(-t) (exact for small
  # t, where 1 - exp(-t) would cancel):  φ' = 1/s,  φ'' = -e/(c s²),  (log φ')' = -e/(c s),
  # (log φ')'' = e/(c s)².
  del x
  low = _param(bijector.low, y)
  c = _param(bijector.hinge_softness, y)
  t = y if low is None else y - low
  if c is not None:
    t = t / c
  e = tf.exp(-t)
  s = -tf.math.expm1(-t)
  dlog1 = -e / s
  dlog2 = e / (s * s)
  if c is not None:
    dlog1, dlog2 = dlog1 / c, dlog2 / (c * c)
  return tf.math.reciprocal(s), dlog1 / s, dlog1, dlog2


@elementwise_rule(tfb.Sigmoid, support=lambda bijector, y: _assert_inside(
    bijector, y, *((0., 1.) if bijector.low is None else (_bound(bijector.low), _bound(bijector.high)))))
def _sigmoid(bijector, y, x):
  # φ = log(p/q) with p = (y - low)/w, q = (high - y)/w, w = high - low. Both distances are formed from y
  # directly, so neither edge loses digits to 1 - p:  φ' = 1/(w p q),  (log φ')' = (p - q)/(w p q),
  # φ'' = φ'·(log φ')',  (log φ')'' = (1/p² + 1/q²)/w².
  del x
  low, high = _param(bijector.low, y), _param(bijector.high, y)
  if low is None:
    p, q, w = y, 1 - y, None
  else:
    w = high - low
    p, q = (y - low) / w, (high - y) / w
  d1 = tf.math.reciprocal(p * q)
  dlog1 = (p - q) * d1
  dlog2 = tf.math.reciprocal(p * p) + tf.math.reciprocal(q * q)
  if w is not None:
    d1, dlog1, dlog2 = d1 / w, dlog1 / w, dlog2 / (w * w)
  return d1, d1 * dlog1, dlog1, dlog2


@elementwise_rule(tfb.Tanh, support=lambda bijector, y: _assert_inside(bijector, y, low=-1., high=1.))
def _tanh(bijector, y, x):
  # φ = atanh y, with 1 - y² formed as (1 - y)(1 + y) so neither edge cancels.
  del bijector, x
  d1 = tf.math.reciprocal((1 - y) * (1 + y))
  dlog1 = 2 * y * d1
  return d1, d1 * dlog1, dlog1, 2 * (1 + y * y) * d1 * d1


@elementwise_rule(tfb.Sinh)
def _sinh(bijector, y, x):
  # φ = asinh y:  φ' = (1 + y²)^(-1/2),  (log φ')' = -y/(1 + y²),  (log φ')'' = (y² - 1)/(1 + y²)².
  # y² overflows long before these do (|y| > 1e154 in float64, 1e19 in float32), so y is scaled by
  # m = max(1, |y|): with u = y/m, w = 1/m and q = u² + w² = (1 + y²)/m² ∈ [1, 2],
  # φ' = w/√q,  (log φ')' = -u w/q,  (log φ')'' = (u² - w²) w²/q². For |y| ≤ 1 (m = 1) these are the
  # formulas above.
  del bijector, x
  m = tf.maximum(tf.abs(y), tf.ones([], y.dtype))
  u, w = y / m, tf.math.reciprocal(m)
  q = u * u + w * w
  d1 = w / tf.sqrt(q)
  dlog1 = -u * w / q
  return d1, d1 * dlog1, dlog1, (u * u - w * w) * (w / q) * (w / q)


def _sinh_arcsinh_multiplier(tailweight):
  """TFP's output multiplier `m = 2 / sinh(asinh(2) δ)` of `SinhArcsinh` (so `2 ↦ 2` at zero skewness), as its
  private `_output_multiplier` computes it, in the dtype of `tailweight`."""
  two = tf.constant(2., tailweight.dtype)
  return two / tf.sinh(tf.asinh(two) * tailweight)


@elementwise_rule(tfb.SinhArcsinh)
def _sinh_arcsinh(bijector, y, x):
  # φ = sinh(u) with u = asinh(s)/δ - ε and s = y/m (m is TFP's output multiplier). With
  # u' = 1/(m δ √(1+s²)) and u'' = -s u'/(m (1+s²)):  φ' = cosh(u) u',  φ'' = sinh(u) u'² + cosh(u) u'',
  # (log φ')' = tanh(u) u' + u''/u',  (log φ')'' = u'²/cosh²(u) + tanh(u) u'' - (1 - s²)/(m² (1+s²)²).
  del x
  tailweight = tf.cast(bijector.tailweight, y.dtype)
  skewness = tf.cast(bijector.skewness, y.dtype)
  m = _sinh_arcsinh_multiplier(tailweight)
  s = y / m
  r = tf.math.reciprocal(1 + s * s)
  u = tf.asinh(s) / tailweight - skewness
  du = tf.sqrt(r) / (m * tailweight)
  du_ratio = -s * r / m  # u''/u'
  tanh_u = tf.tanh(u)
  d1 = tf.cosh(u) * du
  d2 = d1 * (tanh_u * du + du_ratio)
  dlog1 = tanh_u * du + du_ratio
  dlog2 = (du * du * (1 - tanh_u * tanh_u) + tanh_u * du * du_ratio
           - (1 - s * s) * r * r / (m * m))
  return d1, d2, dlog1, dlog2


@elementwise_rule(tfb.Power)
def _power(bijector, y, x):
  # φ = sign(y)|y|^r with r = 1/power (odd integer powers take the whole line, others y > 0):
  # φ' = r|y|^(r-1),  (log φ')' = (r - 1)/y,  (log φ')'' = -(r - 1)/y².
  del x
  r = tf.math.reciprocal(tf.cast(bijector.power, y.dtype))
  d1 = r * tf.pow(tf.abs(y), r - 1)
  dlog1 = (r - 1) / y
  return d1, d1 * dlog1, dlog1, -dlog1 / y


@elementwise_rule(tfb.NormalCDF)
def _normal_cdf(bijector, y, x):
  # φ = Φ⁻¹(y): φ' = 1/ϕ(x) = √(2π) exp(x²/2), φ'' = x φ'², (log φ')' = x φ', (log φ')'' = (1 + x²) φ'².
  del bijector, y
  d1 = math.sqrt(2 * math.pi) * tf.exp(0.5 * x * x)
  dlog1 = x * d1
  return d1, d1 * dlog1, dlog1, (1 + x * x) * d1 * d1


@elementwise_rule(tfb.Softsign)
def _softsign(bijector, y, x):
  # φ = y/(1 - |y|):  φ' = 1/a², φ'' = 2 sign(y)/a³, (log φ')' = 2 sign(y)/a, (log φ')'' = 2/a², a = 1 - |y|.
  del bijector, x
  a = tf.math.reciprocal(1 - tf.abs(y))
  dlog1 = 2 * tf.sign(y) * a
  d1 = a * a
  return d1, d1 * dlog1, dlog1, 2 * a * a


@elementwise_rule(tfb.Square)
def _square(bijector, y, x):
  # φ = √y on y ≥ 0:  φ' = 1/(2√y),  (log φ')' = -1/(2y),  (log φ')'' = 1/(2y²).
  del bijector
  dlog1 = -0.5 / y
  d1 = 0.5 / x
  return d1, d1 * dlog1, dlog1, -dlog1 / y


# Forward maps ψ at x, for `Invert`. (`tfb.Log` is `Invert(Exp)` and is served by `_exp_forward`.)


@elementwise_forward_rule(tfb.Exp, tfb.Expm1)
def _exp_forward(bijector, x, y):
  # ψ = exp x (or expm1 x): ψ' = ψ'' = exp x, log ψ' = x.
  del bijector, y
  e = tf.exp(x)
  return e, e, tf.ones_like(x), None


@elementwise_forward_rule(tfb.Softplus)
def _softplus_forward(bijector, x, y):
  # ψ = low + c·softplus(x/c): ψ' = σ(x/c), ψ'' = σ σ̄/c, (log ψ')' = σ̄/c, (log ψ')'' = -σ σ̄/c², with
  # σ̄ = σ(-x/c) formed directly so neither tail cancels.
  del y
  c = _param(bijector.hinge_softness, x)
  t = x if c is None else x / c
  sigma, sigma_bar = tf.sigmoid(t), tf.sigmoid(-t)
  dlog1, dlog2 = sigma_bar, -sigma * sigma_bar
  if c is not None:
    dlog1, dlog2 = dlog1 / c, dlog2 / (c * c)
  return sigma, sigma * dlog1, dlog1, dlog2


@elementwise_forward_rule(tfb.Sigmoid)
def _sigmoid_forward(bijector, x, y):
  # ψ = low + w σ(x): ψ' = w σ σ̄, (log ψ')' = σ̄ - σ, (log ψ')'' = -2 σ σ̄.
  del y
  sigma, sigma_bar = tf.sigmoid(x), tf.sigmoid(-x)
  d1 = sigma * sigma_bar
  if bijector.low is not None:
    d1 = d1 * (_param(bijector.high, x) - _param(bijector.low, x))
  dlog1 = sigma_bar - sigma
  return d1, d1 * dlog1, dlog1, -2 * sigma * sigma_bar


@elementwise_forward_rule(tfb.Tanh)
def _tanh_forward(bijector, x, y):
  # ψ = tanh x: ψ' = 1/cosh² x (not 1 - tanh² x, which cancels in the tails), (log ψ')' = -2 tanh x,
  # (log ψ')'' = -2ψ'.
  del bijector, y
  d1 = tf.math.reciprocal(tf.square(tf.cosh(x)))
  dlog1 = -2 * tf.tanh(x)
  return d1, d1 * dlog1, dlog1, -2 * d1


@elementwise_forward_rule(tfb.Sinh)
def _sinh_forward(bijector, x, y):
  # ψ = sinh x: ψ' = cosh x, ψ'' = sinh x, (log ψ')' = tanh x, (log ψ')'' = 1/cosh² x.
  del bijector, y
  cosh = tf.cosh(x)
  return cosh, tf.sinh(x), tf.tanh(x), tf.math.reciprocal(tf.square(cosh))


@elementwise_forward_rule(tfb.SinhArcsinh)
def _sinh_arcsinh_forward(bijector, x, y):
  # ψ = m sinh(v), v = (asinh x + ε)δ, v' = δ/√(1+x²), v''/v' = -x/(1+x²):
  # ψ' = m cosh(v) v', (log ψ')' = tanh(v) v' + v''/v',
  # (log ψ')'' = v'²/cosh²(v) + tanh(v) v' (v''/v') - (1 - x²)/(1+x²)².
  del y
  tailweight = tf.cast(bijector.tailweight, x.dtype)
  skewness = tf.cast(bijector.skewness, x.dtype)
  m = _sinh_arcsinh_multiplier(tailweight)
  r = tf.math.reciprocal(1 + x * x)
  v = (tf.asinh(x) + skewness) * tailweight
  dv = tailweight * tf.sqrt(r)
  dv_ratio = -x * r
  tanh_v = tf.tanh(v)
  d1 = m * tf.cosh(v) * dv
  dlog1 = tanh_v * dv + dv_ratio
  dlog2 = dv * dv * (1 - tanh_v * tanh_v) + tanh_v * dv * dv_ratio - (1 - x * x) * r * r
  return d1, d1 * dlog1, dlog1, dlog2


@elementwise_forward_rule(tfb.Power)
def _power_forward(bijector, x, y):
  # ψ = sign(x)|x|^p: ψ' = p|x|^(p-1), (log ψ')' = (p - 1)/x, (log ψ')'' = -(p - 1)/x².
  del y
  p = tf.cast(bijector.power, x.dtype)
  d1 = p * tf.pow(tf.abs(x), p - 1)
  dlog1 = (p - 1) / x
  return d1, d1 * dlog1, dlog1, -dlog1 / x


@elementwise_forward_rule(tfb.NormalCDF)
def _normal_cdf_forward(bijector, x, y):
  # ψ = Φ(x): ψ' = ϕ(x), (log ψ')' = -x, (log ψ')'' = -1.
  del bijector, y
  d1 = tf.exp(-0.5 * x * x) / math.sqrt(2 * math.pi)
  return d1, -x * d1, -x, -tf.ones_like(x)


@elementwise_forward_rule(tfb.Softsign)
def _softsign_forward(bijector, x, y):
  # ψ = x/(1 + |x|): ψ' = a², (log ψ')' = -2 sign(x) a, (log ψ')'' = 2a², with a = 1/(1 + |x|).
  del bijector, y
  a = tf.math.reciprocal(1 + tf.abs(x))
  d1 = a * a
  dlog1 = -2 * tf.sign(x) * a
  return d1, d1 * dlog1, dlog1, 2 * d1


@elementwise_forward_rule(tfb.Square)
def _square_forward(bijector, x, y):
  # ψ = x²: ψ' = 2x, ψ'' = 2, (log|ψ'|)' = 1/x, (log|ψ'|)'' = -1/x².
  del bijector, y
  r = tf.math.reciprocal(x)
  return 2 * x, 2 * tf.ones_like(x), r, -r * r
