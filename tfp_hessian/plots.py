"""Figures of stiff and sloppy directions (needs matplotlib: `pip install tfp_hessian[plot]`).

- `eigenvalue_ladder`: the classic sloppy-model figure, the eigenvalues of each point's Hessian as horizontal
  rungs on a log scale of `|λ|`, one column per point, the sign of `λ` by colour.
- `density_with_directions`: for a flow over R², contours of `log q` with the stiff and sloppy eigenvectors of
  the Hessian drawn at chosen points, each `1/sqrt|λ|` long on either side (the local standard deviation along
  it, where `q` is locally Gaussian).

matplotlib is imported when a function is called, not with the package.
"""

import numpy as np
import tensorflow as tf

from tfp_hessian import sweep
from tfp_hessian.stiff_sloppy import Spectrum, spectrum as eigendecompose

__all__ = ["NEGATIVE_COLOR", "POSITIVE_COLOR", "SLOPPY_COLOR", "STIFF_COLOR", "density_with_directions",
           "eigenvalue_ladder"]

NEGATIVE_COLOR = "C0"  # λ < 0: log q curves down, as at a mode
POSITIVE_COLOR = "C3"  # λ > 0: log q curves up (a saddle or a flank, away from a mode)
STIFF_COLOR = "C3"
SLOPPY_COLOR = "C0"


def _matplotlib():
  """`(matplotlib.pyplot, matplotlib.collections, matplotlib.lines)`, or an ImportError saying what to install."""
  try:
    import matplotlib.collections  # pylint: disable=import-outside-toplevel
    import matplotlib.lines  # pylint: disable=import-outside-toplevel
    import matplotlib.pyplot  # pylint: disable=import-outside-toplevel
  except ImportError as error:
    raise ImportError("tfp_hessian.plots needs matplotlib: pip install tfp_hessian[plot]") from error
  return matplotlib.pyplot, matplotlib.collections, matplotlib.lines


def _axes(ax):
  pyplot, _, _ = _matplotlib()
  return pyplot.gca() if ax is None else ax


def _numpy_spectrum(spectrum):
  if not isinstance(spectrum, Spectrum):
    raise TypeError(f"`spectrum` must be a tfp_hessian.Spectrum (from `tfp_hessian.spectrum`); got "
                    f"{type(spectrum).__name__}.")
  return Spectrum(*(np.asarray(part) for part in spectrum))


def eigenvalue_ladder(spectrum, ax=None, labels=None):
  """Draws each point's eigenvalues as rungs at `|λ|` on a log axis, one column per point.

  Negative eigenvalues (`log q` curving down, as near a mode) are drawn in `NEGATIVE_COLOR`, positive ones
  (curving up: a saddle or flank, see `tfp_hessian.spectrum`) in `POSITIVE_COLOR`. A sloppy model shows rungs
  spread evenly over many decades. Exactly zero eigenvalues have no place on a log axis and are left out;
  columns of non-finite points are labelled "not finite".

  Args:
    spectrum: a `Spectrum` with eigenvalues `[*batch, D]`; the batch is flattened into columns (row-major).
    ax: matplotlib axes to draw into; the current axes if None.
    labels: one tick label per column; `z[0], z[1], ...` if None.

  Returns:
    The axes.

  Raises:
    ImportError: if matplotlib is not installed.
    ValueError: if `labels` does not have one entry per column.
  """
  _, collections, lines = _matplotlib()
  spectrum = _numpy_spectrum(spectrum)
  eigenvalues = spectrum.eigenvalues.reshape(-1, spectrum.eigenvalues.shape[-1])
  finite = spectrum.finite.reshape(-1)
  columns = eigenvalues.shape[0]
  labels = [f"z[{n}]" for n in range(columns)] if labels is None else list(labels)
  if len(labels) != columns:
    raise ValueError(f"`labels` must have one entry per point ({columns}); got {len(labels)}.")
  ax = _axes(ax)
  segments, colors = [], []
  for n in range(columns):
    for value in eigenvalues[n][np.isfinite(eigenvalues[n]) & (eigenvalues[n] != 0)]:
      segments.append([(n - 0.35, abs(value)), (n + 0.35, abs(value))])
      colors.append(NEGATIVE_COLOR if value < 0 else POSITIVE_COLOR)
  ax.set_yscale("log")
  # Data limits, not `set_ylim`: axes that share y (several ladders side by side) then all fit every rung.
  ax.add_collection(collections.LineCollection(segments, colors=colors, linewidths=1.5), autolim=True)
  ax.margins(y=0.08)
  ax.autoscale_view(scalex=False)
  for n in np.flatnonzero(~finite):
    ax.text(n, 0.5, "not finite", rotation=90, ha="center", va="center", transform=ax.get_xaxis_transform())
  ax.set_xlim(-0.6, columns - 0.4)
  ax.set_xticks(range(columns))
  ax.set_xticklabels(labels)
  ax.set_ylabel(r"$|\lambda|$ of $\nabla^2 \log q$")
  handles = [lines.Line2D([], [], color=NEGATIVE_COLOR, label=r"$\lambda < 0$")]
  if np.any(eigenvalues > 0):
    handles.append(lines.Line2D([], [], color=POSITIVE_COLOR, label=r"$\lambda > 0$"))
  ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.01, 1), fontsize="small", borderaxespad=0)
  return ax


def density_with_directions(distribution, points, hessians=None, ax=None, extent=None, *, grid_size=150,
                            levels=12, seed=0):
  """Contours of `log q` over R² with the stiff and sloppy directions at `points`.

  At each point, the Hessian's eigenvectors are drawn as segments centred on it, `1/sqrt|λ|` long on either
  side: for a density that is locally Gaussian there, `H ≈ -Σ⁻¹` and that is one standard deviation along the
  direction, so the short (stiff, `STIFF_COLOR`) and long (sloppy, `SLOPPY_COLOR`) segments sketch the local
  covariance ellipse. Directions with `λ > 0` (`log q` curving up, away from a mode) are dashed. The axes have
  equal aspect, so the directions look as orthogonal as they are.

  Args:
    distribution: a distribution with event shape `[2]` and no batch shape, e.g. a 2-D flow.
    points: `[N, 2]` (or `[2]`) points to draw directions at.
    hessians: `[N, 2, 2]` Hessians of `log q` at `points`; `tfp_hessian.log_prob_hessian` if None.
    ax: matplotlib axes to draw into; the current axes if None.
    extent: `(xmin, xmax, ymin, ymax)` of the contour grid; if None, the box holding `points` and the central
      99% of 2,000 samples of `distribution` in each coordinate, widened by 10%.
    grid_size: grid points per axis for the contours.
    levels: number of filled contour levels, spaced evenly in `log q` from its maximum on the grid down to
      25 nats below it (or to its 2nd percentile on the grid, if that is higher).
    seed: seed of the samples that choose `extent`.

  Returns:
    The axes.

  Raises:
    ImportError: if matplotlib is not installed.
    ValueError: if `distribution` is not over R² or `points`, `hessians` or `extent` have the wrong shape.
  """
  _, collections, lines = _matplotlib()
  size = sweep.check_distribution(distribution).size
  batch_shape = sweep.batch_shape(distribution)
  if size != 2 or batch_shape.rank != 0:
    raise ValueError(f"`distribution` must have event shape [2] and batch shape []; got event shape "
                     f"{distribution.event_shape}, batch shape {batch_shape}.")
  dtype = tf.as_dtype(distribution.dtype)
  if np.ndim(points) not in (1, 2) or np.shape(points)[-1] != 2:
    raise ValueError(f"`points` must have shape [N, 2] or [2]; got shape {np.shape(points)}.")
  points = np.asarray(points, dtype.as_numpy_dtype).reshape(-1, 2)
  if hessians is None:
    hessians = sweep.log_prob_hessian(distribution, tf.constant(points))
  hessians = np.asarray(hessians)
  if hessians.shape != (points.shape[0], 2, 2):
    raise ValueError(f"`hessians` must have shape [N, 2, 2] = {[points.shape[0], 2, 2]}; got {hessians.shape}.")
  if extent is None:
    extent = _default_extent(distribution, points, seed)
  if len(extent) != 4:
    raise ValueError(f"`extent` must be (xmin, xmax, ymin, ymax); got {extent!r}.")
  xmin, xmax, ymin, ymax = (float(e) for e in extent)

  ax = _axes(ax)
  x, y = np.meshgrid(np.linspace(xmin, xmax, grid_size), np.linspace(ymin, ymax, grid_size))
  grid = np.stack([x.ravel(), y.ravel()], axis=-1).astype(dtype.as_numpy_dtype)
  log_prob = np.asarray(distribution.log_prob(tf.constant(grid))).reshape(x.shape).astype(np.float64)
  finite = np.isfinite(log_prob)
  if np.any(finite):
    top = log_prob[finite].max()
    bottom = max(np.percentile(log_prob[finite], 2), top - 25)
    filled = ax.contourf(x, y, np.ma.masked_invalid(np.maximum(log_prob, bottom)),
                         levels=np.linspace(bottom, top, levels + 1), cmap="Greys", alpha=0.8)
    ax.figure.colorbar(filled, ax=ax, label=r"$\log q$")

  decomposition = eigendecompose(hessians)
  eigenvalues, eigenvectors = np.asarray(decomposition.eigenvalues), np.asarray(decomposition.eigenvectors)
  for k, color in ((0, STIFF_COLOR), (1, SLOPPY_COLOR)):
    segments, styles = [], []
    for n in np.flatnonzero(np.asarray(decomposition.finite)):
      if eigenvalues[n, k] == 0:
        continue
      half = eigenvectors[n, :, k] / np.sqrt(abs(eigenvalues[n, k]))
      segments.append([points[n] - half, points[n] + half])
      styles.append("dashed" if eigenvalues[n, k] > 0 else "solid")
    if segments:
      ax.add_collection(collections.LineCollection(segments, colors=color, linestyles=styles, linewidths=2))
  ax.plot(points[:, 0], points[:, 1], "k.", markersize=6)
  ax.set_xlim(xmin, xmax)
  ax.set_ylim(ymin, ymax)
  ax.set_aspect("equal", adjustable="box")
  ax.legend(handles=[lines.Line2D([], [], color=STIFF_COLOR, lw=2, label=r"stiff, $\pm 1/\sqrt{|\lambda|}$"),
                     lines.Line2D([], [], color=SLOPPY_COLOR, lw=2, label=r"sloppy, $\pm 1/\sqrt{|\lambda|}$")],
            loc="best", fontsize="small")
  return ax


def _default_extent(distribution, points, seed):
  """The box holding `points` and the central 99% of samples per coordinate, widened by 10%."""
  samples = np.asarray(distribution.sample(2000, seed=tf.constant([seed, 0], tf.int32)))
  samples = samples[np.all(np.isfinite(samples), axis=-1)]
  low = np.minimum(np.percentile(samples, 0.5, axis=0), points.min(axis=0))
  high = np.maximum(np.percentile(samples, 99.5, axis=0), points.max(axis=0))
  pad = 0.1 * np.maximum(high - low, 1e-12)
  return (low[0] - pad[0], high[0] + pad[0], low[1] - pad[1], high[1] + pad[1])
