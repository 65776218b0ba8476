"""The benchmark's flows: five random-weight flows over `R^D` (`FLOWS`), and points sampled from them.

Three of 4 layers each on a `MultivariateNormalDiag` base (`STOCK_FLOWS`, the flows of issues #4 and #13, built
from recipes that the JAX peer rebuilds with the same weights), and two of `tfp_hessian.examples` (`EXAMPLE_FLOWS`,
the real-flows issue's, no recipe). The package docstring (`harness/__init__.py`) describes each.
"""

import dataclasses

import numpy as np
import tensorflow as tf
import tensorflow_probability as tfp
import tf_keras

from tfp_hessian import examples, private_api
from tfp_hessian.conditioners import DenseShiftAndLogScale

tfb = tfp.bijectors
tfd = tfp.distributions

__all__ = ["CONDITION_SIZE", "EXAMPLE_FLOWS", "FLOWS", "HIDDEN_UNITS", "NUM_LAYERS", "STOCK_FLOWS", "BenchFlow",
           "build_flow", "sample_points"]

NUM_LAYERS = 4
HIDDEN_UNITS = (64, 64)
# Per-point condition of the conditional MAF (as benchmarks/real_flows.py).
CONDITION_SIZE = 4


@dataclasses.dataclass
class BenchFlow:
  """A benchmark flow and the recipe to rebuild it elsewhere (the JAX peer).

  Attributes:
    name: a key of `FLOWS`.
    distribution: the `tfd.TransformedDistribution`.
    base: `{"loc": [D], "scale_diag": [D]}` of the `MultivariateNormalDiag` base.
    layers: the bijectors from the base side, each a dict with `"kind"` (`scale_tril`, `shift`,
      `sinh_arcsinh`, `permute`, `real_nvp`, `maf`) and its parameters as numpy arrays; the conditioner
      networks as `kernels` / `biases` lists (kernels `[in, out]`, MADE kernels already masked).
    condition_size: size of the condition per point of a conditional flow (passed to `log_prob` as the
      distribution's `condition_kwargs(x)`), else 0.

  `base` and `layers` are None for the flows of `EXAMPLE_FLOWS`, which have no recipe.
  """

  name: str
  distribution: tfd.Distribution
  base: dict
  layers: list
  condition_size: int = 0

  @property
  def num_bijectors(self):
    return len(self.layers) if self.layers is not None else len(self.distribution.bijector.bijectors)


class _Draws:
  """A numpy `Generator` (its methods) that also rounds what it drew to the precision of the flow's weights.

  The weights are drawn in float64 and rounded once, to the dtype they are drawn for (`round`), where they become
  tensors; a float64 flow with a float32 flow's weights holds exactly the float32 numbers.
  """

  def __init__(self, rng, dtype):
    self._rng = rng
    self._precision = tf.as_dtype(dtype).as_numpy_dtype

  def __getattr__(self, name):
    return getattr(self._rng, name)

  def round(self, values):
    return np.asarray(values).astype(self._precision)


def _dense_weights(rng, shape, gain):
  return rng.standard_normal(shape) * gain / np.sqrt(shape[0])


def _well_conditioned_tril(rng, dim):
  """Cholesky factor of `(I + A Aᵀ/D)/4`, `A` standard normal: dense, off-diagonals of diagonal size, cond ≲ 2."""
  a = rng.standard_normal((dim, dim))
  return np.linalg.cholesky(0.25 * np.eye(dim) + a @ a.T / (4 * dim))


def _elementwise_affine(dim, dtype, rng):
  layers = []
  for _ in range(NUM_LAYERS):
    layers.append(dict(kind="scale_tril", scale_tril=_well_conditioned_tril(rng, dim)))
    layers.append(dict(kind="shift", shift=0.5 * rng.standard_normal(dim)))
    layers.append(dict(kind="sinh_arcsinh", skewness=0.5 * rng.standard_normal(dim),
                       tailweight=np.exp(rng.uniform(np.log(0.7), np.log(1.4), dim))))
  bijectors = []
  for layer in layers:
    params = {k: tf.constant(rng.round(v), dtype) for k, v in layer.items() if k != "kind"}
    bijectors.append({"scale_tril": tfb.ScaleMatvecTriL, "shift": tfb.Shift,
                      "sinh_arcsinh": tfb.SinhArcsinh}[layer["kind"]](**params))
  return layers, bijectors


def _conditioner_gains(num_dense):
  # Hidden layers saturate tanh noticeably (curvature everywhere); the read-out keeps log-scales of order one.
  return [1.5] * (num_dense - 1) + [0.7]


def _realnvp_coupling(dim, dtype, rng):
  num_masked = dim // 2
  conditioner = DenseShiftAndLogScale(list(HIDDEN_UNITS), activation="tanh", dtype=dtype)
  conditioner(tf.zeros([1, num_masked], dtype), dim - num_masked)
  dense = conditioner.dense_layers()
  kernels, biases = [], []
  for (kernel, bias, _), gain in zip(dense, _conditioner_gains(len(dense))):
    kernel.assign(rng.round(_dense_weights(rng, kernel.shape, gain)))
    bias.assign(rng.round(0.3 * rng.standard_normal(bias.shape)))
    kernels.append(kernel.numpy())
    biases.append(bias.numpy())
  layer = dict(kind="real_nvp", num_masked=num_masked, kernels=kernels, biases=biases, activation="tanh")
  return layer, tfb.RealNVP(num_masked=num_masked, shift_and_log_scale_fn=conditioner)


def _made(dim, dtype, rng):
  """A built `tfb.AutoregressiveNetwork` (`examples.autoregressive_network`) with random masked kernels."""
  made = examples.autoregressive_network(dim, HIDDEN_UNITS, dtype)
  network, masks = private_api.made_model(made), private_api.made_masks(made)
  dense = [layer for layer in network.layers if isinstance(layer, tf_keras.layers.Dense)]
  kernels, biases = [], []
  for layer, mask, gain in zip(dense, masks, _conditioner_gains(len(dense))):
    # The kernel constraint masks only optimizer updates: a kernel assigned by hand must be masked by hand.
    layer.kernel.assign(rng.round(_dense_weights(rng, layer.kernel.shape, gain) * mask))
    layer.bias.assign(rng.round(0.3 * rng.standard_normal(layer.bias.shape)))
    kernels.append(layer.kernel.numpy())
    biases.append(layer.bias.numpy())
  return made, dict(kind="maf", kernels=kernels, biases=biases, activation="tanh")


def _maf_layer(dim, dtype, rng):
  made, layer = _made(dim, dtype, rng)
  return layer, tfb.MaskedAutoregressiveFlow(shift_and_log_scale_fn=made)


def _with_permutations(make_layer):
  """`NUM_LAYERS` layers of `make_layer` with a random `Permute` between consecutive ones."""

  def build(dim, dtype, rng):
    layers, bijectors = [], []
    for k in range(NUM_LAYERS):
      if k:
        permutation = rng.permutation(dim).astype(np.int32)
        layers.append(dict(kind="permute", permutation=permutation))
        bijectors.append(tfb.Permute(permutation))
      layer, bijector = make_layer(dim, dtype, rng)
      layers.append(layer)
      bijectors.append(bijector)
    return layers, bijectors

  return build


# The three flows of issues #4 and #13, built here from recipes that the JAX peer rebuilds with the same weights.
STOCK_FLOWS = {
    "elementwise_affine": _elementwise_affine,
    "realnvp": _with_permutations(_realnvp_coupling),
    "maf": _with_permutations(_maf_layer),
}


def _conditional_maf(dim, dtype, seed):
  return examples.conditional_maf(dim=dim, condition_size=CONDITION_SIZE, dtype=dtype, seed=seed)


# The flows of the real-flows issue (#12), built by `tfp_hessian.examples` with its defaults except D: no recipe,
# so no peer can rebuild them.
EXAMPLE_FLOWS = {
    "research_flow": lambda dim, dtype, seed: examples.research_flow(dim=dim, dtype=dtype, seed=seed),
    "conditional_maf": _conditional_maf,
}

FLOWS = {**STOCK_FLOWS, **EXAMPLE_FLOWS}


def build_flow(name, dim, dtype, seed=0, weights_dtype=None):
  """The benchmark flow `name` (a key of `FLOWS`) over `R^dim` in `dtype`, weights from `seed`.

  A stock flow draws its weights for its dtype (a float64 flow is not the float32 one); `weights_dtype` gives it
  the weights of that dtype's flow instead, exactly: `build_flow(name, dim, tf.float64, weights_dtype=tf.float32)`
  is the float32 flow computed in float64, the truth its float32 Hessians are measured against
  (`benchmarks/float32_accuracy.py`). The example flows draw the same weights for either dtype, rounded to it.

  Returns:
    A `BenchFlow`.
  """
  if name not in FLOWS:
    raise ValueError(f"`name` must be one of {sorted(FLOWS)}; got {name!r}.")
  if dim < 2:
    raise ValueError(f"`dim` must be at least 2; got {dim}.")
  dtype = tf.as_dtype(dtype)
  if name in EXAMPLE_FLOWS:
    distribution = EXAMPLE_FLOWS[name](dim, dtype, seed)
    condition_size = CONDITION_SIZE if hasattr(distribution, "condition_kwargs") else 0
    return BenchFlow(name, distribution, None, None, condition_size)
  weights_dtype = tf.as_dtype(weights_dtype or dtype)
  rng = _Draws(np.random.default_rng([seed, dim, weights_dtype.size]), weights_dtype)
  base = dict(loc=0.3 * rng.standard_normal(dim), scale_diag=rng.uniform(0.7, 1.3, dim))
  layers, bijectors = STOCK_FLOWS[name](dim, dtype, rng)
  distribution = tfd.TransformedDistribution(
      tfd.MultivariateNormalDiag(tf.constant(rng.round(base["loc"]), dtype),
                                 tf.constant(rng.round(base["scale_diag"]), dtype)),
      tfb.Chain(bijectors[::-1]))  # Chain lists its bijectors from the z side.
  cast = lambda v: rng.round(v).astype(dtype.as_numpy_dtype) if np.asarray(v).dtype.kind == "f" else v
  layers = [{k: ([cast(a) for a in v] if isinstance(v, list) else cast(v)) for k, v in layer.items()}
            for layer in layers]
  return BenchFlow(name, distribution, {k: cast(v) for k, v in base.items()}, layers)


def sample_points(bench_flow, num_points, seed=0):
  """`(z, kwargs)`: `num_points` points sampled from the flow, and the keyword arguments of its `log_prob`.

  `kwargs` is `{}` but for a conditional flow: there, one condition per point (standard normal, from `seed`).
  `z` is a fresh constant, so that no method finds the points in TFP's cache of sampled tensors.
  """
  dim, dtype = bench_flow.distribution.event_shape[-1], bench_flow.distribution.dtype
  kwargs = {}
  if bench_flow.condition_size:
    rng = np.random.default_rng([seed, dim, num_points])
    kwargs = bench_flow.distribution.condition_kwargs(
        tf.constant(rng.standard_normal((num_points, bench_flow.condition_size)), dtype))
  z = bench_flow.distribution.sample(num_points, seed=(seed, dim), **kwargs)
  return tf.constant(z.numpy()), kwargs

