"""The one registry of test cases: every bijector with a rule, and the flows built from them.

A `BijectorCase` makes a bijector with random (not near-identity) parameters for a dtype, and names the
values at the edge of its support. Adding a bijector to the package adds one entry here; the parametrized
tests in `test_bijectors.py` then check it against both references.
"""

import dataclasses
from typing import Callable, Dict, Optional, Tuple, Union

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_probability as tfp
import tf_keras

from tfp_hessian import private_api
from tfp_hessian.conditioners import DenseShiftAndLogScale
from tfp_hessian.examples import BoxMap, Shear  # noqa: F401  (user-written bijectors, without rules)
from tfp_hessian.examples import autoregressive_network

from factories import lower_triangular

tfb = tfp.bijectors
tfd = tfp.distributions

DIM = 5
DTYPES = (np.float64, np.float32)
# For tests of a mechanism that float32 only rounds differently (sampling caches, entry points, the HVP): float32 in
# the full suite (`slow`: CI_RUN_SLOW=1), to keep CI in time. float32 stays in CI for every rule but the linear
# ones (`test_bijectors.py`), one flow per code path (GRAPH in `test_flows.py`) and the compiled sweeps
# (`test_execution.py`).
FLOAT32_SLOW = (pytest.param(np.float64, id="float64"), pytest.param(np.float32, id="float32", marks=pytest.mark.slow))
# Relative tolerance of a Hessian entry, against the largest entry of its point's Hessian.
RTOL = {np.float64: 1e-8, np.float32: 1e-4}


@dataclasses.dataclass(frozen=True)
class BijectorCase:
  """A bijector factory and where its support ends.

  Attributes:
    make: `(dtype, rng, dim=DIM) -> bijector` over events of size `dim`, random parameters drawn from `rng`.
    edges: coordinate values (in `z` space) at the edge of the support, placed one per point into otherwise
      ordinary sampled points; or `(bijector, dtype) -> values`.
    analytic: whether an analytic rule (not the autodiff fallback) must serve it.
    structure: "elementwise" (diagonal Jacobian and inverse Hessian), "linear" (zero inverse Hessian), or None.
    domain: `(dtype, bijector) -> domain bijector` mapping R^D onto the case bijector's forward domain where
      that is not all of R^D; the base is then a flow itself (a nested TransformedDistribution).
    min_dim: the smallest event size `make` accepts (a coupling layer needs a coordinate on either side).
    points: `z -> points` taken from the sampled points `[N, *batch, D]`, for points that broadcast against the
      bijector's batch (`POINT_FORMS`); None keeps them.
    batch: whether the bijector has a batch of parameters (a batch form, `FORMS`). A flow with one has that batch
      shape, and every layer of it, below the batch too, sees points `[N, B, D]`: TFP samples the base broadcast
      to the flow's batch shape, and `log_prob` inverts points that carry it.
    unbatched_points: whether the bijector takes points `[N, D]` only. A built Keras `BatchNormalization` layer
      keeps the rank it was built for (Keras turns `axis=-1` into 1 and fixes its input's rank), so on points
      `[N, B, D]` TFP's own `sample` and `log_prob` raise (a reshape of the D moving means into `[1, B, 1]`, or
      the layer's "expected ndim=2"): such a case cannot be in a flow with a `batch` case.
    min_batched_dim: the smallest event size at which the bijector takes points that carry a batch, `[N, B, D]`.
      A tf-keras `AutoregressiveNetwork` (MADE) built for events of size 1 does not: Keras drops the trailing
      axis of size 1 of `[N, B, 1]` and the network raises in TFP's own `sample` and `log_prob` ("expected axis
      -1 of input shape to have value 1"; the long profile, session 29). At a smaller D such a case cannot be in
      a flow with a `batch` case.
  """

  make: Callable[[np.dtype, np.random.Generator], tfb.Bijector]
  edges: Union[Tuple[float, ...], Callable[[tfb.Bijector, np.dtype], Tuple[float, ...]]] = ()
  analytic: bool = True
  structure: Optional[str] = None
  domain: Optional[Callable[[np.dtype, tfb.Bijector], tfb.Bijector]] = None
  min_dim: int = 1
  points: Optional[Callable[[tf.Tensor], tf.Tensor]] = None
  batch: bool = False
  unbatched_points: bool = False
  min_batched_dim: int = 1


def _vec(rng, dtype, low=-1., high=1., size=DIM):
  return tf.constant(rng.uniform(low, high, size=size), dtype)


def _scalar(dtype, value):
  """`value` as users write a scalar parameter: a Python float (float32 flows) or a numpy scalar (float64)."""
  return float(value) if dtype == np.float32 else np.float64(value)


def _signed_vec(rng, dtype, size=DIM):
  return tf.constant(rng.choice([-1., 1.], size=size) * rng.uniform(0.5, 2., size=size), dtype)


def _well_conditioned(rng, dtype, tril=False, dim=DIM):
  m = rng.normal(size=(dim, dim)) * 0.6 + np.diag(rng.choice([-1., 1.], dim) * rng.uniform(1.5, 2.5, dim))
  return tf.constant(np.tril(m) if tril else m, dtype)


def _lu(rng, dtype, dim=DIM):
  lower_upper, permutation = tf.linalg.lu(_well_conditioned(rng, np.float64, dim=dim))
  return tf.cast(lower_upper, dtype), permutation


def _dense_tanh(rng, dtype, sizes):
  """Random dense tanh layers as `(kernel, bias)` pairs, weights of order one (not near identity)."""
  return [(tf.constant(rng.normal(size=(n_in, n_out)) / np.sqrt(n_in) * 1.5, dtype),
           tf.constant(rng.normal(size=n_out) * 0.3, dtype)) for n_in, n_out in zip(sizes[:-1], sizes[1:])]


def _apply(layers, x):
  for k, (kernel, bias) in enumerate(layers):
    x = tf.tensordot(x, kernel, [[-1], [0]]) + bias
    if k + 1 < len(layers):
      x = tf.tanh(x)
  return x


def _real_nvp(dtype, rng, num_masked=2, dim=DIM, **kwargs):
  """RealNVP with a callable conditioner (a 1-hidden-layer tanh MLP) of random weights (any `dim` > 2)."""
  del dim  # The conditioner takes its sizes from its inputs.
  layers = {}

  def shift_and_log_scale(x, output_units):
    if output_units not in layers:
      layers[output_units] = _dense_tanh(rng, dtype, [x.shape[-1], 8, 2 * output_units])
    out = _apply(layers[output_units], x)
    return out[..., :output_units], 0.5 * tf.tanh(out[..., output_units:])

  if "fraction_masked" in kwargs:
    return tfb.RealNVP(shift_and_log_scale_fn=shift_and_log_scale, **kwargs)
  return tfb.RealNVP(num_masked=num_masked, shift_and_log_scale_fn=shift_and_log_scale, **kwargs)


def _made(dtype, rng, activation="tanh", hidden_units=(7, 6), dim=DIM, conditional_size=None,
          conditional_layers="all_layers", input_order="left-to-right"):
  """A built `tfb.AutoregressiveNetwork` with random masked weights, computing in `dtype` throughout.

  With `conditional_size` it is a conditional network (`conditional_input` of that size, added to the first or
  every layer); `input_order` is TFP's (the order of the coordinates the network is autoregressive in).
  """
  made = autoregressive_network(dim, hidden_units, dtype, activation, conditional_size, conditional_layers,
                                input_order)
  dense = [layer for layer in private_api.made_model(made).layers if isinstance(layer, tf_keras.layers.Dense)]
  masked = [layer for layer in dense if layer.use_bias]  # the condition's layers have no bias and no mask
  for layer, mask in zip(masked, private_api.made_masks(made)):
    n_in = layer.kernel.shape[0]
    layer.kernel.assign(rng.normal(size=layer.kernel.shape) / np.sqrt(n_in) * 1.5 * mask)
    layer.bias.assign(rng.normal(size=layer.bias.shape) * 0.3)
  for layer in dense:
    if not layer.use_bias:
      layer.kernel.assign(rng.normal(size=layer.kernel.shape) / np.sqrt(layer.kernel.shape[0]))
  return made


def _real_nvp_dense(dtype, rng, activation="tanh", dim=DIM, hidden_units=(8, 7), conditional_size=0, name=None):
  """RealNVP with the package's dense conditioner (derivatives from its kernels), random weights.

  With `conditional_size` the conditioner also reads a condition of that size (`conditional_input`).
  """
  num_masked = dim // 2
  conditioner = DenseShiftAndLogScale(list(hidden_units), activation=activation, dtype=dtype)
  condition = dict(conditional_input=tf.zeros([1, conditional_size], dtype)) if conditional_size else {}
  conditioner(tf.zeros([1, num_masked], dtype), dim - num_masked, **condition)
  for weight in conditioner.trainable_weights:
    # max(.., 1): at dim = 1 nothing is masked in, and the first kernel has no rows.
    scale = 1.5 / np.sqrt(max(weight.shape[0], 1)) if weight.shape.rank == 2 else 0.3
    weight.assign(rng.normal(size=weight.shape) * scale)
  return tfb.RealNVP(num_masked=num_masked, shift_and_log_scale_fn=conditioner, **({"name": name} if name else {}))


def _maf_callable(dtype, rng, dim=DIM):
  """MAF with a plain callable conditioner: a dense tanh network made autoregressive by masking its output."""
  layers = _dense_tanh(rng, dtype, [dim, 8, 2 * dim])
  mask = tf.constant(np.tril(np.ones((dim, dim)), -1), dtype)

  def shift_and_log_scale(y):
    # Output i sees only y_{<i}: a masked linear read-out of a full network would not be autoregressive, so the
    # inputs are masked per output instead ([..., D, D] copies of y).
    hidden = _apply(layers, y[..., tf.newaxis, :] * mask)  # [..., D, 2D]
    shift = tf.linalg.diag_part(hidden[..., :dim])
    log_scale = 0.5 * tf.tanh(tf.linalg.diag_part(hidden[..., dim:]))
    return shift, log_scale

  return tfb.MaskedAutoregressiveFlow(shift_and_log_scale_fn=shift_and_log_scale)


def _maf_spline(dtype, rng, dim=DIM):
  """MAF with `bijector_fn` (here an affine bijector from a MADE): served by the autodiff fallback."""
  made = _made(dtype, rng, dim=dim)

  def bijector_fn(y):
    shift, log_scale = tf.unstack(made(y), axis=-1)
    return tfb.Chain([tfb.Shift(shift), tfb.Scale(log_scale=0.5 * log_scale)])

  return tfb.MaskedAutoregressiveFlow(bijector_fn=bijector_fn)


def _spline(dtype, rng, num_bins=5, range_min=-3., dim=DIM):
  """A rational quadratic spline on [-3, 3] per coordinate: random bin widths, heights and knot slopes."""

  def bins():
    size = rng.uniform(0.3, 1., size=(dim, num_bins))
    return tf.constant(size / size.sum(-1, keepdims=True) * -2 * range_min, dtype)

  slopes = tf.constant(rng.uniform(0.3, 3., size=(dim, num_bins - 1)), dtype)
  return tfb.RationalQuadraticSpline(bins(), bins(), slopes, range_min=tf.constant(range_min, dtype))


def _spline_edges(bijector, dtype):
  """The identity tails, both sides of the range boundaries, and both sides of interior knots (in `y`).

  The spline is only C¹: its second derivative jumps at every knot and at the range boundaries, so the Hessian
  does not exist exactly there (autodiff returns whichever one-sided value TFP's bin search picks). The points
  sit a few hundred ulps off each such point instead, on both sides, so both one-sided limits are checked. Edge
  row `k` lands on coordinate `k % DIM` (see `flow_and_points`), so each knot is that coordinate's.
  """
  delta = 1e-10 if dtype == np.float64 else 1e-5
  low = bijector.range_min.numpy()
  knots = (low + tf.cumsum(bijector.bin_heights, axis=-1)).numpy()  # knots[c, -1] is the range's top.
  high = knots[:, -1]
  values = [-4.5, 5.5, low - delta, low + delta, high[4] - delta, high[0] + delta, high[1] - delta, high[2] + delta]
  for side in (-1, 1):  # Rows 8..12, then 13..17: each coordinate's interior knot c % 4 from below, then above.
    values += [knots[row % DIM, row % DIM % 4] + side * delta for row in range(len(values), len(values) + DIM)]
  return tuple(values)


def _then_inverse(bijector, below):
  """`Chain([Invert(b), b, below])`: `b⁻¹ ∘ b` (the identity) over `below`."""
  return tfb.Chain([tfb.Invert(bijector), bijector, below])


def _batch_norm(dtype, rng, dim=DIM, points=(1,), **layer_kwargs):
  """Inference-mode `BatchNormalization` over a built layer with random moving statistics, gamma and beta.

  The layer is built on zeros of shape `[*points, dim]`: Keras then fixes the rank of the points it takes.
  """
  layer = tf_keras.layers.BatchNormalization(epsilon=float(rng.uniform(1e-3, 0.1)), dtype=dtype, **layer_kwargs)
  layer(tf.zeros([*points, dim], dtype))
  layer.moving_mean.assign(rng.normal(size=dim) * 2)
  layer.moving_variance.assign(rng.uniform(0.2, 3., size=dim))
  if layer.scale:
    layer.gamma.assign(rng.uniform(0.5, 2., size=dim))
  if layer.center:
    layer.beta.assign(rng.normal(size=dim))
  return tfb.BatchNormalization(layer, training=False)


BIJECTORS = {
    "Identity": BijectorCase(lambda dtype, rng, dim=DIM: tfb.Identity(), structure="linear"),
    "Exp": BijectorCase(lambda dtype, rng, dim=DIM: tfb.Exp(), edges=(1e-8, 1e4), structure="elementwise"),
    "Log": BijectorCase(lambda dtype, rng, dim=DIM: tfb.Log(), edges=(-25., 10.), structure="elementwise",
                        domain=lambda dtype, _: tfb.Softplus()),
    "Expm1": BijectorCase(lambda dtype, rng, dim=DIM: tfb.Expm1(), edges=(-1 + 1e-5, 1e4), structure="elementwise"),
    "Softplus": BijectorCase(lambda dtype, rng, dim=DIM: tfb.Softplus(), edges=(1e-7, 50.), structure="elementwise"),
    "Softplus(hinge, low)": BijectorCase(
        lambda dtype, rng, dim=DIM: tfb.Softplus(hinge_softness=tf.constant(0.7, dtype), low=tf.constant(-1.3, dtype)),
        edges=(-1.3 + 1e-6, 30.), structure="elementwise"),
    "Sigmoid": BijectorCase(lambda dtype, rng, dim=DIM: tfb.Sigmoid(), edges=(1e-6, 1 - 1e-5), structure="elementwise"),
    "Sigmoid(low, high)": BijectorCase(
        lambda dtype, rng, dim=DIM: tfb.Sigmoid(low=tf.constant(-2., dtype), high=tf.constant(3., dtype)),
        edges=(-2 + 1e-5, 3 - 1e-5), structure="elementwise"),
    "Tanh": BijectorCase(lambda dtype, rng, dim=DIM: tfb.Tanh(), edges=(-1 + 1e-5, 1 - 1e-5), structure="elementwise"),
    "Sinh": BijectorCase(lambda dtype, rng, dim=DIM: tfb.Sinh(), edges=(-1e3, 1e3), structure="elementwise"),
    "SinhArcsinh": BijectorCase(
        lambda dtype, rng, dim=DIM: tfb.SinhArcsinh(skewness=_vec(rng, dtype, size=dim),
                                                    tailweight=_vec(rng, dtype, 0.5, 2., dim)),
        edges=(-50., 50.), structure="elementwise"),
    # TFP's own Power(3) inverse has NaN derivatives at y < 0 (a tf.where branch), so the references only
    # exist on y > 0; test_bijectors checks y < 0 by the flow's mirror symmetry.
    "Power(3)": BijectorCase(lambda dtype, rng, dim=DIM: tfb.Power(tf.constant(3., dtype)), edges=(1e-3, 1e3),
                             structure="elementwise", domain=lambda dtype, _: tfb.Exp()),
    "Power(2.5)": BijectorCase(lambda dtype, rng, dim=DIM: tfb.Power(tf.constant(2.5, dtype)), edges=(1e-4, 1e3),
                               structure="elementwise", domain=lambda dtype, _: tfb.Exp()),
    "NormalCDF": BijectorCase(lambda dtype, rng, dim=DIM: tfb.NormalCDF(), edges=(1e-6, 1 - 1e-5),
                              structure="elementwise"),
    "Softsign": BijectorCase(lambda dtype, rng, dim=DIM: tfb.Softsign(), edges=(-1 + 1e-5, 1 - 1e-5),
                             structure="elementwise"),
    "Square": BijectorCase(lambda dtype, rng, dim=DIM: tfb.Square(), edges=(1e-6, 1e3), structure="elementwise",
                           domain=lambda dtype, _: tfb.Exp()),
    "Scale": BijectorCase(lambda dtype, rng, dim=DIM: tfb.Scale(_signed_vec(rng, dtype, size=dim)), structure="linear"),
    "Scale(log_scale)": BijectorCase(lambda dtype, rng, dim=DIM: tfb.Scale(log_scale=_vec(rng, dtype, size=dim)),
                                     structure="linear"),
    "Shift": BijectorCase(lambda dtype, rng, dim=DIM: tfb.Shift(_vec(rng, dtype, -3., 3., dim)), structure="linear"),
    # Every parameter form users write: a Python (or numpy) scalar, a scalar tensor, a `tf.Variable`, the other
    # parameterisation; each broadcasts against the points.
    "Scale(scalar)": BijectorCase(lambda dtype, rng, dim=DIM: tfb.Scale(_scalar(dtype, rng.uniform(0.5, 2.))),
                                  structure="linear"),
    "Scale(scalar tensor)": BijectorCase(
        lambda dtype, rng, dim=DIM: tfb.Scale(tf.constant(-rng.uniform(0.5, 2.), dtype)), structure="linear"),
    "Scale(log_scale=scalar)": BijectorCase(
        lambda dtype, rng, dim=DIM: tfb.Scale(log_scale=_scalar(dtype, rng.uniform(-1., 1.))), structure="linear"),
    "Scale(tf.Variable)": BijectorCase(
        lambda dtype, rng, dim=DIM: tfb.Scale(tf.Variable(rng.uniform(0.5, 2.), dtype=dtype)), structure="linear"),
    "Scale(log_scale=tf.Variable vector)": BijectorCase(
        lambda dtype, rng, dim=DIM: tfb.Scale(log_scale=tf.Variable(rng.uniform(-1., 1., dim), dtype=dtype)),
        structure="linear"),
    "Shift(scalar)": BijectorCase(lambda dtype, rng, dim=DIM: tfb.Shift(_scalar(dtype, rng.uniform(-2., 2.))),
                                  structure="linear"),
    "Shift(tf.Variable)": BijectorCase(
        lambda dtype, rng, dim=DIM: tfb.Shift(tf.Variable(rng.uniform(-2., 2., dim), dtype=dtype)), structure="linear"),
    "Softplus(hinge_softness=scalar, low=scalar)": BijectorCase(
        lambda dtype, rng, dim=DIM: tfb.Softplus(hinge_softness=_scalar(dtype, 0.6), low=_scalar(dtype, 0.5)),
        edges=(0.5 + 1e-6, 30.), structure="elementwise"),
    "SinhArcsinh(scalars)": BijectorCase(
        lambda dtype, rng, dim=DIM: tfb.SinhArcsinh(skewness=_scalar(dtype, 0.4), tailweight=_scalar(dtype, 1.3)),
        edges=(-50., 50.), structure="elementwise"),
    "Power(python scalar)": BijectorCase(lambda dtype, rng, dim=DIM: tfb.Power(_scalar(dtype, 3.)), edges=(1e-3, 1e3),
                                         structure="elementwise", domain=lambda dtype, _: tfb.Exp()),
    # Linear bijectors without an analytic formula of their own: the matrix from the basis vectors, once per call.
    "DiscreteCosineTransform": BijectorCase(lambda dtype, rng, dim=DIM: tfb.DiscreteCosineTransform(),
                                            structure="linear"),
    "ScaleMatvecDiag": BijectorCase(lambda dtype, rng, dim=DIM: tfb.ScaleMatvecDiag(_signed_vec(rng, dtype, size=dim)),
                                    structure="linear"),
    "ScaleMatvecTriL": BijectorCase(
        lambda dtype, rng, dim=DIM: tfb.ScaleMatvecTriL(_well_conditioned(rng, dtype, tril=True, dim=dim)),
        structure="linear"),
    "ScaleMatvecLU": BijectorCase(lambda dtype, rng, dim=DIM: tfb.ScaleMatvecLU(*_lu(rng, dtype, dim)),
                                  structure="linear"),
    "ScaleMatvecLinearOperator(full)": BijectorCase(
        lambda dtype, rng, dim=DIM: tfb.ScaleMatvecLinearOperator(
            tf.linalg.LinearOperatorFullMatrix(_well_conditioned(rng, dtype, dim=dim))), structure="linear"),
    "ScaleMatvecLinearOperator(tril, adjoint)": BijectorCase(
        lambda dtype, rng, dim=DIM: tfb.ScaleMatvecLinearOperator(
            tf.linalg.LinearOperatorLowerTriangular(_well_conditioned(rng, dtype, tril=True, dim=dim)), adjoint=True),
        structure="linear"),
    "ScaleMatvecLinearOperator(diag)": BijectorCase(
        lambda dtype, rng, dim=DIM: tfb.ScaleMatvecLinearOperator(
            tf.linalg.LinearOperatorDiag(_signed_vec(rng, dtype, size=dim))),
        structure="linear"),
    "Permute": BijectorCase(lambda dtype, rng, dim=DIM: tfb.Permute(rng.permutation(dim)), structure="linear"),
    "Permute(reverse)": BijectorCase(lambda dtype, rng, dim=DIM: tfb.Permute(np.arange(dim)[::-1]), structure="linear"),
    "Invert(ScaleMatvecTriL)": BijectorCase(
        lambda dtype, rng, dim=DIM: tfb.Invert(tfb.ScaleMatvecTriL(_well_conditioned(rng, dtype, tril=True, dim=dim))),
        structure="linear"),
    "Invert(Permute)": BijectorCase(lambda dtype, rng, dim=DIM: tfb.Invert(tfb.Permute(rng.permutation(dim))),
                                    structure="linear"),
    # Invert of a bijector without a rule is itself served by the fallback.
    "Invert(Ascending) (fallback)": BijectorCase(lambda dtype, rng, dim=DIM: tfb.Invert(tfb.Ascending()),
                                                 analytic=False,
                                                 domain=lambda dtype, inverted: inverted.bijector),
    "Chain": BijectorCase(lambda dtype, rng, dim=DIM: tfb.Chain([
        tfb.Shift(_vec(rng, dtype, size=dim)), tfb.Softplus(),
        tfb.ScaleMatvecTriL(_well_conditioned(rng, dtype, True, dim)),
        tfb.Permute(rng.permutation(dim)),
        tfb.SinhArcsinh(skewness=_vec(rng, dtype, size=dim), tailweight=_vec(rng, dtype, 0.5, 2., dim))])),
    "Invert(Chain)": BijectorCase(lambda dtype, rng, dim=DIM: tfb.Invert(tfb.Chain([
        tfb.Tanh(), tfb.ScaleMatvecLU(*_lu(rng, dtype, dim)), tfb.Sinh()])), domain=lambda dtype, _: tfb.Tanh()),
    "Chain()": BijectorCase(lambda dtype, rng, dim=DIM: tfb.Chain([]), structure="linear"),
    # A layer followed by its own inverse, the identity through a value next to the edge of the layer's range
    # (1 - tanh(12) = 7.6e-11, ulp 1.1e-16). Nested tapes cancel the two exactly (TFP's cache hands the second
    # one the first one's input); so must the sweep, by taking the second one's derivatives at that cached
    # preimage rather than at the rounded value (issue 14: -0.99999292 for -1 at z = 12). A `Sinh` below gives
    # the chain's second derivatives a scale of their own: those of the identity are exactly zero by tapes,
    # through the cache, and zero to rounding (1e-15) by the sweep.
    "Chain(Invert(Tanh), Tanh, Sinh)": BijectorCase(
        lambda dtype, rng, dim=DIM: _then_inverse(tfb.Tanh(), tfb.Sinh()),
        edges=lambda bijector, dtype: (12., -12., 17.) if dtype == np.float64 else (5., -6.)),
    # The same with one instance on both sides: its parameters are tensors, and two instances built from two
    # tensors would not be equal to TFP, and would share no cache entries.
    "Chain(Invert(b), b, Sinh), b = Sigmoid(low, high)": BijectorCase(
        lambda dtype, rng, dim=DIM: _then_inverse(
            tfb.Sigmoid(low=tf.constant(-2., dtype), high=tf.constant(3., dtype)), tfb.Sinh()),
        edges=lambda bijector, dtype: (25., 32., -30.) if dtype == np.float64 else (10., -12.)),
    # No analytic rule: the per-bijector autodiff fallback.
    "Ascending (fallback)": BijectorCase(lambda dtype, rng, dim=DIM: tfb.Ascending(), analytic=False),
    "SoftClip (fallback)": BijectorCase(
        lambda dtype, rng, dim=DIM: tfb.SoftClip(low=tf.constant(-1., dtype), high=tf.constant(2., dtype)),
        analytic=False),
    # Coordinatewise bijectors without a rule: the elementwise autodiff fallback, diagonal by construction.
    "RationalQuadraticSpline (fallback)": BijectorCase(_spline, edges=_spline_edges, analytic=False,
                                                       structure="elementwise"),
    "GumbelCDF (fallback)": BijectorCase(
        # Scale ≥ 1.5 keeps sampled points out of the doubly exponential left tail, where φ' of the inverted
        # bijector underflows below 1e-16 and the pullback round trip cannot be undone; the edges probe it.
        lambda dtype, rng, dim=DIM: tfb.GumbelCDF(loc=_vec(rng, dtype, size=dim),
                                                  scale=_vec(rng, dtype, 1.5, 3., dim)),
        edges=(1e-6, 1 - 1e-5), analytic=False, structure="elementwise"),
    "KumaraswamyCDF (fallback)": BijectorCase(
        lambda dtype, rng, dim=DIM: tfb.KumaraswamyCDF(concentration1=_vec(rng, dtype, 0.5, 3., dim),
                                              concentration0=_vec(rng, dtype, 0.5, 3., dim)),
        edges=(1e-6, 1 - 1e-5), analytic=False, structure="elementwise", domain=lambda dtype, _: tfb.Sigmoid()),
    # Inference mode only (training mode raises; see test_batch_norm.py). TFP's log-det needs `gamma` (a layer
    # with `scale=False` fails inside TFP), but `beta` may be absent.
    # The layer is built for points `[N, D]`, as one trained on them is (`BijectorCase.unbatched_points`).
    "BatchNormalization": BijectorCase(_batch_norm, structure="elementwise", unbatched_points=True),
    "BatchNormalization(center=False)": BijectorCase(lambda dtype, rng, dim=DIM: _batch_norm(dtype, rng, dim,
                                                                                               center=False),
                                                     structure="elementwise", unbatched_points=True),
    # Coupling and autoregressive layers: the conditioner from its kernels (AutoregressiveNetwork) or by tapes.
    "MAF(MADE tanh)": BijectorCase(lambda dtype, rng, dim=DIM: tfb.MaskedAutoregressiveFlow(_made(dtype, rng, dim=dim)),
                                   edges=(-6., 6.), min_batched_dim=2),
    "MAF(MADE softplus, 1 layer)": BijectorCase(lambda dtype, rng, dim=DIM: tfb.MaskedAutoregressiveFlow(
        _made(dtype, rng, "softplus", (9,), dim)), edges=(-6., 6.), min_batched_dim=2),
    "MAF(MADE relu)": BijectorCase(lambda dtype, rng, dim=DIM: tfb.MaskedAutoregressiveFlow(
        _made(dtype, rng, "relu", (8, 8), dim)), min_batched_dim=2),
    # A last hidden layer narrower than D: the pullback keeps the Jacobian factored through it (pullback.py).
    "MAF(MADE tanh, narrower than D)": BijectorCase(lambda dtype, rng, dim=DIM: tfb.MaskedAutoregressiveFlow(
        _made(dtype, rng, "tanh", (6, 3), dim)), edges=(-6., 6.), min_dim=4),
    "MAF(callable)": BijectorCase(_maf_callable, edges=(-6., 6.)),
    "IAF: Invert(MAF(MADE tanh))": BijectorCase(
        lambda dtype, rng, dim=DIM: tfb.Invert(tfb.MaskedAutoregressiveFlow(_made(dtype, rng, dim=dim))),
        min_batched_dim=2),
    # The IAF's solves are triangular where the network's order is the coordinates' or its reverse (lower and upper
    # triangular Jacobians), general for any other order.
    "IAF: Invert(MAF(MADE tanh, right-to-left))": BijectorCase(
        lambda dtype, rng, dim=DIM: tfb.Invert(tfb.MaskedAutoregressiveFlow(
            _made(dtype, rng, dim=dim, input_order="right-to-left"))), min_batched_dim=2),
    "IAF: Invert(MAF(MADE tanh, random order))": BijectorCase(
        lambda dtype, rng, dim=DIM: tfb.Invert(tfb.MaskedAutoregressiveFlow(
            _made(dtype, rng, dim=dim, input_order=rng.permutation(dim) + 1))), min_batched_dim=2),
    "RealNVP": BijectorCase(_real_nvp, edges=(-6., 6.), min_dim=3),
    "RealNVP(DenseShiftAndLogScale)": BijectorCase(_real_nvp_dense, edges=(-6., 6.)),
    "RealNVP(DenseShiftAndLogScale swish)": BijectorCase(
        lambda dtype, rng, dim=DIM: _real_nvp_dense(dtype, rng, "swish", dim)),
    "RealNVP(reversed mask)": BijectorCase(lambda dtype, rng, dim=DIM: _real_nvp(dtype, rng, num_masked=-2),
                                           min_dim=3),
    "RealNVP(fraction_masked)": BijectorCase(
        lambda dtype, rng, dim=DIM: _real_nvp(dtype, rng, fraction_masked=0.6), min_dim=2),
    # The inverse of a coupling layer is a coupling layer: its block form, conditioning block first or last.
    "Invert(RealNVP)": BijectorCase(lambda dtype, rng, dim=DIM: tfb.Invert(_real_nvp(dtype, rng)), min_dim=3),
    "Invert(RealNVP(reversed mask))": BijectorCase(
        lambda dtype, rng, dim=DIM: tfb.Invert(_real_nvp(dtype, rng, num_masked=-2)), min_dim=3),
    "Invert(RealNVP(DenseShiftAndLogScale))": BijectorCase(
        lambda dtype, rng, dim=DIM: tfb.Invert(_real_nvp_dense(dtype, rng, dim=dim))),
    # A permutation after a coupling or autoregressive layer is folded into it (pullback.py); two in a row
    # compose, and one on the z side of the chain has no layer to fold into. After a factored (narrow) MAF, the
    # sweep carries the permutations as a frame through an elementwise layer and into the next MAF
    # (`Pullback.in_frame`).
    "Chain(MAF, Permute, RealNVP)": BijectorCase(lambda dtype, rng, dim=DIM: tfb.Chain([
        tfb.MaskedAutoregressiveFlow(_made(dtype, rng, dim=dim)), tfb.Permute(rng.permutation(dim)),
        _real_nvp_dense(dtype, rng, dim=dim)]), edges=(-6., 6.), min_dim=2),
    "Chain(Permute, MAF, Permute, Permute, MAF(callable))": BijectorCase(lambda dtype, rng, dim=DIM: tfb.Chain([
        tfb.Permute(rng.permutation(dim)), tfb.MaskedAutoregressiveFlow(_made(dtype, rng, dim=dim)),
        tfb.Permute(rng.permutation(dim)), tfb.Permute(rng.permutation(dim)), _maf_callable(dtype, rng, dim)]),
        min_batched_dim=2),
    "Chain(MAF narrow, Permute, Sinh, Permute, MAF narrow)": BijectorCase(lambda dtype, rng, dim=DIM: tfb.Chain([
        tfb.MaskedAutoregressiveFlow(_made(dtype, rng, "tanh", (5, 3), dim)), tfb.Permute(rng.permutation(dim)),
        tfb.Sinh(), tfb.Permute(rng.permutation(dim)),
        tfb.MaskedAutoregressiveFlow(_made(dtype, rng, "softplus", (3,), dim))]), min_dim=4),
    "MAF(bijector_fn) (fallback)": BijectorCase(_maf_spline, analytic=False, min_batched_dim=2),
    # Its inverse is MAF's forward, a `tf.while_loop` over the coordinates: the fallback takes the tapes on the
    # forward map (MAF's inverse, one pass) and runs them backwards.
    "Invert(MAF(bijector_fn)) (fallback)": BijectorCase(
        lambda dtype, rng, dim=DIM: tfb.Invert(_maf_spline(dtype, rng, dim)), analytic=False, min_batched_dim=2),
    # User-written: a Python loop over the coordinates to invert, a matvec and a tanh forward.
    "Shear (fallback)": BijectorCase(
        lambda dtype, rng, dim=DIM: Shear(tf.constant(rng.normal(size=(dim, dim)) * 0.7, dtype)), analytic=False),
}


def _inverted(case):
  """`Invert(b)` over a base pushed through `b` itself, so its points fill `b`'s whole domain."""

  def domain(dtype, inverted):
    inner = inverted.bijector
    return inner if case.domain is None else tfb.Chain([inner, case.domain(dtype, inner)])

  def edges(inverted, dtype):
    # Points near the edge of `b`'s range reach the base through `b`'s inverse, whose float32 rounding there is
    # amplified by the edge's own conditioning (y + 1 ≈ 1e-5 for Expm1 holds ~2 digits): ours and both
    # references are then all equally far from the truth. Those edges are checked in float64 only.
    if dtype == np.float32:
      return ()
    values = np.asarray(_edge_values(case, inverted.bijector, dtype), dtype)
    # Edge row k sits at coordinate k % DIM (see `flow_and_points`), where the parameters are those of that
    # coordinate.
    rows = np.arange(len(values))
    mapped = inverted.bijector.inverse(tf.constant(np.repeat(values[:, None], DIM, axis=1))).numpy()
    return tuple(mapped[rows, rows % DIM])

  return BijectorCase(lambda dtype, rng, dim=DIM: tfb.Invert(case.make(dtype, rng, dim=dim)), edges=edges,
                      analytic=case.analytic, structure=case.structure, domain=domain, min_dim=case.min_dim,
                      batch=case.batch, unbatched_points=case.unbatched_points,
                      min_batched_dim=case.min_batched_dim)


def _edge_values(case, bijector, dtype):
  return case.edges(bijector, dtype) if callable(case.edges) else case.edges


# Every elementwise rule is also exercised through `Invert` (its forward rule).
BIJECTORS.update({f"Invert({name})": _inverted(case) for name, case in list(BIJECTORS.items())
                  if case.structure == "elementwise"})


def random_base(dtype, rng, dim=DIM):
  """A correlated Gaussian base with nonzero mean, so every term of the pullback is exercised."""
  loc = tf.constant(rng.normal(size=dim), dtype)
  return tfd.MultivariateNormalTriL(loc, lower_triangular(rng, dtype, dim, 0.3, (0.7, 1.3), strict=False))


def flow_and_points(case, dtype, seed=0, num_points=4, edges=True):
  """`(flow, z)`: the case's bijector over a random base, sampled points plus one point per edge value."""
  rng = np.random.default_rng(seed)
  base = random_base(dtype, rng)
  bijector = case.make(dtype, rng)
  if case.domain is not None:
    base = tfd.TransformedDistribution(base, case.domain(dtype, bijector))
  flow = tfd.TransformedDistribution(base, bijector)
  z = flow.sample(num_points, seed=(0, seed)).numpy()  # stateless: the same points whatever ran before
  edges = _edge_values(case, bijector, dtype) if edges else ()
  edge_points = np.repeat(z[:1], len(edges), axis=0)
  for row, value in enumerate(edges):
    edge_points[row, row % DIM] = value
  z = tf.constant(np.concatenate([z, edge_points]), dtype)
  return flow, z if case.points is None else case.points(z)


class SpyExp(tfb.Exp):
  """`Exp` that counts its inverse calls, to show an error comes before any layer runs.

  Overriding `_inverse` also sends it to the (elementwise) autodiff fallback.
  """

  def __init__(self):
    super().__init__(name="spy_exp")
    self.calls = 0

  def _inverse(self, y):
    self.calls += 1
    return super()._inverse(y)


def assert_close(actual, expected, rtol, event_ndims=2, what="Hessian"):
  """Entries agree to `rtol`, relative to the largest entry of their own point's quantity.

  The last `event_ndims` axes hold one point's quantity (2 for a Hessian, 1 for a gradient). Reports the worst
  entry on failure. Both sides must be finite: a NaN is a failure, never a pass.
  """
  actual, expected = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
  assert actual.shape == expected.shape, f"{what}: shape {actual.shape} != expected {expected.shape}"
  assert np.all(np.isfinite(expected)), f"{what}: the reference is not finite: {expected}"
  assert np.all(np.isfinite(actual)), f"{what}: not finite where the reference is: {actual}"
  axes = tuple(range(actual.ndim - event_ndims, actual.ndim))
  scale = np.max(np.abs(expected), axis=axes, keepdims=True)
  error = np.abs(actual - expected) / np.maximum(scale, np.finfo(np.float64).tiny)
  worst = np.unravel_index(np.argmax(error), error.shape)
  assert error[worst] <= rtol, (
      f"{what}: worst entry {worst}: {actual[worst]!r} vs {expected[worst]!r}, error "
      f"{error[worst]:.3g} of the point's largest entry > rtol {rtol:g}")


# -- Every parameter form of every stock bijector (issue 14) ----------------------------------------------------
#
# `tfb.Scale(0.7)` once raised inside its rule, where the cases above only wrote vectors. For each stock bijector
# with an analytic rule that takes parameters, `FAMILIES` names each parameterisation TFP offers and how each
# parameter's random values are drawn; `FORMS` says how users write a value (a Python float, a tensor, a
# `tf.Variable`, one per coordinate, with a batch of its own). Their product is expanded into `BIJECTORS`, so a
# bijector added to `FAMILIES` is checked in every form by the parametrized tests, and drawn by the property tests.

B = 3  # The batch of batch-shaped parameters: neither N = 4 points nor D = 5, so no wrong axis broadcasts.


@dataclasses.dataclass(frozen=True)
class Parameter:
  """How one constructor parameter's random (not near-identity) values are drawn.

  Attributes:
    draw: `(rng, shape, dim) -> np.ndarray` of shape `[*shape, *event]`: `shape` the axes a form adds, `event`
      the parameter's own (none for a number, `[dim]` for a vector, `[dim, dim]` for a matrix).
    per_coordinate: whether a number broadcasts against the points' coordinates (`Scale`'s `scale`), so that a
      vector of them is one per coordinate; if not, its leading axes are a batch (`LinearOperatorScaledIdentity`).
    moves_support: whether the parameter moves the edge of the support (`Softplus`'s `low`), or how near it the
      points lie (`Power`'s: a point drawn under one power is `x^(p0/p1)` under another, next to 0 or far out, where
      the pullback's round trip loses digits by nature, `test_bijectors`): a point drawn under one batch member
      may then lie outside another's support, or at its edge, so no points are broadcast against a batch.
  """

  draw: Callable[[np.random.Generator, Tuple[int, ...], int], np.ndarray]
  per_coordinate: bool = True
  moves_support: bool = False


def _numbers(low, high, sign=None, **kwargs):
  """Magnitudes in `[low, high]`, of random sign (or of the given `sign`, +1 or -1)."""

  def draw(rng, shape, dim):
    del dim
    magnitude = rng.uniform(low, high, size=shape)
    return magnitude * (rng.choice([-1., 1.], size=shape) if sign is None else sign)

  return Parameter(draw, **kwargs)


def _vectors(low, high, sign=None):
  """Vectors of `[dim]` numbers (`_numbers`)."""
  numbers = _numbers(low, high, sign).draw
  return Parameter(lambda rng, shape, dim: numbers(rng, tuple(shape) + (dim,), dim), per_coordinate=False)


def _matrices(tril=False, columns=None):
  """Well-conditioned `[dim, dim]` matrices (`[dim, columns]` with `columns`: a low-rank update's factor)."""

  def draw(rng, shape, dim):
    if columns is not None:
      return rng.normal(size=tuple(shape) + (dim, columns)) * 0.5
    return np.stack([_well_conditioned(rng, np.float64, tril, dim).numpy()
                     for _ in range(int(np.prod(shape)))]).reshape(tuple(shape) + (dim, dim))

  return Parameter(draw, per_coordinate=False)


def _permutations():
  return Parameter(lambda rng, shape, dim: np.stack([rng.permutation(dim) for _ in range(int(np.prod(shape)))])
                   .reshape(tuple(shape) + (dim,)).astype(np.int32), per_coordinate=False)


@dataclasses.dataclass(frozen=True)
class Form:
  """How users write a parameter's value.

  Attributes:
    shape: `(parameter, dim) -> shape` of the axes the form adds in front of the parameter's own, or None where
      the form does not apply to that parameter.
    write: `(values, dtype) -> value` as passed to the constructor.
    batch: whether the form gives the bijector a batch shape (`[B]`).
    points: the `POINT_FORMS` also checked against that batch (where no parameter moves the support).
  """

  shape: Callable[[Parameter, int], Optional[Tuple[int, ...]]]
  write: Callable[[np.ndarray, np.dtype], object]
  batch: bool = False
  points: Tuple[str, ...] = ()


def _value_dtype(values, dtype):
  return tf.int32 if np.issubdtype(values.dtype, np.integer) else dtype


def _python(values, dtype):
  """Python numbers (lists for arrays) as users write them in float32 flows; in float64 flows, where TFP would
  make a Python float a float32 tensor, numpy values of the dtype (`_scalar`)."""
  if dtype == np.float32 or np.issubdtype(values.dtype, np.integer):
    return values.tolist()
  return values.astype(dtype)[()]


def _tensor(values, dtype):
  return tf.constant(values, _value_dtype(values, dtype))


def _variable(values, dtype):
  return tf.Variable(values, dtype=_value_dtype(values, dtype))


def _per_coordinate(shape):
  return lambda parameter, dim: shape(dim) if parameter.per_coordinate else None


FORMS = {
    "float": Form(lambda parameter, dim: (), _python),
    "tensor": Form(lambda parameter, dim: (), _tensor),
    "vector": Form(_per_coordinate(lambda dim: (dim,)), _tensor),
    "Variable": Form(lambda parameter, dim: (), _variable),
    "Variable vector": Form(_per_coordinate(lambda dim: (dim,)), _variable),
    "batch [B, 1]": Form(_per_coordinate(lambda dim: (B, 1)), _tensor, batch=True, points=("one point [D]",)),
    "batch [B, D]": Form(_per_coordinate(lambda dim: (B, dim)), _tensor, batch=True, points=("points [N, 1, D]",)),
    "Variable batch [B, D]": Form(_per_coordinate(lambda dim: (B, dim)), _variable, batch=True),
    "batch [B]": Form(lambda parameter, dim: None if parameter.per_coordinate else (B,), _tensor, batch=True,
                      points=("one point [D]", "points [N, 1, D]")),
}

# Points broadcast against a bijector's batch `[B]`: the cases sample `[N, B, D]`; these take one point `[D]`
# (a result of batch `[B]`) or points `[N, 1, D]` (batch `[N, B]`) from them.
POINT_FORMS = {
    "one point [D]": lambda z: z[0, 0],
    "points [N, 1, D]": lambda z: z[:, :1],
}


@dataclasses.dataclass(frozen=True)
class Family:
  """A stock bijector with parameters, each parameterisation TFP offers, and what its cases need.

  Attributes:
    make: `(dim, **parameters) -> bijector`.
    parameterisations: one `{name: Parameter}` per way the constructor takes its parameters.
    structure, domain: as in `BijectorCase`.
    edges: as in `BijectorCase`, for forms without a batch (an edge is one value for every batch member).
    forms: the `FORMS` it takes (by default each that applies to all of a parameterisation's parameters).
    numpy_float64: whether the constructor keeps numpy float64 values in float64. `ScaleMatvecLU` makes them
      float32 (and then fails on float64 points), so users of a float64 flow write tensors there, and its "float"
      form is Python lists in float32 flows, tensors in float64 ones.
  """

  make: Callable[..., tfb.Bijector]
  parameterisations: Tuple[Dict[str, Parameter], ...]
  structure: Optional[str] = "elementwise"
  edges: Union[Tuple[float, ...], Callable[[tfb.Bijector, np.dtype], Tuple[float, ...]]] = ()
  domain: Optional[Callable[[np.dtype, tfb.Bijector], tfb.Bijector]] = None
  forms: Tuple[str, ...] = tuple(FORMS)
  numpy_float64: bool = True


def _stock(cls, **fixed):
  return lambda dim, **parameters: cls(**parameters, **fixed)


def _operator(cls, adjoint=False, **fixed):
  """`ScaleMatvecLinearOperator` over a `tf.linalg` operator built from the parameters."""
  return lambda dim, **parameters: tfb.ScaleMatvecLinearOperator(cls(**parameters, **fixed), adjoint=adjoint)


def _at(value, coordinate, default):
  """A parameter's value at `coordinate` of one point without a batch (`DIM` coordinates)."""
  if value is None:
    return default
  return float(np.broadcast_to(np.asarray(tf.convert_to_tensor(value)), [DIM])[coordinate])


def _softplus_edges(bijector, dtype):
  # Edge row k lands on coordinate k % DIM (`flow_and_points`): `low` of coordinate 0, a large value on 1.
  delta = 1e-6 if dtype == np.float64 else 1e-5
  return (_at(bijector.low, 0, 0.) + delta * _at(bijector.hinge_softness, 0, 1.), 30.)


def _sigmoid_edges(bijector, dtype):
  low, high = _at(bijector.low, 0, 0.), _at(bijector.high, 1, 1.)
  width = high - _at(bijector.low, 1, 0.)
  return (low + 1e-5 * (_at(bijector.high, 0, 1.) - low), high - 1e-5 * width)


_LOW = _numbers(0.5, 3., sign=-1., moves_support=True)
_HIGH = _numbers(0.5, 3., sign=1., moves_support=True)

FAMILIES = {
    "Scale": Family(_stock(tfb.Scale), ({"scale": _numbers(0.5, 2.)}, {"log_scale": _numbers(0.2, 1.)}),
                    structure="linear"),
    "Shift": Family(_stock(tfb.Shift), ({"shift": _numbers(0.5, 3.)},), structure="linear"),
    "Softplus": Family(_stock(tfb.Softplus), (
        {"hinge_softness": _numbers(0.3, 2., sign=1.)},
        {"low": _numbers(0.5, 2., moves_support=True)},
        {"hinge_softness": _numbers(0.3, 2., sign=1.), "low": _numbers(0.5, 2., moves_support=True)}),
        edges=_softplus_edges),
    "Sigmoid": Family(_stock(tfb.Sigmoid), ({"low": _LOW, "high": _HIGH},), edges=_sigmoid_edges),
    "SinhArcsinh": Family(_stock(tfb.SinhArcsinh), (
        {"skewness": _numbers(0.2, 1.)}, {"tailweight": _numbers(0.5, 2., sign=1.)},
        {"skewness": _numbers(0.2, 1.), "tailweight": _numbers(0.5, 2., sign=1.)}), edges=(-50., 50.)),
    # On y > 0 (the `Exp` below), so any power, of either sign, has a reference (see "Power(3)").
    "Power": Family(_stock(tfb.Power), ({"power": _numbers(0.5, 3., moves_support=True)},), edges=(1e-3, 1e3),
                    domain=lambda dtype, _: tfb.Exp()),
    "ScaleMatvecDiag": Family(_stock(tfb.ScaleMatvecDiag), ({"scale_diag": _vectors(0.5, 2.)},),
                              structure="linear"),
    "ScaleMatvecTriL": Family(_stock(tfb.ScaleMatvecTriL), ({"scale_tril": _matrices(tril=True)},),
                              structure="linear"),
    "ScaleMatvecTriL adjoint": Family(_stock(tfb.ScaleMatvecTriL, adjoint=True),
                                            ({"scale_tril": _matrices(tril=True)},), structure="linear"),
    # Any unit-lower, nonsingular-upper `lower_upper` with any permutation is a valid factorisation.
    "ScaleMatvecLU": Family(_stock(tfb.ScaleMatvecLU), ({"lower_upper": _matrices(), "permutation": _permutations()},),
                            structure="linear", numpy_float64=False),
    "ScaleMatvecLinearOperator over FullMatrix": Family(_operator(tf.linalg.LinearOperatorFullMatrix),
                                                    ({"matrix": _matrices()},), structure="linear"),
    "ScaleMatvecLinearOperator over LowerTriangular, adjoint": Family(
        _operator(tf.linalg.LinearOperatorLowerTriangular, adjoint=True), ({"tril": _matrices(tril=True)},),
        structure="linear"),
    "ScaleMatvecLinearOperator over Diag": Family(_operator(tf.linalg.LinearOperatorDiag),
                                                  ({"diag": _vectors(0.5, 2.)},), structure="linear"),
    "ScaleMatvecLinearOperator over ScaledIdentity": Family(
        lambda dim, multiplier: tfb.ScaleMatvecLinearOperator(tf.linalg.LinearOperatorScaledIdentity(dim, multiplier)),
        ({"multiplier": _numbers(0.5, 2., per_coordinate=False)},), structure="linear"),
    "ScaleMatvecLinearOperator over LowRankUpdate": Family(
        lambda dim, diag, u: tfb.ScaleMatvecLinearOperator(tf.linalg.LinearOperatorLowRankUpdate(
            tf.linalg.LinearOperatorDiag(diag, is_positive_definite=True), u)),
        ({"diag": _vectors(0.5, 2., sign=1.), "u": _matrices(columns=2)},), structure="linear"),
    "ScaleMatvecLinearOperator over Householder": Family(
        _operator(tf.linalg.LinearOperatorHouseholder), ({"reflection_axis": _vectors(0.5, 2.)},),
        structure="linear"),
    # TFP's `Permute` gathers along one axis: a permutation has no batch.
    "Permute": Family(_stock(tfb.Permute), ({"permutation": _permutations()},), structure="linear",
                      forms=("float", "tensor", "Variable")),
}


def _form_case(family, parameters, form, points=None):
  def make(dtype, rng, dim=DIM):
    write = FORMS[form].write
    if form == "float" and dtype == np.float64 and not family.numpy_float64:
      write = FORMS["tensor"].write
    values = {name: write(parameter.draw(rng, FORMS[form].shape(parameter, dim), dim), dtype)
              for name, parameter in parameters.items()}
    return family.make(dim, **values)

  return BijectorCase(make, edges=() if FORMS[form].batch else family.edges, structure=family.structure,
                      domain=family.domain, points=points, batch=FORMS[form].batch)


def _form_cases():
  """`{name: BijectorCase}` of every family in every form (and point form) that applies to it."""
  cases = {}
  for family_name, family in FAMILIES.items():
    for parameters in family.parameterisations:
      for form in family.forms:
        if any(FORMS[form].shape(parameter, DIM) is None for parameter in parameters.values()):
          continue
        name = f"{family_name}[{', '.join(parameters)}: {form}]"
        cases[name] = _form_case(family, parameters, form)
        if not any(parameter.moves_support for parameter in parameters.values()):
          for points in FORMS[form].points:
            cases[f"{name[:-1]}; {points}]"] = _form_case(family, parameters, form, POINT_FORMS[points])
  return cases


FORM_CASES = _form_cases()

# CI runs the forms grouped: one chain per kind of form, each family in it once, in the form of that kind (the
# first that applies), forward order from the base. Every single form case runs in the full suite (`slow`).
# Elementwise layers go from bounded to unbounded, so no value between them saturates the next one; linear layers
# are well-conditioned, so their product keeps float32's rtol.
_CHAINS = {
    "elementwise": ("Sigmoid", "SinhArcsinh", "Softplus", "Power"),
    "linear": tuple(name for name, family in FAMILIES.items() if family.structure == "linear"),
}
# kind -> (forms in order of preference, which parameterisation, points).
_KINDS = {
    "float": (("float",), 0, None),
    "tensor": (("tensor",), 0, None),
    "Variable": (("Variable",), 0, None),
    "other parameterisations": (("Variable vector", "Variable"), -1, None),
    "batch": (("batch [B, D]", "batch [B]"), 0, None),
    "batch [B, 1]; one point [D]": (("batch [B, 1]", "batch [B]"), 0, "one point [D]"),
    "Variable batch; points [N, 1, D]": (("Variable batch [B, D]", "batch [B]"), 0, "points [N, 1, D]"),
}
# `{chain: {kind: dtypes}}` CI checks, in `test_bijectors`' main test only (about 80 s of one core in all): Python
# floats in float32 (where they are what users write), the rest in float64. The tensor form is that of the cases
# above, a scalar variable there is `Scale(tf.Variable)`, and the linear chain's variables and batch are in its
# "Variable batch" chain.
_FAST_KINDS = {
    "elementwise": {"float": (np.float32,), "Variable": (np.float64,), "other parameterisations": (np.float64,),
                    "batch": (np.float64,), "Variable batch; points [N, 1, D]": (np.float64,)},
    "linear": {"float": (np.float32,), "other parameterisations": (np.float64,),
               "Variable batch; points [N, 1, D]": (np.float64,)},
}


def _chain_case(members, points):
  """A `Chain` of `(family, parameters, form)` members (forward order), each after its family's domain map."""

  def make(dtype, rng, dim=DIM):
    layers = []
    for family, parameters, form in members:
      bijector = _form_case(family, parameters, form).make(dtype, rng, dim)
      layers += [family.domain(dtype, bijector), bijector] if family.domain is not None else [bijector]
    return tfb.Chain(layers[::-1])

  # A chain of elementwise layers (domain maps are elementwise too) is elementwise; of linear ones, linear.
  structures = {family.structure for family, _, _ in members}
  return BijectorCase(make, structure=structures.pop() if len(structures) == 1 else None,
                      points=None if points is None else POINT_FORMS[points],
                      batch=any(FORMS[form].batch for _, _, form in members))


def _chain_cases():
  cases = {}
  for chain, names in _CHAINS.items():
    for kind, (preferred, index, points) in _KINDS.items():
      members = []
      for name in names:
        family = FAMILIES[name]
        if index != 0 and len(family.parameterisations) == 1:
          continue
        parameters = family.parameterisations[index]
        # Points of one batch member lie in every member's support only if no layer moves it, nor maps onto
        # part of the next layer's domain (`Exp` before `Power`: its range then depends on the layers below).
        if points is not None and (family.domain is not None or any(
            parameter.moves_support for parameter in parameters.values())):
          continue
        form = next((form for form in preferred if form in family.forms and all(
            FORMS[form].shape(parameter, DIM) is not None for parameter in parameters.values())), None)
        if form is not None:
          members.append((family, parameters, form))
      if members:
        cases[f"Chain[{chain}: {kind}]"] = _chain_case(members, points)
  return cases


FORM_CHAINS = _chain_cases()


def _inverted_form(case):
  """`Invert` of a form case (its forward rule), at the same points; a batch has no edges (`Family.edges`)."""
  inverted = dataclasses.replace(_inverted(case), points=case.points)
  return inverted if case.edges else dataclasses.replace(inverted, edges=())


_INVERTED_FORMS = {f"Invert({name})": _inverted_form(case) for name, case in FORM_CASES.items()
                   if case.structure == "elementwise"}
_INVERTED_FORMS.update({f"Invert({name})": _inverted_form(FORM_CHAINS[name])
                        for name in ["Chain[elementwise: batch]", "Chain[elementwise: Variable]"]})
BIJECTORS.update(FORM_CASES)
BIJECTORS.update(FORM_CHAINS)
BIJECTORS.update(_INVERTED_FORMS)
# The names of every form case, chains and `Invert`s included (the property tests draw them as a group of their own).
FORM_NAMES = frozenset(FORM_CASES) | frozenset(FORM_CHAINS) | frozenset(_INVERTED_FORMS)
# `{name: dtypes}` of the form cases CI runs in `test_bijectors`' main test; the rest of them, and the other tests
# of them, run in the full suite (`slow`, `CI_RUN_SLOW=1`).
FAST_FORMS = {f"Chain[{chain}: {kind}]": dtypes for chain, kinds in _FAST_KINDS.items()
              for kind, dtypes in kinds.items()}
FAST_FORMS["Invert(Chain[elementwise: batch])"] = (np.float64,)
