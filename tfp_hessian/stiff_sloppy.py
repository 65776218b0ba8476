"""Eigendecomposition of log-density Hessians: stiff and sloppy directions.

Names: `spectrum(hessian)` computes a `Spectrum` (the eigenpairs of every point); the summaries below take one,
as their argument `spectrum`.

A Hessian `H = ∇²_z log q(z)` is symmetric, so per point

.. math::

    H = V \\operatorname{diag}(λ) V^T, \\qquad V^T V = I,

with real eigenvalues `λ` and orthonormal eigenvectors, the columns of `V`. Here they are ordered by `|λ|`,
largest first: the first columns are the *stiff* directions, along which `log q` curves sharply (a small step
changes the density a lot), the last ones the *sloppy* directions, along which it barely changes (Sethna's
sloppy models; Transtrum et al., arXiv:1501.07668). Near a mode `q` is locally Gaussian, `H ≈ -Σ⁻¹`, and
`1/sqrt|λ|` is the standard deviation of `q` along that eigenvector.

Sign convention. A log-density Hessian is negative definite near a mode, so its eigenvalues are then all
negative. "Stiff" and "sloppy" go by the magnitude `|λ|` (curvature, whatever its sign). Away from a mode the
Hessian may be indefinite: a *positive* eigenvalue marks a direction along which `log q` is convex, i.e. one in
which the log density *increases* away from the point on both sides (a saddle, or the flank of the density
between modes); it is not a direction of concentration.

>>> hessian = tfp_hessian.log_prob_hessian(flow, z)            # [*batch, D, D]
>>> eigenvalues, eigenvectors, finite = tfp_hessian.spectrum(hessian)
>>> stiff = tfp_hessian.stiff_sloppy_split(tfp_hessian.spectrum(hessian), rtol=1e-3)   # [*batch, D] bool
"""

import collections

import numpy as np
import tensorflow as tf

__all__ = [
    "Spectrum",
    "condition_number",
    "coordinate_contributions",
    "decades",
    "spectrum",
    "stiff_sloppy_split",
]

Spectrum = collections.namedtuple("Spectrum", ["eigenvalues", "eigenvectors", "finite"])
Spectrum.__doc__ = """Eigendecomposition of symmetric matrices, stiffest (largest `|λ|`) first.

Attributes:
  eigenvalues: `[*batch, D]`, ordered by decreasing `|λ|`; NaN where `finite` is False.
  eigenvectors: `[*batch, D, D]`, unit eigenvectors as *columns*, `eigenvectors[..., :, k]` belonging to
    `eigenvalues[..., k]`; each column's largest-magnitude component is positive (eigenvectors are defined up
    to sign; this makes the choice reproducible). NaN where `finite` is False.
  finite: `[*batch]` bool, False at points whose matrix has a NaN or inf entry.
"""


def spectrum(hessian, symmetry_rtol=1e-6, name="spectrum"):
  """Eigenvalues and eigenvectors of symmetric matrices per point, ordered stiffest to sloppiest.

  Args:
    hessian: `[*batch, D, D]` symmetric matrices (a numpy array or a tensor), float32 or float64, typically
      from `tfp_hessian.log_prob_hessian`.
    symmetry_rtol: largest accepted asymmetry `max_ij |H_ij - H_ji| / max_ij |H_ij|` of any finite point;
      None skips the check. The symmetric part `(H + Hᵀ)/2` is what is decomposed.
    name: name scope of the ops.

  Returns:
    `Spectrum(eigenvalues [*batch, D], eigenvectors [*batch, D, D], finite [*batch])`, tensors of `hessian`'s
    dtype, with `H = V diag(λ) Vᵀ` at every finite point. Eigenvalues are ordered by decreasing `|λ|` (ties keep
    the ascending order of `tf.linalg.eigh`), eigenvectors are the matching columns. A point whose matrix has
    a NaN or inf entry gets `finite=False` and NaN eigenvalues and eigenvectors, never values of a
    decomposition of garbage; the other points are unaffected.

  Raises:
    TypeError: if `hessian` is not floating-point.
    ValueError: if `hessian` is not `[*batch, D, D]` (the message names its shape), or, eagerly, if a finite
      point is asymmetric beyond `symmetry_rtol` (the message names the worst entry). Inside `tf.function` the
      asymmetry is only known when the graph runs: it raises `tf.errors.InvalidArgumentError` then instead.

  >>> spectrum(tf.constant([[-4., 0.], [0., -0.01]])).eigenvalues.numpy()
  array([-4.  , -0.01], dtype=float32)
  """
  with tf.name_scope(name):
    hessian = tf.convert_to_tensor(hessian, name="hessian")
    if hessian.dtype not in (tf.float32, tf.float64):
      raise TypeError(f"`hessian` must be float32 or float64; got dtype {hessian.dtype.name}.")
    shape = hessian.shape
    if shape.rank is None or shape.rank < 2 or (
        shape[-1] is not None and shape[-2] is not None and shape[-1] != shape[-2]):
      raise ValueError(f"`hessian` must have shape [*batch, D, D] (square in its last two axes); got shape "
                       f"{shape}.")
    finite = tf.reduce_all(tf.math.is_finite(hessian), axis=[-2, -1])
    # Non-finite points are decomposed as zeros (eigh of NaN is undefined, and may not even return) and their
    # results replaced by NaN below.
    clean = tf.where(finite[..., tf.newaxis, tf.newaxis], hessian, tf.zeros_like(hessian))
    transpose = tf.linalg.matrix_transpose(clean)
    if symmetry_rtol is not None:
      clean = _check_symmetry(clean, transpose, symmetry_rtol)
    eigenvalues, eigenvectors = tf.linalg.eigh(0.5 * (clean + transpose))
    eigenvalues, eigenvectors = _stiff_first(eigenvalues, eigenvectors)
    eigenvectors = _largest_component_positive(eigenvectors)
    nan = tf.constant(np.nan, hessian.dtype)
    eigenvalues = tf.where(finite[..., tf.newaxis], eigenvalues, nan)
    eigenvectors = tf.where(finite[..., tf.newaxis, tf.newaxis], eigenvectors, nan)
    return Spectrum(eigenvalues, eigenvectors, finite)


def _check_symmetry(hessian, transpose, rtol):
  """`hessian`, after checking `max_ij |H - Hᵀ|_ij / max_ij |H_ij| <= rtol` at every point."""
  scale = tf.reduce_max(tf.abs(hessian), axis=[-2, -1])
  tiny = tf.constant(np.finfo(hessian.dtype.as_numpy_dtype).tiny, hessian.dtype)
  asymmetry = tf.abs(hessian - transpose) / tf.maximum(scale, tiny)[..., tf.newaxis, tf.newaxis]
  worst = tf.reduce_max(asymmetry) if asymmetry.shape.num_elements() != 0 else tf.zeros([], hessian.dtype)
  if tf.executing_eagerly():
    if worst > rtol:
      entry = np.unravel_index(int(np.argmax(asymmetry.numpy())), asymmetry.shape)
      point, (i, j) = entry[:-2], entry[-2:]
      values = hessian.numpy()[point]
      raise ValueError(
          f"`hessian` is not symmetric: at point {tuple(int(p) for p in point)}, entry ({i}, {j}) is "
          f"{float(values[i, j])!r} but ({j}, {i}) is {float(values[j, i])!r}, an asymmetry of "
          f"{float(worst):.3g} of the point's largest entry > symmetry_rtol {rtol:g}.")
    return hessian
  check = tf.debugging.assert_less_equal(
      worst, tf.cast(rtol, hessian.dtype),
      message=f"`hessian` is not symmetric: max_ij |H_ij - H_ji| / max_ij |H_ij| exceeds symmetry_rtol {rtol:g}")
  with tf.control_dependencies([check]):
    return tf.identity(hessian)


def _stiff_first(eigenvalues, eigenvectors):
  """Reorders `eigh`'s ascending output by decreasing `|λ|`, eigenvectors' columns alike."""
  order = tf.argsort(-tf.abs(eigenvalues), axis=-1, stable=True)
  batch_dims = eigenvalues.shape.rank - 1
  return (tf.gather(eigenvalues, order, axis=-1, batch_dims=batch_dims),
          tf.gather(eigenvectors, order, axis=-1, batch_dims=batch_dims))


def _largest_component_positive(eigenvectors):
  """Flips each column so that its largest-magnitude component is positive."""
  largest = tf.argmax(tf.abs(eigenvectors), axis=-2)  # [*batch, D]: row of each column's largest entry
  batch_dims = eigenvectors.shape.rank - 2
  # The entry at (largest[k], k) of each column: gather rows along the columns' own axis.
  columns = tf.linalg.matrix_transpose(eigenvectors)  # [*batch, D(column), D(row)]
  value = tf.gather(columns, largest[..., tf.newaxis], axis=-1, batch_dims=batch_dims + 1)[..., 0]
  sign = tf.where(value < 0, -tf.ones_like(value), tf.ones_like(value))
  return eigenvectors * sign[..., tf.newaxis, :]


def _field(decomposition, name):
  """One field of a `Spectrum` as a tensor (only that one: a summary may drop the eigenvectors to save memory)."""
  if not isinstance(decomposition, Spectrum):
    raise TypeError(f"`spectrum` must be a tfp_hessian.Spectrum (from `tfp_hessian.spectrum`); got "
                    f"{type(decomposition).__name__}.")
  return tf.convert_to_tensor(getattr(decomposition, name))


def stiff_sloppy_split(spectrum, rtol=None, count=None):  # pylint: disable=redefined-outer-name
  """Which directions are stiff: a `[*batch, D]` bool mask over `spectrum`'s eigenvalues (True: stiff).

  Exactly one of:

  - `rtol`: direction `k` is stiff if `|λ_k| >= rtol · max_k |λ_k|` (e.g. `rtol=1e-3`: within three decades of
    the stiffest);
  - `count`: the `count` stiffest directions are, the other `D - count` are sloppy.

  Since eigenvalues are ordered stiffest first, each row of the mask is some Trues followed by Falses, and the
  sloppy directions are `spectrum.eigenvectors[..., :, ~mask]` per point. Stiffness goes by `|λ|` whatever the
  sign (see the module docstring). Points with `finite=False` have no stiff direction (all False).

  Args:
    spectrum: a `Spectrum` from `tfp_hessian.spectrum`.
    rtol: relative threshold on `|λ|`, in `(0, 1]`.
    count: number of stiff directions, `0 <= count <= D`.

  Returns:
    `[*batch, D]` bool tensor.

  Raises:
    ValueError: unless exactly one of `rtol` and `count` is given, or if it is out of range.
  """
  eigenvalues = _field(spectrum, "eigenvalues")
  finite = _field(spectrum, "finite")[..., tf.newaxis]
  if (rtol is None) == (count is None):
    raise ValueError(f"Give exactly one of `rtol` and `count`; got rtol={rtol!r}, count={count!r}.")
  size = eigenvalues.shape[-1]
  if count is not None:
    if not isinstance(count, (int, np.integer)) or isinstance(count, bool) or not 0 <= count <= size:
      raise ValueError(f"`count` must be an integer in [0, D] = [0, {size}]; got {count!r}.")
    stiff = tf.range(size) < count
    return tf.logical_and(tf.broadcast_to(stiff, tf.shape(eigenvalues)), finite)
  if not 0 < rtol <= 1:
    raise ValueError(f"`rtol` must be in (0, 1]; got {rtol!r}.")
  magnitude = tf.abs(eigenvalues)
  largest = magnitude[..., :1]
  stiff = magnitude >= tf.cast(rtol, magnitude.dtype) * largest
  return tf.logical_and(stiff, finite)


def condition_number(spectrum):  # pylint: disable=redefined-outer-name
  """`[*batch]`: `max |λ| / min |λ|` per point; inf where an eigenvalue is 0, NaN where `finite` is False."""
  magnitude = tf.abs(_field(spectrum, "eigenvalues"))
  return magnitude[..., 0] / magnitude[..., -1]


def decades(spectrum):  # pylint: disable=redefined-outer-name
  """`[*batch]`: how many decades the spectrum spans, `log10(max |λ| / min |λ|)` per point.

  The headline number of a sloppy model: eigenvalues spread evenly over many decades. inf where an eigenvalue
  is 0, NaN where `finite` is False.
  """
  magnitude = tf.abs(_field(spectrum, "eigenvalues"))
  ln10 = tf.math.log(tf.constant(10., magnitude.dtype))
  return (tf.math.log(magnitude[..., 0]) - tf.math.log(magnitude[..., -1])) / ln10


def coordinate_contributions(spectrum):  # pylint: disable=redefined-outer-name
  """`[*batch, D (coordinate), D (direction)]`: how much each coordinate makes up each eigendirection.

  Entry `[..., i, k] = V_ik²`, the squared `i`-th component of the `k`-th (stiffest first) unit eigenvector;
  every column sums to 1. A column with one dominant entry is a direction along a single coordinate; a spread
  column is a collective direction, typical of sloppy models. NaN where `finite` is False.
  """
  return tf.square(_field(spectrum, "eigenvectors"))
