"""TFP bijectors that carry the second-order derivatives of their inverse.

Each class here is the TFP bijector of the same name with `HessianBijector` mixed in: same constructor, same
behaviour, plus `inverse_jacobian`, `inverse_hessian`, `inverse_log_det_jacobian_gradient`,
`inverse_log_det_jacobian_hessian` and `hessian_pullback`. Stock TFP bijectors get the same rules through the
registry, so the functions of the same names work on them directly.
"""

import tensorflow_probability as tfp

# Importing the rule modules registers their rules.
from tfp_hessian.bijectors import (  # noqa: F401
    affine, autodiff, autoregressive, batch_norm, chain, elementwise, invert, permutation)
from tfp_hessian.bijectors.hessian_bijector import (
    HessianBijector,
    hessian_pullback,
    inverse_hessian,
    inverse_jacobian,
    inverse_log_det_jacobian_gradient,
    inverse_log_det_jacobian_hessian,
)

tfb = tfp.bijectors

__all__ = [
    "HessianBijector",
    "hessian_pullback",
    "inverse_hessian",
    "inverse_jacobian",
    "inverse_log_det_jacobian_gradient",
    "inverse_log_det_jacobian_hessian",
    "Identity",
    "Exp",
    "Log",
    "Expm1",
    "Softplus",
    "Sigmoid",
    "Tanh",
    "Sinh",
    "SinhArcsinh",
    "Power",
    "NormalCDF",
    "Softsign",
    "Square",
    "Shift",
    "Scale",
    "ScaleMatvecDiag",
    "ScaleMatvecTriL",
    "ScaleMatvecLU",
    "ScaleMatvecLinearOperator",
    "Permute",
    "Invert",
    "Chain",
    "BatchNormalization",
]


class Identity(HessianBijector, tfb.Identity):
  __doc__ = tfb.Identity.__doc__


class Exp(HessianBijector, tfb.Exp):
  __doc__ = tfb.Exp.__doc__


class Log(HessianBijector, tfb.Log):
  __doc__ = tfb.Log.__doc__


class Expm1(HessianBijector, tfb.Expm1):
  __doc__ = tfb.Expm1.__doc__


class Softplus(HessianBijector, tfb.Softplus):
  __doc__ = tfb.Softplus.__doc__


class Sigmoid(HessianBijector, tfb.Sigmoid):
  __doc__ = tfb.Sigmoid.__doc__


class Tanh(HessianBijector, tfb.Tanh):
  __doc__ = tfb.Tanh.__doc__


class Sinh(HessianBijector, tfb.Sinh):
  __doc__ = tfb.Sinh.__doc__


class SinhArcsinh(HessianBijector, tfb.SinhArcsinh):
  __doc__ = tfb.SinhArcsinh.__doc__


class Power(HessianBijector, tfb.Power):
  __doc__ = tfb.Power.__doc__


class NormalCDF(HessianBijector, tfb.NormalCDF):
  __doc__ = tfb.NormalCDF.__doc__


class Softsign(HessianBijector, tfb.Softsign):
  __doc__ = tfb.Softsign.__doc__


class Square(HessianBijector, tfb.Square):
  __doc__ = tfb.Square.__doc__


class Shift(HessianBijector, tfb.Shift):
  __doc__ = tfb.Shift.__doc__


class Scale(HessianBijector, tfb.Scale):
  __doc__ = tfb.Scale.__doc__


class ScaleMatvecDiag(HessianBijector, tfb.ScaleMatvecDiag):
  __doc__ = tfb.ScaleMatvecDiag.__doc__


class ScaleMatvecTriL(HessianBijector, tfb.ScaleMatvecTriL):
  __doc__ = tfb.ScaleMatvecTriL.__doc__


class ScaleMatvecLU(HessianBijector, tfb.ScaleMatvecLU):
  __doc__ = tfb.ScaleMatvecLU.__doc__


class ScaleMatvecLinearOperator(HessianBijector, tfb.ScaleMatvecLinearOperator):
  __doc__ = tfb.ScaleMatvecLinearOperator.__doc__


class Permute(HessianBijector, tfb.Permute):
  __doc__ = tfb.Permute.__doc__


class Invert(HessianBijector, tfb.Invert):
  __doc__ = tfb.Invert.__doc__


class Chain(HessianBijector, tfb.Chain):
  __doc__ = tfb.Chain.__doc__


class BatchNormalization(HessianBijector, tfb.BatchNormalization):
  __doc__ = tfb.BatchNormalization.__doc__
