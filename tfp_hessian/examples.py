"""Flows of the kinds scientists train, for the demo, the notebooks, the benchmarks and the tests.

- `BoxMap` and `Shear` are bijectors as research code writes them: subclasses of `tfb.Bijector` with vector events
  (`forward_min_event_ndims=1`) and no Hessian rule, so the sweep serves them by its autodiff fallback;
  `ReversedShear` (an upper triangular Jacobian) and `RotatedShear` (a dense one) are variants with inverses that
  loop, for the fallback's forward direction;
- `research_flow`: MAF stages with `Permute` and `BatchNormalization`, a post-affine layer and a map onto a box;
- `conditional_maf`: an amortized posterior `q(θ | x)`, MAFs over conditional `AutoregressiveNetwork`s;
- `named_model`: a model over named parameters, a `JointDistributionNamed` whose parts depend on each other, and
  `named_surrogate`: a surrogate posterior over them, as `tfp.experimental.vi` builds it (a `DeferredModule`).

Weights are random (not near the identity), drawn from `seed`, so that every term of the Hessian is exercised.
They are float32 numbers in either dtype (`_float32`): a float64 flow is the float32 one exactly, computed in
float64, the truth its float32 derivatives are measured against.
"""

import numpy as np
import tensorflow as tf
import tensorflow_probability as tfp
import tf_keras

tfb = tfp.bijectors
tfd = tfp.distributions

__all__ = ["BoxMap", "ReversedShear", "RotatedShear", "Shear", "autoregressive_network", "conditional_maf",
           "named_model", "named_surrogate", "research_flow"]


class BoxMap(tfb.Bijector):
  """A map of R^D onto a box `(low, high)`, written as research code writes it: vector events, no rule.

  `forward(x) = low + (high - low) (tanh(x) + 1)/2` coordinate by coordinate, but declared with
  `forward_min_event_ndims=1`, as hand-written bijectors usually are, so no coordinatewise path can take it.
  """

  def __init__(self, low, high, name="box"):
    parameters = dict(locals())
    self._low, self._high = low, high
    super().__init__(forward_min_event_ndims=1, parameters=parameters, name=name)

  def _forward(self, x):
    return self._low + (self._high - self._low) * (tf.tanh(x) + 1) / 2

  def _inverse(self, y):
    return tf.atanh(2 * (y - self._low) / (self._high - self._low) - 1)

  def _forward_log_det_jacobian(self, x):
    # log((high - low)/2 · sech²x), with log sech²x = 2(log 2 - x - softplus(-2x)) (no overflow in cosh).
    log_sech2 = 2 * (np.log(2.) - x - tf.nn.softplus(-2 * x))
    return tf.reduce_sum(tf.math.log((self._high - self._low) / 2) + log_sech2, axis=-1)


class Shear(tfb.Bijector):
  """A volume-preserving map that mixes coordinates: `y_i = x_i + tanh(Σ_{j<i} L_ij x_j)`.

  Its Jacobian is unit lower triangular (log-det zero) but not constant, and its inverse is a loop over the
  coordinates: a layer of vector events with no rule.
  """

  def __init__(self, weights, name="shear"):
    parameters = dict(locals())
    self._weights = weights  # [D, D], only the strictly lower triangle is used
    super().__init__(forward_min_event_ndims=1, parameters=parameters, name=name)

  def _mask(self):
    return tf.linalg.band_part(self._weights, -1, 0) - tf.linalg.band_part(self._weights, 0, 0)

  def _forward(self, x):
    return x + tf.tanh(tf.linalg.matvec(self._mask(), x))

  def _inverse(self, y):
    weights = self._mask()
    xs = []
    for i in range(y.shape[-1]):
      shift = tf.reduce_sum(tf.stack(xs, -1) * weights[i, :i], -1) if xs else tf.zeros_like(y[..., 0])
      xs.append(y[..., i] - tf.tanh(shift))
    return tf.stack(xs, axis=-1)

  def _inverse_log_det_jacobian(self, y):
    return tf.zeros_like(y[..., 0])


class ReversedShear(tfb.Bijector):
  """`Shear` on the coordinates in reverse order, `y = P shear(P x)` (`P` the reversal), written as one layer: an
  upper triangular Jacobian, an inverse that loops."""

  def __init__(self, weights, name="reversed_shear"):
    parameters = dict(locals())
    self._shear = Shear(weights)
    super().__init__(forward_min_event_ndims=1, parameters=parameters, name=name)

  def _forward(self, x):
    return tf.reverse(self._shear.forward(tf.reverse(x, [-1])), [-1])

  def _inverse(self, y):
    return tf.reverse(self._shear.inverse(tf.reverse(y, [-1])), [-1])

  def _inverse_log_det_jacobian(self, y):
    return tf.zeros_like(y[..., 0])


class RotatedShear(tfb.Bijector):
  """`y = R shear(x)` for an orthogonal `R` (`rotation`, `[D, D]`), written as one layer: a dense Jacobian, an
  inverse that loops."""

  def __init__(self, weights, rotation, name="rotated_shear"):
    parameters = dict(locals())
    self._shear, self._rotation = Shear(weights), rotation
    super().__init__(forward_min_event_ndims=1, parameters=parameters, name=name)

  def _forward(self, x):
    return tf.linalg.matvec(self._rotation, self._shear.forward(x))

  def _inverse(self, y):
    return self._shear.inverse(tf.linalg.matvec(self._rotation, y, transpose_a=True))

  def _inverse_log_det_jacobian(self, y):
    return tf.zeros_like(y[..., 0])


def autoregressive_network(dim, hidden_units, dtype, activation="tanh", conditional_size=None,
                           conditional_layers="all_layers", input_order="left-to-right"):
  """A built `tfb.AutoregressiveNetwork(params=2)` over `[dim]` events, computing in `dtype` throughout.

  Its activation layers take tf-keras' floatx when they are created, so floatx is `dtype` while the network is
  built (otherwise a float64 network computes its activations in float32). Its weights are Keras' initial ones.

  Args:
    dim: the event size.
    hidden_units: the sizes of its hidden layers.
    dtype: float32 or float64.
    activation: of the hidden layers.
    conditional_size: the size of a `conditional_input` it also reads; None for none.
    conditional_layers: where the condition enters, "all_layers" or "first_layer".
    input_order: TFP's `input_order` ("left-to-right", "right-to-left", "random" or the degrees).
  """
  floatx = tf_keras.backend.floatx()
  tf_keras.backend.set_floatx(tf.as_dtype(dtype).name)
  conditional = dict(conditional=True, conditional_event_shape=[conditional_size],
                     conditional_input_layers=conditional_layers) if conditional_size else {}
  try:
    made = tfb.AutoregressiveNetwork(params=2, event_shape=[dim], hidden_units=list(hidden_units),
                                     activation=activation, dtype=dtype, input_order=input_order, **conditional)
    condition = dict(conditional_input=tf.zeros([1, conditional_size], dtype)) if conditional_size else {}
    made(tf.zeros([1, dim], dtype), **condition)
  finally:
    tf_keras.backend.set_floatx(floatx)
  return made


def _float32(values):
  """Drawn `values` rounded to float32 numbers, which either dtype holds exactly (the module's docstring)."""
  return np.asarray(values, np.float32)


def _made(rng, dim, hidden_units, dtype, conditional_size=None):
  """A built `tfb.AutoregressiveNetwork` (tanh) with random masked weights, computing in `dtype` throughout."""
  made = autoregressive_network(dim, hidden_units, dtype, conditional_size=conditional_size)
  for weight in made.trainable_weights:
    if weight.shape.rank == 2:
      weight.assign(_float32(rng.normal(size=weight.shape) / np.sqrt(weight.shape[0]) * 1.2))  # masked below
    else:
      weight.assign(_float32(rng.normal(size=weight.shape) * 0.3))
  for weight, constrained in ((w, getattr(w, "constraint", None)) for w in made.trainable_weights):
    if constrained is not None:
      weight.assign(constrained(weight))
  return made


def _tril(rng, dim, dtype):
  return tf.constant(_float32(np.tril(rng.normal(size=(dim, dim)) * 0.4, -1) + np.diag(rng.uniform(0.7, 1.4, dim))),
                     dtype)


def research_flow(dim=10, num_stages=3, hidden_units=(32, 32), dtype=tf.float32, seed=0):
  """MAF stages with `Permute` and `BatchNormalization` between, a post-affine layer and `BoxMap` onto `(-2, 3)`.

  The shape of flows in published research code that fits posteriors of physical parameters: the box map and a
  `Shear` per stage have no rule (the autodiff fallback serves them), the rest is analytic.
  """
  rng = np.random.default_rng(seed)
  layers = [BoxMap(tf.constant(-2., dtype), tf.constant(3., dtype)),
            tfb.Shift(tf.constant(_float32(rng.uniform(-0.5, 0.5, dim)), dtype)),
            tfb.Scale(tf.constant(_float32(0.1), dtype)),
            tfb.ScaleMatvecTriL(_tril(rng, dim, dtype))]
  for stage in range(num_stages):
    layer = tf_keras.layers.BatchNormalization(epsilon=float(_float32(1e-3)), dtype=dtype)  # Keras' default
    layer(tf.zeros([1, dim], dtype))
    layer.moving_mean.assign(_float32(rng.normal(size=dim) * 0.3))
    layer.moving_variance.assign(_float32(rng.uniform(0.5, 2., size=dim)))
    layers += [tfb.MaskedAutoregressiveFlow(_made(rng, dim, hidden_units, dtype), name=f"maf{stage}"),
               tfb.Permute(rng.permutation(dim)),
               Shear(tf.constant(_float32(rng.normal(size=(dim, dim)) * 0.3), dtype)),
               tfb.BatchNormalization(layer, training=False)]
  base = tfd.MultivariateNormalDiag(tf.zeros(dim, dtype))
  return tfd.TransformedDistribution(base, tfb.Chain(layers))


def conditional_maf(dim=16, condition_size=4, num_layers=2, hidden_units=(32, 32), dtype=tf.float32, seed=0):
  """An amortized posterior `q(θ | x)`: MAFs of conditional `AutoregressiveNetwork`s, a `Permute` between.

  Call it as TFP does, the condition keyed by bijector name: `flow.log_prob(z, bijector_kwargs=kwargs)` with
  `kwargs = {f"maf{k}": {"conditional_input": x} for k in range(num_layers)}`; `condition_kwargs(x)` of the
  returned flow builds that dict.
  """
  rng = np.random.default_rng(seed)
  layers = []
  for k in range(num_layers):
    layers += [tfb.MaskedAutoregressiveFlow(_made(rng, dim, hidden_units, dtype, condition_size), name=f"maf{k}"),
               tfb.Permute(rng.permutation(dim))]
  flow = tfd.TransformedDistribution(tfd.MultivariateNormalDiag(tf.zeros(dim, dtype)), tfb.Chain(layers[:-1]))
  names = [f"maf{k}" for k in range(num_layers)]
  flow.condition_kwargs = lambda x: dict(bijector_kwargs={name: dict(conditional_input=x) for name in names})
  return flow


def named_model(num_weights=8, dtype=tf.float32, seed=0):
  """A model over three named parameters: `scale ~ HalfNormal`, `w | scale` (a vector), `noise | scale`.

  A `JointDistributionNamed` whose parts depend on each other, so its Hessian has every cross term.
  """
  rng = np.random.default_rng(seed)
  loc = tf.constant(_float32(rng.normal(size=num_weights) * 0.5), dtype)
  return tfd.JointDistributionNamed(dict(
      scale=tfd.HalfNormal(tf.constant(1., dtype)),
      w=lambda scale: tfd.Independent(tfd.Normal(loc, scale[..., tf.newaxis]), 1),
      noise=lambda scale: tfd.LogNormal(tf.math.log(scale), tf.constant(0.5, dtype))))


def named_surrogate(num_weights=8, dtype=tf.float32, seed=0):
  """A surrogate posterior over the named parameters of `named_model`, as `tfp.experimental.vi` builds it.

  A `DeferredModule`: an affine (lower-triangular) flow over the three parts, each mapped onto its support
  (`Softplus`, `Identity`, `Exp`), with random (not near-identity) variables.
  """
  rng = np.random.default_rng(seed)
  surrogate = tfp.experimental.vi.build_affine_surrogate_posterior(
      event_shape={"scale": [], "w": [num_weights], "noise": []}, operators="tril",
      bijector={"scale": tfb.Softplus(), "w": tfb.Identity(), "noise": tfb.Exp()}, dtype=dtype,
      seed=(seed, 1))
  for variable in surrogate.trainable_variables:
    variable.assign(_float32(rng.normal(size=variable.shape) * 0.3 + (0.8 if "diag" in variable.name else 0.)))
  return surrogate
