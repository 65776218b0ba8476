"""`python -m tfp_hessian demo`: Hessians of a random flow, checked against autodiff and timed.

The demo builds a float64 flow of stock TFP bijectors with random weights (`build_flow`), samples a few
points, and computes `∇²_z log q(z)` at them with `tfp_hessian.log_prob_hessian`, eagerly and inside
`tf.function`. It then

1. compares the Hessians with the two autodiff references of `tfp_hessian.reference` (`tf.hessians` and nested
   `GradientTape`s), as the worst normwise relative disagreement over points,
   `max_n max_ij |H_n - R_n|_ij / max_ij |R_n|_ij`;
2. prints the eigenvalues of the Hessian at the first point, stiff to sloppy (largest `|λ|` first), and a
   stiff/sloppy summary of every point (`tfp_hessian.spectrum`): the span of `|λ|` in decades, how many
   eigenvalues are positive, and which coordinate the stiffest and the sloppiest direction lie along;
3. times every method, each after a warm-up call, and reports medians;
4. writes the eigenvalue ladder of all points (`tfp_hessian.plots.eigenvalue_ladder`) to `--figure PATH`, by
   default to `DEFAULT_FIGURE` when matplotlib is installed (`--no-figure` writes none).

It fails (exit status 1) if the disagreement exceeds `TOLERANCE`; asked for a figure without matplotlib
installed, it exits with status 2 before running.
"""

import collections
import importlib.util
import sys
import textwrap
import time

import numpy as np
import tensorflow as tf
import tensorflow_probability as tfp

import tfp_hessian
from tfp_hessian import reference, registry

tfb = tfp.bijectors
tfd = tfp.distributions

__all__ = ["TOLERANCE", "DemoResult", "add_arguments", "build_flow", "run", "run_demo"]

HELP = "Hessians of a random float64 flow: agreement with autodiff, spectrum, timings."

# Worst normwise relative disagreement with either reference that still passes, in float64.
TOLERANCE = 1e-8

DemoResult = collections.namedtuple("DemoResult", ["disagreement", "eigenvalues", "timings", "ok", "spectrum"])
DemoResult.__doc__ = """What `run_demo` measured.

Attributes:
  disagreement: dict `(ours, reference) -> float`, worst normwise relative disagreement over the points.
  eigenvalues: `[D]` eigenvalues of the Hessian at the first point, largest `|λ|` first.
  timings: dict `method -> median seconds per call`, in the order they were timed; the last entry is
    `log_prob` alone, for scale.
  ok: True if every disagreement is at most `TOLERANCE` (and none is NaN).
  spectrum: `tfp_hessian.Spectrum` of the Hessians at all points (numpy arrays), stiffest first.
"""


def _well_conditioned_tril(rng, dim, dtype):
  """A random lower-triangular scale far from the identity, with condition number about 2 or less.

  It is the Cholesky factor of `S = (I + A Aᵀ/D)/4` with `A` a standard normal `[D, D]` matrix. The spectrum
  of `A Aᵀ/D` lies in about `[0, 4]` (Marchenko–Pastur), so `S`'s lies in `[1/4, 5/4]`, `cond(L) = √cond(S)
  ≲ 2.2`, and the off-diagonal entries are of the same order as the diagonal ones.
  """
  a = rng.standard_normal((dim, dim))
  return tf.constant(np.linalg.cholesky(0.25 * np.eye(dim) + a @ a.T / (4 * dim)), dtype)


def build_flow(dim=16, seed=0, dtype=tf.float64):
  """A random-weight flow of stock TFP bijectors over `R^dim`, ending in `Softplus` (so `z > 0`).

  From the base side: `ScaleMatvecTriL → Shift → SinhArcsinh → Permute → ScaleMatvecTriL → SinhArcsinh →
  Permute → Shift → Softplus`, on a `MultivariateNormalTriL` base. Every parameter is drawn from
  `np.random.default_rng(seed)`: well-conditioned dense triangular scales, skewness `~ N(0, 0.5²)`,
  tailweight in `[0.7, 1.4]`, random permutations and shifts; the last shift centres the input of `Softplus`
  near 2, so most samples keep away from the edge `z = 0` of the support.

  Args:
    dim: event size D, at least 2.
    seed: integer seed of the weights.
    dtype: `tf.float64` or `tf.float32`.

  Returns:
    A `tfd.TransformedDistribution` with event shape `[dim]`.

  Raises:
    ValueError: if `dim < 2`.
  """
  if dim < 2:
    raise ValueError(f"`dim` must be at least 2; got {dim}.")
  rng = np.random.default_rng(seed)

  def vector(values):
    return tf.constant(values, dtype)

  def sinh_arcsinh():
    return tfb.SinhArcsinh(skewness=vector(0.5 * rng.standard_normal(dim)),
                           tailweight=vector(np.exp(rng.uniform(np.log(0.7), np.log(1.4), dim))))

  def permute():
    return tfb.Permute(rng.permutation(dim).astype(np.int32))

  # Listed from the base side; `tfb.Chain` wants them from the `z` side.
  layers = [
      tfb.ScaleMatvecTriL(_well_conditioned_tril(rng, dim, dtype)),
      tfb.Shift(vector(rng.standard_normal(dim))),
      sinh_arcsinh(),
      permute(),
      tfb.ScaleMatvecTriL(_well_conditioned_tril(rng, dim, dtype)),
      sinh_arcsinh(),
      permute(),
      tfb.Shift(vector(2 + 0.5 * rng.standard_normal(dim))),
      tfb.Softplus(),
  ]
  base = tfd.MultivariateNormalTriL(loc=vector(0.3 * rng.standard_normal(dim)),
                                    scale_tril=_well_conditioned_tril(rng, dim, dtype))
  return tfd.TransformedDistribution(base, tfb.Chain(layers[::-1]))


def _relative_disagreement(hessian, expected):
  """`max_n max_ij |H_n - R_n| / max_ij |R_n|`; NaN if any entry is NaN."""
  hessian, expected = np.asarray(hessian), np.asarray(expected)
  error = np.max(np.abs(hessian - expected), axis=(-2, -1))
  scale = np.max(np.abs(expected), axis=(-2, -1))
  return float(np.max(error / scale))


def _median_seconds(function, z, repeats):
  """Median wall time of `function(z)` over `repeats` calls, after one warm-up call (tracing included)."""
  function(z).numpy()
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    function(z).numpy()
    times.append(time.perf_counter() - start)
  return float(np.median(times))


def _format_seconds(seconds):
  if seconds < 1e-3:
    return f"{seconds * 1e6:7.1f} us"
  if seconds < 1:
    return f"{seconds * 1e3:7.2f} ms"
  return f"{seconds:7.2f} s "


def _describe(flow):
  """`Softplus <- ... <- MultivariateNormalTriL`, read from the `z` side, and how many layers are analytic."""
  members = list(flow.bijector.bijectors) if isinstance(flow.bijector, tfb.Chain) else [flow.bijector]
  analytic = sum(registry.has_analytic_rule(b) for b in members)
  names = [type(b).__name__ for b in members] + [type(flow.distribution).__name__]
  return " <- ".join(names), analytic, len(members)


DEFAULT_FIGURE = "tfp_hessian_demo_ladder.png"


def run_demo(dim=16, num_points=8, seed=0, repeats=20, out=None, figure=None):
  """Runs the demo and prints its report.

  Args:
    dim: event size D of the flow.
    num_points: how many points to sample.
    seed: seed of the flow's weights and of the samples.
    repeats: timed calls per method (after one warm-up call).
    out: text stream for the report; `sys.stdout` if None.
    figure: path to write the eigenvalue ladder of all points to (any format matplotlib infers from the
      suffix, e.g. `.png`, `.svg`); none if None.

  Returns:
    A `DemoResult`.

  Raises:
    ValueError: if `dim < 2`, `num_points < 1` or `repeats < 1`.
    ImportError: if `figure` is given and matplotlib is not installed.
  """
  if num_points < 1:
    raise ValueError(f"`num_points` must be at least 1; got {num_points}.")
  if repeats < 1:
    raise ValueError(f"`repeats` must be at least 1; got {repeats}.")
  out = sys.stdout if out is None else out

  def say(line=""):
    print(line, file=out)

  flow = build_flow(dim, seed)
  # A fresh constant, so no method finds `z` in TFP's cache of sampled tensors.
  z = tf.constant(flow.sample(num_points, seed=tf.constant([seed, 1], tf.int32)).numpy())

  def ours(z):
    return tfp_hessian.log_prob_hessian(flow, z)

  def naive(z):
    return reference.naive_hessian(flow, z)

  def tape(z):
    return reference.tape_hessian(flow, z)

  methods = {
      "ours, tf.function": tf.function(ours, autograph=False),
      "ours, eager": ours,
      "tf.hessians, tf.function": tf.function(naive, autograph=False),
      "nested tapes, tf.function": tf.function(tape, autograph=False),
  }
  hessians = {name: method(z).numpy() for name, method in methods.items()}

  chain, analytic, layers = _describe(flow)
  say(f"tfp_hessian demo: D={dim}, {num_points} points, float64, seed {seed}")
  for line in textwrap.wrap(chain, width=96, initial_indent="flow, z side first: ", subsequent_indent="  "):
    say(line)
  say(f"  analytic rules: {analytic} of {layers} bijectors (any others: per-bijector GradientTape fallback)")
  say()

  candidates = ("ours, eager", "ours, tf.function")
  references = ("tf.hessians, tf.function", "nested tapes, tf.function")
  disagreement = {(c, r): _relative_disagreement(hessians[c], hessians[r]) for c in candidates for r in references}
  worst = float(np.max(list(disagreement.values())))  # NaN if any is.
  ok = bool(worst <= TOLERANCE)
  say("agreement with autodiff: max over points of max|H - H_ref| / max|H_ref|")
  say(f"  {'':20s}{'vs tf.hessians':>17s}{'vs nested tapes':>17s}")
  for c in candidates:
    say(f"  {c:20s}" + "".join(f"{disagreement[(c, r)]:17.1e}" for r in references))
  say(f"  max relative disagreement {worst:.1e} (tolerance {TOLERANCE:.0e}): {'OK' if ok else 'FAILED'}")
  say()

  spectrum = tfp_hessian.Spectrum(*(np.asarray(part) for part in
                                    tfp_hessian.spectrum(hessians["ours, tf.function"])))
  eigenvalues = spectrum.eigenvalues[0]
  say("eigenvalues of the log-density Hessian at z[0] (all negative near a mode of q),")
  say("stiff -> sloppy, largest |lambda| first:")
  if spectrum.finite[0]:
    for start in range(0, dim, 8):
      say("  " + " ".join(f"{v:10.3e}" for v in eigenvalues[start:start + 8]))
    say(f"  |lambda| spans {np.abs(eigenvalues[0]) / np.abs(eigenvalues[-1]):.1e} (stiffest / sloppiest)")
  else:
    say("  none: the Hessian at z[0] is not finite")
  say()
  _say_stiff_sloppy(spectrum, say)
  say()

  timings = {name: _median_seconds(method, z, repeats) for name, method in methods.items()}
  # Not a Hessian: the scale against which the others' cost reads.
  timings["log_prob alone, tf.function"] = _median_seconds(tf.function(flow.log_prob, autograph=False), z, repeats)
  fastest = timings["ours, tf.function"]
  say(f"time per call for all {num_points} points: median of {repeats} calls after one warm-up call")
  say(f"  {'method':28s}{'median':>10s}{'/ ours':>10s}   (ratio to ours, tf.function)")
  for name, seconds in timings.items():
    say(f"  {name:28s}{_format_seconds(seconds):>10s}{seconds / fastest:9.1f}x")
  if figure is not None:
    _write_ladder(spectrum, figure, f"Hessian eigenvalues of the demo flow, D={dim}, seed {seed}")
    say()
    say(f"eigenvalue ladder of all {num_points} points written to {figure}")
  return DemoResult(disagreement, eigenvalues, timings, ok, spectrum)


def _say_stiff_sloppy(spectrum, say):
  """One line per point: span of |λ|, positive eigenvalues, and the coordinates of the extreme directions."""
  contributions = np.asarray(tfp_hessian.coordinate_contributions(spectrum))
  decades = np.asarray(tfp_hessian.decades(spectrum))
  say("stiff and sloppy directions per point (tfp_hessian.spectrum); 'along z_i (s)': the coordinate with the")
  say("largest share s = v_i^2 of that unit eigenvector")
  say(f"  {'point':7s}{'max|lambda|':>12s}{'min|lambda|':>12s}{'decades':>9s}{'lambda>0':>10s}"
      f"   {'stiffest along':17s}sloppiest along")
  for n, finite in enumerate(spectrum.finite):
    if not finite:
      say(f"  z[{n}]".ljust(9) + "   not finite")
      continue
    magnitude = np.abs(spectrum.eigenvalues[n])
    along = []
    for k in (0, -1):
      i = int(np.argmax(contributions[n, :, k]))
      along.append(f"z_{i} ({contributions[n, i, k]:.2f})")
    say(f"  {f'z[{n}]':7s}{magnitude[0]:12.3e}{magnitude[-1]:12.3e}{decades[n]:9.2f}"
        f"{int(np.sum(spectrum.eigenvalues[n] > 0)):10d}   {along[0]:17s}{along[1]}")


def _write_ladder(spectrum, path, title):
  """Writes `tfp_hessian.plots.eigenvalue_ladder` of `spectrum` to `path`, without pyplot's global state."""
  from matplotlib import figure as figure_lib  # pylint: disable=import-outside-toplevel

  columns = spectrum.eigenvalues.shape[0]
  fig = figure_lib.Figure(figsize=(max(4., 0.6 * columns + 2.), 4.), layout="constrained")
  ax = fig.add_subplot()
  tfp_hessian.plots.eigenvalue_ladder(spectrum, ax=ax)
  ax.set_title(title, fontsize="medium")
  fig.savefig(path, dpi=120)


def add_arguments(parser):
  """Adds the demo's options to an `argparse` (sub)parser."""
  parser.add_argument("--dim", type=int, default=16, help="event size D of the flow (default: 16)")
  parser.add_argument("--num-points", type=int, default=8, help="points to sample (default: 8)")
  parser.add_argument("--seed", type=int, default=0, help="seed of the weights and samples (default: 0)")
  parser.add_argument("--repeats", type=int, default=20,
                      help="timed calls per method, after a warm-up call (default: 20)")
  parser.add_argument("--figure", metavar="PATH", default=None,
                      help="write the eigenvalue ladder of all points to PATH (.png, .svg, .pdf; needs "
                           f"matplotlib: pip install tfp_hessian[plot]) (default: {DEFAULT_FIGURE} when "
                           "matplotlib is installed)")
  parser.add_argument("--no-figure", action="store_true", help="write no figure")


def run(args):
  """Runs the demo from parsed arguments; returns the exit status (0 if the Hessians agree).

  Asked for a figure without matplotlib, it says so and returns 2 before running anything.
  """
  figure = getattr(args, "figure", None)
  has_matplotlib = importlib.util.find_spec("matplotlib") is not None
  if figure is not None and not has_matplotlib:
    print("tfp_hessian demo: --figure needs matplotlib: pip install tfp_hessian[plot]", file=sys.stderr)
    return 2
  if getattr(args, "no_figure", False):
    figure = None
  elif figure is None and has_matplotlib:
    figure = DEFAULT_FIGURE
  result = run_demo(dim=args.dim, num_points=args.num_points, seed=args.seed, repeats=args.repeats,
                    figure=figure)
  return 0 if result.ok else 1
