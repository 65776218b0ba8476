"""Derivatives of conditioner networks: outputs, Jacobian, and vector–Hessian contraction.

Coupling and autoregressive layers compute their elementwise parameters with a network `o = c(y)`. Their
pullbacks need, at a batch of points, the outputs `o` (`[*batch, P]`), the Jacobian, held transposed as
`jacobian_transpose` (`[*batch, D, P]`, `[..., i, p] = ∂o_p/∂y_i`), and, for one weight vector `w` per point,
the contraction `Σ_p w_p ∇²o_p` (`[*batch, D, D]`); never the `[P, D, D]` tensor of second derivatives itself.

For a dense network of smooth activations, `z_l = a_{l-1} W_l + b_l`, `a_l = σ(z_l)`, all of it comes from the
kernels. Forward mode carries the tangents `T_l = (∂z_l/∂y)ᵀ` (`[*batch, D, H_l]`), and one backward pass of
adjoints `δ_l = ∂(w·o)/∂a_l` gives

.. math::

    \\sum_p w_p ∇^2 o_p = \\sum_l T_l \\operatorname{diag}(δ_l ⊙ σ''(z_l)) T_l^T,

matrix products only (Pearlmutter-style; cf. BackPACK's Hessian backpropagation). The tangents are laid out with
the derivative's direction first, so that each layer's `T_{l+1} = (T_l ⊙ σ'(z_l)) W_{l+1}` is one product of all
points' tangents, `[N·D, H_l]`, with the shared kernel: one large GEMM instead of N small ones, about twice the
throughput on a CPU at `D = H = 64`. Activations with `σ'' = 0` almost everywhere (ReLU) contribute nothing: the
returned contraction is that of the piecewise-linear network away from its kinks, where the Hessian is not
defined. Any other network is differentiated by nested tapes on that network alone.
"""

import abc

import tensorflow as tf
import tf_keras
from tensorflow_probability.python.bijectors import masked_autoregressive as maf_lib

from tfp_hessian import private_api, products, tapes

__all__ = [
    "ConditionerDerivatives",
    "times_kernel",
    "times_transpose",
    "quadratic_form",
    "DenseNetworkDerivatives",
    "AutodiffDerivatives",
    "EmbeddedConditioner",
    "DenseShiftAndLogScale",
    "activation_derivatives",
]


def _tanh(z):
  t = tf.tanh(z)
  d1 = 1 - t * t
  return t, d1, -2 * t * d1


def _sigmoid(z):
  s, s_bar = tf.sigmoid(z), tf.sigmoid(-z)
  d1 = s * s_bar
  return s, d1, d1 * (s_bar - s)


def _softplus(z):
  s, s_bar = tf.sigmoid(z), tf.sigmoid(-z)
  return tf.nn.softplus(z), s, s * s_bar


def _relu(z):
  # σ'' = 0 wherever it exists; at z = 0 TF's own gradient of relu is 0, and so is ours.
  return tf.nn.relu(z), tf.cast(z > 0, z.dtype), tf.zeros_like(z)


def _elu(z):
  e = tf.exp(tf.minimum(z, 0.))
  positive = z > 0
  return tf.nn.elu(z), tf.where(positive, tf.ones_like(z), e), tf.where(positive, tf.zeros_like(z), e)


def _swish(z):
  s, s_bar = tf.sigmoid(z), tf.sigmoid(-z)
  ds = s * s_bar
  return z * s, s + z * ds, 2 * ds + z * ds * (s_bar - s)


def _linear(z):
  return z, tf.ones_like(z), tf.zeros_like(z)


_ACTIVATIONS = {
    "tanh": _tanh, "sigmoid": _sigmoid, "softplus": _softplus, "relu": _relu, "elu": _elu,
    "swish": _swish, "silu": _swish, "linear": _linear,
}


def activation_derivatives(activation):
  """`z -> (σ(z), σ'(z), σ''(z))` for a Keras activation (name or function), or None if unknown."""
  if activation is None:
    return _linear
  if isinstance(activation, str):
    name = activation
  else:
    name = getattr(activation, "__name__", None)
  return _ACTIVATIONS.get(name)


def times_kernel(tangents, kernel):
  """`T W` for tangents `T` (`[*batch, D, H]`) and a kernel `W` (`[H, H']`) shared by every point: one GEMM."""
  return tf.tensordot(tangents, kernel, [[-1], [0]])


def times_transpose(matrix, tangents):
  """`M Tᵀ` for tangents `T` (`[*batch, D, K]`, or `[D, K]` shared by every point: then one GEMM)."""
  if tangents.shape.rank == 2:
    return tf.tensordot(matrix, tangents, [[-1], [1]])
  return products.matmul(matrix, tangents, transpose_b=True)


def quadratic_form(tangents, weights):
  """`T diag(c) Tᵀ`, `[*batch, D, D]`, for tangents `T` (`[*batch, D, R]`, or `[D, R]` shared by every point) and
  weights `c` (`[*batch, R]`); one GEMM where `T` is shared."""
  return times_transpose(tangents * weights[..., tf.newaxis, :], tangents)


def _columns(matrix, columns):
  """`matrix[..., columns]` for a slice or an integer vector of columns."""
  if isinstance(columns, slice):
    return matrix[..., columns]
  return tf.gather(matrix, columns, axis=-1)


class ConditionerDerivatives(abc.ABC):
  """Outputs `[*batch, P]`, transposed Jacobian `[*batch, D, P]` and contraction of a network at `[*batch, D]`."""

  outputs = None
  jacobian_transpose = None

  @property
  def jacobian(self):
    """`∂o/∂y`, `[*batch, P, D]`: for inspection and tests; pullbacks use `jacobian_transpose`."""
    return tf.linalg.matrix_transpose(self.jacobian_transpose)

  def jacobian_transpose_columns(self, columns):
    """`jacobian_transpose` of the outputs `columns` only (a slice or an integer vector), `[*batch, D, K]`."""
    return _columns(self.jacobian_transpose, columns)

  @abc.abstractmethod
  def contract(self, weights):
    """`Σ_p w_p ∇²o_p`, `[*batch, D, D]`, for weights `w` of shape `[*batch, P]`."""

  def factors(self, weights):
    """`[(T_l [*batch, D, R_l] or [D, R_l], c_l [*batch, R_l])]` with `Σ_p w_p ∇²o_p = Σ_l T_l diag(c_l) T_lᵀ`
    (`quadratic_form`), or None.

    Lets a pullback fold the contraction into its own products instead of forming it first.
    """
    del weights
    return None


class DenseNetworkDerivatives(ConditionerDerivatives):
  """A chain of dense layers, differentiated from its kernels.

  Args:
    layers: `[(kernel [in, out], bias [out] or None, activation)]`, the last one's activation applying to the
      network's output; `activation` is `z -> (σ, σ', σ'')` or None for linear, and may compute in its own dtype.
    y: `[*batch, D]` points.
  """

  def __init__(self, layers, y):
    self._kernels = [kernel for kernel, _, _ in layers]
    self._derivatives = []  # per layer: (σ'(z), σ''(z), T = (∂z/∂y)ᵀ), or None where linear
    a, tangents = y, None  # tangents: (∂a/∂y)ᵀ, [*batch, D, H]; None means the identity
    for kernel, bias, activation in layers[:-1]:
      a, tangents = self._layer(a, tangents, kernel, bias, activation)
    kernel, bias, activation = layers[-1]
    if activation is None:
      # A linear read-out: its tangents are formed on demand, for the outputs a pullback asks for
      # (`jacobian_transpose_columns`), from those of its input (None: the network is this one layer).
      self._readout_input, self._jacobian_transpose = tangents, None
      self._derivatives.append(None)
      self.outputs = tf.tensordot(a, kernel, [[-1], [0]]) + (0 if bias is None else bias)
    else:
      self.outputs, self._jacobian_transpose = self._layer(a, tangents, kernel, bias, activation)

  def _layer(self, a, tangents, kernel, bias, activation):
    z = tf.tensordot(a, kernel, [[-1], [0]])
    if bias is not None:
      z = z + bias
    # (∂z/∂y)ᵀ = (∂a/∂y)ᵀ W; for the first layer the same matrix for every point.
    tz = kernel if tangents is None else times_kernel(tangents, kernel)
    if activation is None:
      self._derivatives.append(None)
      return z, tz
    value, d1, d2 = activation(z)
    self._derivatives.append((d1, d2, tz))
    return value, tz * d1[..., tf.newaxis, :]

  def _read_out(self, kernel):
    return kernel if self._readout_input is None else times_kernel(self._readout_input, kernel)

  @property
  def jacobian_transpose(self):
    if self._jacobian_transpose is None:
      self._jacobian_transpose = self._read_out(self._kernels[-1])
    return self._jacobian_transpose

  def jacobian_transpose_columns(self, columns):
    """As `ConditionerDerivatives`'; through a linear read-out, one product with the kernel's `columns` only."""
    if self._derivatives[-1] is not None:
      return super().jacobian_transpose_columns(columns)
    return self._read_out(_columns(self._kernels[-1], columns))

  @property
  def linear_readout(self):
    """`(W [H, P], σ'(z_L) [*batch, H])` if the outputs are `o = σ(z_L) W + b`, a linear map of a hidden layer.

    Then `(∂o/∂y)ᵀ = T_L diag(σ'(z_L)) W`, with `T_L = (∂z_L/∂y)ᵀ` the first tangents of `factors`: a pullback may
    keep the Jacobian in that factored form, `O(P·H·D)` instead of `O(P·D²)` when the hidden layer is narrower
    than D. None if the last layer has an activation or there is no hidden layer.
    """
    if len(self._kernels) < 2 or self._derivatives[-1] is not None or self._derivatives[-2] is None:
      return None
    return self._kernels[-1], self._derivatives[-2][0]

  def factors(self, weights):
    adjoint = weights  # ∂(w·o)/∂a for the current layer's output
    factors = []
    for kernel, derivatives in zip(reversed(self._kernels), reversed(self._derivatives)):
      if derivatives is not None:
        d1, d2, tangents = derivatives
        factors.append((tangents, adjoint * d2))
        adjoint = adjoint * d1
      adjoint = tf.tensordot(adjoint, kernel, [[-1], [1]])
    return factors

  def contract(self, weights):
    d = self._kernels[0].shape[0]
    hess = tf.zeros(tf.concat([tf.shape(weights)[:-1], [d, d]], 0), weights.dtype)
    for tangents, c in self.factors(weights):
      hess = hess + quadratic_form(tangents, c)
    return hess


class AutodiffDerivatives(ConditionerDerivatives):
  """Any differentiable network `fn: [*batch, D] -> [*batch, P]`, by tapes on that network alone.

  Points are independent, so Jacobians and Hessians of sums over the batch are per-point ones. Where `fn` gives
  more points than `y` holds (a condition of its own batch), `y` is broadcast to them first, so that each point
  keeps its own derivatives.
  """

  def __init__(self, fn, y):
    self._fn = fn
    outputs = fn(y)
    if outputs.shape[:-1] != y.shape[:-1]:
      y = tf.broadcast_to(y, tf.concat([tf.broadcast_dynamic_shape(tf.shape(outputs)[:-1], tf.shape(y)[:-1]),
                                        tf.shape(y)[-1:]], 0))
    self._y = tf.identity(y)
    self.outputs, jacobian, _ = tapes.per_point_jacobian(fn, self._y)
    self.jacobian_transpose = tf.linalg.matrix_transpose(jacobian)

  def contract(self, weights):
    extra = weights.shape.rank - self.outputs.shape.rank
    if extra > 0:  # Several weight vectors per point (inspection only): one contraction each.
      return tf.stack([self.contract(w) for w in tf.unstack(weights)])
    return tapes.per_point_hessian(self._fn, tf.identity(self._y), output_gradients=weights)[2]


class EmbeddedConditioner(ConditionerDerivatives):
  """A coupling conditioner of `y_C` with outputs `[m, s]` for `y_T`, seen as one of all of `y` with `2D` outputs.

  Outputs outside `T` are zero (the conditioning block passes through unchanged) and nothing depends on
  coordinates outside `C`: the embedding pads, it never differentiates again.

  Args:
    inner: `ConditionerDerivatives` of the network at `y_C`, outputs `[*batch, 2|T|]`.
    size: D.
    conditioning: the slice `C`.
    transformed: the slice `T`.
  """

  def __init__(self, inner, size, conditioning, transformed):
    self._inner = inner
    self._size = size
    self._conditioning, self._transformed = conditioning, transformed
    units = transformed.stop - transformed.start
    rank = inner.outputs.shape.rank
    self.outputs = tf.concat([self._pad(inner.outputs[..., :units], transformed, rank - 1),
                              self._pad(inner.outputs[..., units:], transformed, rank - 1)], axis=-1)
    tangents = inner.jacobian_transpose
    rank = tangents.shape.rank
    tangents = self._pad(tangents, conditioning, rank - 2)
    self.jacobian_transpose = tf.concat([self._pad(tangents[..., :units], transformed, rank - 1),
                                         self._pad(tangents[..., units:], transformed, rank - 1)], axis=-1)

  def _pad(self, value, block, axis):
    """`value` zero-padded along `axis` from the block's length to D."""
    paddings = [[0, 0]] * value.shape.rank
    paddings[axis] = [block.start, self._size - block.stop]
    return tf.pad(value, paddings)

  def _inner_weights(self, weights):
    t = self._transformed
    return tf.concat([weights[..., t], weights[..., self._size:][..., t]], axis=-1)

  def contract(self, weights):
    rank = weights.shape.rank
    hess = self._inner.contract(self._inner_weights(weights))
    return self._pad(self._pad(hess, self._conditioning, rank - 1), self._conditioning, rank)

  def factors(self, weights):
    factors = self._inner.factors(self._inner_weights(weights))
    if factors is None:
      return None
    return [(self._pad(t, self._conditioning, t.shape.rank - 2), c) for t, c in factors]


def made_layers(network, conditional_input=None):
  """The masked dense layers of a `tfb.AutoregressiveNetwork`, or None if it cannot be read from its kernels.

  The kernels are used as the network uses them: Keras keeps them masked through a constraint, and a kernel set
  by hand past its mask changes the network, and so `log_prob`, and so (exactly) its Hessian. Each activation
  computes in the dtype of its Keras layer, as the network itself does (float32 unless
  `tf_keras.backend.floatx()` is float64).

  A conditional network (`conditional=True`) adds `c W_c` to the pre-activation of its first layer or of every
  layer (`conditional_input_layers`): for a fixed condition `c` that is a per-point bias, so the layers come back
  with biases `b + c W_c` of shape `[*batch, units]` and the derivatives with respect to `y` are those of an
  unconditional network.

  Args:
    network: the conditioner of a `MaskedAutoregressiveFlow`.
    conditional_input: the condition `[*batch, C]` (or `[C]`), required for a conditional network.
  """
  if not isinstance(network, maf_lib.AutoregressiveNetwork):
    return None
  model = private_api.made_model(network)
  if model is None:
    return None
  conditional = private_api.made_is_conditional(network)
  if conditional and conditional_input is None:
    return None
  condition_input = model.inputs[1] if conditional else None
  dense, activations = [], []
  for layer in model.layers:
    if isinstance(layer, tf_keras.layers.Dense):
      if condition_input is not None and layer.input is condition_input:
        if not dense:
          return None
        dense[-1][1].append(layer)  # the condition's term of the autoregressive layer before it
      else:
        dense.append((layer, []))
    elif isinstance(layer, tf_keras.layers.Activation):
      activations.append(layer)
  if len(activations) != len(dense) - 1:
    return None
  layers = []
  for k, (layer, condition_layers) in enumerate(dense):
    kernel = tf.convert_to_tensor(layer.kernel)
    bias = layer.bias if layer.use_bias else None
    for condition_layer in condition_layers:
      c = tf.cast(conditional_input, condition_layer.compute_dtype)
      term = tf.cast(tf.tensordot(c, condition_layer.kernel, [[-1], [0]]), kernel.dtype)
      bias = term if bias is None else bias + term
    activation = None
    if k < len(activations):
      derivatives = activation_derivatives(activations[k].activation)
      if derivatives is None:
        return None
      activation = _in_dtype(derivatives, activations[k].compute_dtype)
    layers.append((kernel, bias, activation))
  return layers


def _in_dtype(derivatives, compute_dtype):
  """Evaluates `derivatives` in `compute_dtype`, casting back to the input's dtype."""

  def evaluate(z):
    if z.dtype == compute_dtype:
      return derivatives(z)
    return tuple(tf.cast(t, z.dtype) for t in derivatives(tf.cast(z, compute_dtype)))

  return evaluate


class DenseShiftAndLogScale(tf_keras.layers.Layer):
  """A dense conditioner for `tfb.RealNVP` whose derivatives are read from its kernels.

  Call it as RealNVP does, `(x0, output_units) -> (shift, log_scale)`; the output layer is built on first call
  for `2 · output_units` units. Any callable works as a RealNVP conditioner (by tapes on that network); this one
  makes the coupling layer's Hessian pullback a few batched matrix products, like an `AutoregressiveNetwork`'s.
  A conditional RealNVP passes `conditional_input=c` (`[*batch, C]` or `[C]`) through `bijector_kwargs`: the
  first layer then reads `[x0, c]`, and the condition stays a per-point bias of the analytic pullback.

  >>> coupling = tfb.RealNVP(num_masked=8, shift_and_log_scale_fn=DenseShiftAndLogScale([64, 64]))

  Args:
    hidden_units: sizes of the hidden layers.
    activation: a smooth Keras activation (`"tanh"`, `"softplus"`, `"sigmoid"`, `"elu"`, `"swish"`); `"relu"`
      gives the Hessian of the piecewise-linear network away from its kinks.
    **kwargs: passed to every `tf_keras.layers.Dense` (initializers, regularizers, ...) except `units`.
  """

  def __init__(self, hidden_units, activation="tanh", name="dense_shift_and_log_scale", dtype=None,
               **kwargs):
    super().__init__(name=name, dtype=dtype)
    if activation_derivatives(activation) is None:
      raise ValueError(f"`activation` must be one of {sorted(_ACTIVATIONS)}; got {activation!r}.")
    self._hidden = [tf_keras.layers.Dense(units, activation=activation, dtype=dtype, **kwargs)
                    for units in hidden_units]
    self._activation = activation
    self._dense_kwargs = kwargs
    self._output = None

  @property
  def built_for_output(self):
    """Whether the layer has been called (its output layer exists and its kernels can be read)."""
    return self._output is not None

  def call(self, x, output_units, conditional_input=None):
    if self._output is None:
      self._output = tf_keras.layers.Dense(2 * output_units, dtype=self.dtype, **self._dense_kwargs)
    h = x if conditional_input is None else _with_condition(x, tf.cast(conditional_input, x.dtype))
    for layer in self._hidden + [self._output]:
      h = layer(h)
    return h[..., :output_units], h[..., output_units:]

  def dense_layers(self, conditional_input=None):
    """`[(kernel, bias, activation)]` as `DenseNetworkDerivatives` takes them (after the first call).

    With a condition `c`, the first layer reads `[x, c]`: its kernel's rows for `c` become the per-point bias
    `b + c W_c`, and the kernel's rows for `x` the kernel.
    """
    derivatives = _in_dtype(activation_derivatives(self._activation), self.compute_dtype)
    layers = [(layer.kernel, layer.bias, derivatives) for layer in self._hidden] + [
        (self._output.kernel, self._output.bias, None)]
    if conditional_input is not None:
      kernel, bias, activation = layers[0]
      size = kernel.shape[0] - conditional_input.shape[-1]
      c = tf.cast(conditional_input, kernel.dtype)
      layers[0] = (kernel[:size], tf.tensordot(c, kernel[size:], [[-1], [0]]) + bias, activation)
    return layers


def _with_condition(x, condition):
  """`[x, c]` along the last axis, both broadcast to their common batch shape."""
  batch = tf.broadcast_dynamic_shape(tf.shape(x)[:-1], tf.shape(condition)[:-1])
  x = tf.broadcast_to(x, tf.concat([batch, tf.shape(x)[-1:]], 0))
  condition = tf.broadcast_to(condition, tf.concat([batch, tf.shape(condition)[-1:]], 0))
  return tf.concat([x, condition], axis=-1)
