"""Large D, matrix-free: Hessian–vector products and the top-k eigenpairs against the dense sweep (issue #6).

Two measurements, on the flows of `harness` (4 layers, random weights: `elementwise_affine`, `realnvp`,
`maf`) over a flattened 32×32 (D = 1024) and 64×64 (D = 4096) image, float32, `N` points sampled from the flow:

1. **Products** (one subprocess per flow and D, the methods' calls interleaved round-robin, medians): the same
   `H v` by forward-over-reverse (`harness.forward_over_reverse`), reverse-over-reverse (`log_prob_hvp`), one product
   of a recorded linearization (`hvp.hessian_operator`: what each Lanczos step costs) and the dense sweep
   `log_prob_hessian(...) @ v`; `log_prob` for scale.
2. **Top k = 10 stiff eigenpairs** (each method in its own subprocess, so that its peak RSS is its own):
   `top_eigenpairs` against `spectrum(log_prob_hessian(...))` (dense sweep + `eigh`). Every method is a
   `tf.function`; the first call (tracing) is timed apart, then `REPEATS` calls, median.

Where the dense path would take too long (more than `--dense-budget` seconds per call, predicted from smaller D
as `D³`, the growth of its coupling, autoregressive and triangular pullbacks and of `eigh`), it is not run: its
time is extrapolated from the largest D where it ran, between the growth measured between the two largest D where
it ran and `∝ D³`, and its memory `∝ D²` (marked "estimated"). The products are timed in the Lanczos worker, after
its eigenpairs (so that the flow is built once per worker: a 4096-wide MADE takes minutes to build).

    python benchmarks/large_d.py --json benchmarks/large_d.json
"""

import argparse
import json
import os
import platform
import resource
import statistics
import sys
import tempfile
import time

import numpy as np

import workers  # benchmarks/workers.py, beside this script

FLOWS = ("elementwise_affine", "realnvp", "maf")
DIMS = (1024, 4096)
DENSE_DIMS = (1024, 2048)  # where the dense path runs: two sizes, to extrapolate from
NUM_POINTS = 4
K = 10
REPEATS = 3
REPEAT_BUDGET_S = 30.  # fewer repeats (at least one) once a method's repeats have taken this long
ROUNDS = 5
LINEARIZED = 11  # products after one linearization: the per-product time is (t(11) - t(1)) / 10


def _rss_mib():
  with open("/proc/self/statm") as statm:
    return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def _peak_rss_mib():
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def _setup(flow, dim):
  import tensorflow as tf  # pylint: disable=import-outside-toplevel
  import harness  # pylint: disable=import-outside-toplevel
  distribution = harness.build_flow(flow, dim, tf.float32).distribution
  z = tf.constant(distribution.sample(NUM_POINTS, seed=(1, 2)).numpy())
  return tf, distribution, z


def _products(tf, distribution, z, dense):
  """Times of one `H v` per method, interleaved; relative differences against reverse-over-reverse."""
  import harness  # pylint: disable=import-outside-toplevel
  import tfp_hessian  # pylint: disable=import-outside-toplevel
  from tfp_hessian import hvp  # pylint: disable=import-outside-toplevel
  v = tf.random.stateless_normal(z.shape, (3, 4), dtype=z.dtype)
  function = lambda fn: tf.function(fn, autograph=False)

  def linearized(count):
    def products(z, v):  # one linearization, then `count` chained products, as in `count` Lanczos steps
      _, operator = hvp.hessian_operator(distribution, z)
      return tf.while_loop(lambda i, w: i < count - 1, lambda i, w: (i + 1, operator(tf.math.l2_normalize(w, -1))),
                           (0, operator(v)))[1]
    return function(products)

  methods = {
      "log_prob": function(lambda z, v: distribution.log_prob(tf.identity(z))),
      "forward_over_reverse": function(lambda z, v: harness.forward_over_reverse(distribution, tf.identity(z), v)),
      "reverse_over_reverse": function(lambda z, v: tfp_hessian.log_prob_hvp(distribution, z, v)),
      "linearized_1": linearized(1),
      f"linearized_{LINEARIZED}": linearized(LINEARIZED),
  }
  if dense:
    methods["dense_sweep"] = function(lambda z, v: tf.linalg.matvec(tfp_hessian.log_prob_hessian(distribution, z), v))
  first, outputs = {}, {}
  for name, fn in methods.items():
    start = time.perf_counter()
    outputs[name] = fn(z, v).numpy()
    first[name] = time.perf_counter() - start
  times = {name: [] for name in methods}
  rng = np.random.default_rng(0)
  for _ in range(ROUNDS):
    for name in rng.permutation(list(methods)):
      if name == "dense_sweep" and len(times[name]) >= REPEATS:
        continue
      start = time.perf_counter()
      methods[name](z, v).numpy()
      times[name].append(time.perf_counter() - start)
  expected = outputs["reverse_over_reverse"]
  scale = np.max(np.abs(expected), axis=-1, keepdims=True)
  errors = {name: float(np.max(np.abs(out - expected) / scale)) for name, out in outputs.items()
            if name not in ("log_prob", f"linearized_{LINEARIZED}")}
  median_ms = {n: 1e3 * statistics.median(t) for n, t in times.items()}
  median_ms["linearized_product"] = (
      (median_ms[f"linearized_{LINEARIZED}"] - median_ms["linearized_1"]) / (LINEARIZED - 1))
  return dict(first_call_s=first, median_ms=median_ms,
              calls={n: len(t) for n, t in times.items()}, max_relative_difference=errors)


def _eigenpairs(tf, distribution, z, method, out):
  """Time and peak RSS of the top-K stiff eigenpairs by one method; eigenvalues saved to `out`."""
  import tfp_hessian
  from harness import PeakRss  # pylint: disable=import-outside-toplevel
  if method == "lanczos":
    fn = lambda z: tfp_hessian.top_eigenpairs(distribution, z, K, which="stiff")
  else:
    def fn(z):
      spectrum = tfp_hessian.spectrum(tfp_hessian.log_prob_hessian(distribution, z), symmetry_rtol=None)
      return spectrum.eigenvalues[..., :K], spectrum.eigenvectors[..., :K]
  fn = tf.function(fn, autograph=False)
  baseline = _rss_mib()
  with PeakRss() as peak:
    start = time.perf_counter()
    result = fn(z)
    tf.nest.map_structure(lambda t: t.numpy(), result)
    first = time.perf_counter() - start
    times = []
    while len(times) < REPEATS and (not times or sum(times) < REPEAT_BUDGET_S):
      start = time.perf_counter()
      result = fn(z)
      tf.nest.map_structure(lambda t: t.numpy(), result)
      times.append(time.perf_counter() - start)
  report = dict(first_call_s=first, median_s=statistics.median(times), calls=len(times), baseline_rss_mib=baseline,
                peak_rss_mib=baseline + peak.delta_mib, process_max_rss_mib=_peak_rss_mib())
  if method == "lanczos":
    report.update(num_iterations=int(result.num_iterations), all_converged=bool(np.all(result.converged)),
                  max_relative_residual=float(np.max(result.residuals / np.max(np.abs(result.eigenvalues), -1,
                                                                              keepdims=True))))
    np.save(out, result.eigenvalues.numpy())
  else:
    np.save(out, result[0].numpy())
  return report


def _sloppy(tf, distribution, z):
  """One call of the k sloppiest pairs with the default settings: how far Lanczos gets (first call, traced)."""
  import tfp_hessian  # pylint: disable=import-outside-toplevel
  start = time.perf_counter()
  pairs = tf.function(lambda z: tfp_hessian.top_eigenpairs(distribution, z, K, which="sloppy"), autograph=False)(z)
  seconds = time.perf_counter() - start
  stiff = tfp_hessian.top_eigenpairs(distribution, z, 1)  # the largest |λ|, for relative residuals
  scale = np.abs(stiff.eigenvalues.numpy())
  return dict(first_call_s=seconds, num_iterations=int(pairs.num_iterations),
              converged_fraction=float(np.mean(pairs.converged)),
              relative_residuals=(pairs.residuals.numpy() / scale).tolist(),
              eigenvalues=pairs.eigenvalues.numpy().tolist(), largest_magnitude=scale[:, 0].tolist())


def _worker(args):
  tf, distribution, z = _setup(args.flow, args.dim)
  report = _eigenpairs(tf, distribution, z, args.task, args.out)
  if args.task == "lanczos":  # after the eigenpairs, whose peak memory is then measured alone
    report["products"] = _products(tf, distribution, z, args.dense)
    if args.dense:
      report["sloppy"] = _sloppy(tf, distribution, z)
  print("RESULT " + json.dumps(report), flush=True)


def _run(argv, timeout):
  return workers.run_worker(__file__, argv, timeout)


def _log(message):
  print(message, file=sys.stderr, flush=True)


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
  parser.add_argument("--json", help="write the results here")
  parser.add_argument("--flows", nargs="+", default=list(FLOWS))
  parser.add_argument("--dims", nargs="+", type=int, default=list(DIMS))
  parser.add_argument("--dense-dims", nargs="+", type=int, default=list(DENSE_DIMS))
  parser.add_argument("--timeout", type=float, default=300., help="seconds per worker")
  parser.add_argument("--report", metavar="JSON", help="only print the tables of an earlier run's JSON")
  parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
  parser.add_argument("--task", help=argparse.SUPPRESS)
  parser.add_argument("--flow", help=argparse.SUPPRESS)
  parser.add_argument("--dim", type=int, help=argparse.SUPPRESS)
  parser.add_argument("--dense", action="store_true", help=argparse.SUPPRESS)
  parser.add_argument("--out", help=argparse.SUPPRESS)
  args = parser.parse_args(argv)
  if args.worker:
    return _worker(args)
  if args.report:
    with open(args.report) as results:
      print(format_markdown(json.load(results)))
    return 0

  import tensorflow as tf  # pylint: disable=import-outside-toplevel
  started = time.time()
  command = "python benchmarks/large_d.py " + " ".join(argv or sys.argv[1:])
  report = dict(schema="tfp_hessian.large_d/1", command=command,
                started_utc=time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(started)),
                load_average_at_start=list(os.getloadavg()), cpu_count=os.cpu_count(), platform=platform.platform(),
                versions=dict(python=platform.python_version(), tensorflow=tf.__version__, numpy=np.__version__),
                settings=dict(num_points=NUM_POINTS, k=K, repeats=REPEATS, rounds=ROUNDS, dtype="float32",
                              which="stiff"),
                products={}, eigenpairs={})
  dims = sorted(set(args.dims) | set(args.dense_dims))
  with tempfile.TemporaryDirectory() as workdir:
    for flow in args.flows:
      for dim in dims:
        cell = f"{flow}/{dim}"
        dense = dim in args.dense_dims
        methods = (["lanczos"] if dim in args.dims else []) + (["dense"] if dense else [])
        cells = report["eigenpairs"].setdefault(cell, {})
        for method in methods:
          _log(f"{cell} {method}")
          out = os.path.join(workdir, f"{flow}_{dim}_{method}.npy")
          cells[method] = _run(["--task", method, "--flow", flow, "--dim", str(dim), "--out", out]
                               + (["--dense"] if dense else []), args.timeout)
          if method == "lanczos":
            report["products"][cell] = cells[method].pop("products")
            if "sloppy" in cells[method]:
              report.setdefault("sloppy", {})[cell] = cells[method].pop("sloppy")
        if "lanczos" in cells and "dense" in cells:
          lanczos = np.load(os.path.join(workdir, f"{flow}_{dim}_lanczos.npy"))
          dense_values = np.load(os.path.join(workdir, f"{flow}_{dim}_dense.npy"))
          cells["lanczos"]["max_eigenvalue_difference_vs_dense"] = float(
              np.max(np.abs(lanczos - dense_values) / np.max(np.abs(dense_values), -1, keepdims=True)))
      _extrapolate(report, flow, args.dims, args.dense_dims)
  report["wall_s"] = time.time() - started
  text = json.dumps(report, indent=1)
  if args.json:
    with open(args.json, "w") as out:
      out.write(text + "\n")
  print(format_markdown(report))
  return 0


def _extrapolate(report, flow, dims, dense_dims):
  """Dense time `∝ D³` and memory `∝ D²` from the largest D where the dense path ran, where it did not."""
  measured = sorted(d for d in dense_dims if "dense" in report["eigenpairs"].get(f"{flow}/{d}", {}))
  if not measured:
    return
  top = report["eigenpairs"][f"{flow}/{measured[-1]}"]["dense"]
  exponent = None
  if len(measured) >= 2:
    low = report["eigenpairs"][f"{flow}/{measured[-2]}"]["dense"]
    exponent = float(np.log(top["median_s"] / low["median_s"]) / np.log(measured[-1] / measured[-2]))
  for dim in dims:
    cell = report["eigenpairs"].setdefault(f"{flow}/{dim}", {})
    if "dense" in cell:
      continue
    ratio = dim / measured[-1]
    extra = top["peak_rss_mib"] - top["baseline_rss_mib"]
    cell["dense"] = dict(estimated=True, from_dim=measured[-1], measured_growth_exponent=exponent,
                         median_s=top["median_s"] * ratio**3, memory_above_baseline_mib=extra * ratio**2,
                         hessian_mib=NUM_POINTS * dim * dim * 4 / 2**20)
    if exponent is not None:
      cell["dense"]["median_s_at_measured_exponent"] = top["median_s"] * ratio**exponent


def format_markdown(report):
  """The tables of BENCHMARKS.md's "Large D (matrix-free)" section."""
  lines = ["| flow | D | log_prob | fwd-over-rev | rev-over-rev (`log_prob_hvp`) | linearized product | "
           "dense sweep @ v |",
           "|---|---:|---:|---:|---:|---:|---:|"]
  for cell, result in report["products"].items():
    flow, dim = cell.split("/")
    ms = result["median_ms"]
    dense = f"{ms['dense_sweep']:.1f} ms" if "dense_sweep" in ms else "—"
    lines.append(f"| {flow} | {dim} | {ms['log_prob']:.2f} ms | {ms['forward_over_reverse']:.2f} ms | "
                 f"{ms['reverse_over_reverse']:.2f} ms | {ms['linearized_product']:.2f} ms | {dense} |")
  lines += ["", "| flow | D | `top_eigenpairs` (k=10) | first call | iterations | peak RSS (above start) | "
            "dense: sweep + eigh | dense peak RSS (above start) | dense / Lanczos time | max eigenvalue difference |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
  for cell, methods in report["eigenpairs"].items():
    flow, dim = cell.split("/")
    if "lanczos" not in methods:
      continue  # a size where only the dense path ran, to extrapolate from
    lanczos, dense = methods["lanczos"], methods.get("dense")
    memory = lambda r: f"{r['peak_rss_mib']:.0f} MiB ({r['peak_rss_mib'] - r['baseline_rss_mib']:.0f})"
    if dense is None:
      dense_time = dense_memory = ratio = "—"
    elif dense.get("estimated"):
      low, high = sorted([dense.get("median_s_at_measured_exponent", dense["median_s"]), dense["median_s"]])
      dense_time = f"≈ {low:.0f}–{high:.0f} s (estimated)"
      dense_memory = f"≈ +{dense['memory_above_baseline_mib']:.0f} MiB (estimated)"
      ratio = f"≈ {low / lanczos['median_s']:.0f}–{high / lanczos['median_s']:.0f}×"
    else:
      dense_time, dense_memory = f"{dense['median_s']:.2f} s", memory(dense)
      ratio = f"{dense['median_s'] / lanczos['median_s']:.1f}×"
    difference = lanczos.get("max_eigenvalue_difference_vs_dense")
    lines.append(f"| {flow} | {dim} | {lanczos['median_s']:.2f} s | {lanczos['first_call_s']:.1f} s | "
                 f"{lanczos['num_iterations']} | {memory(lanczos)} | "
                 f"{dense_time} | {dense_memory} | {ratio} | "
                 f"{'—' if difference is None else f'{difference:.1e}'} |")
  if report.get("sloppy"):
    lines += ["", "| flow | D | `which=\"sloppy\"` iterations | converged pairs | relative residuals | "
              "sloppiest \\|λ\\| found / max \\|λ\\| | first call |", "|---|---:|---:|---:|---:|---:|---:|"]
    for cell, result in report["sloppy"].items():
      flow, dim = cell.split("/")
      residuals = np.asarray(result["relative_residuals"])
      smallest = np.min(np.abs(result["eigenvalues"]), axis=-1) / np.asarray(result["largest_magnitude"])
      lines.append(f"| {flow} | {dim} | {result['num_iterations']} | {100 * result['converged_fraction']:.0f} % | "
                   f"{residuals.min():.1e}–{residuals.max():.1e} | {smallest.min():.1e}–{smallest.max():.1e} | "
                   f"{result['first_call_s']:.1f} s |")
  return "\n".join(lines)


if __name__ == "__main__":
  sys.exit(main())
