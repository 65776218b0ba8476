"""Sloppy eigenpairs at large D: `top_eigenpairs(which="sloppy")` against the dense sweep and `eigh` (issue #14).

The 5 sloppiest pairs (smallest `|λ|`) of the flows of `harness` (`elementwise_affine`, `realnvp`, `maf`:
4 layers, random weights) at D = 1024 and 4096, float64, 4 points sampled from the flow, whose Hessians are
indefinite: their sloppiest eigenvalues are interior ones. One subprocess per flow and D (so that each has the
machine's memory to itself); in it both methods are `tf.function`s, traced and run once, then called
`--rounds` times in a random order each round (the machine is shared: read the ratio of calls made side by side).
Each round's eigenvalues are compared with the dense ones, relative to max|λ|.

Where the dense path would take too long (`--dense-dims` leaves it out), its time is extrapolated from the two
largest D where it ran, between `∝ D³` and the growth measured between them (marked "estimated").

`--methods` measures instead, on the dense Hessian of one point per flow at D = 1024, what decided the method:
how many products plain Lanczos (full reorthogonalization, Rayleigh–Ritz) needs before its 5 sloppiest pairs
converge, how far MINRES on `H` (the inner solve of shift-and-invert at σ = 0) gets in 6 D products, and the degree
a Chebyshev filter in `λ²` would need to separate the 5th sloppiest from the 6th by 1e-10.

`--profile` splits the time of a sloppy call at D = 1024 (one process per flow, calls interleaved as above): the
sweep alone, `eigh` alone on its Hessians, the sloppy call, and its products alone (the same `D // 32`-vector
batched products, `D` per point, with nothing else); the rest of the sloppy call is the block iteration's own work
(reorthogonalization, the checks).

`--block-iteration` also times the block Lanczos iteration on the same points (`eigenpairs.FORM_HESSIAN = False`
while it is traced: the sloppy call's path before the Hessian was formed at `max_iterations >= D`), side by side.

Every run prints the command that reproduces it before its table; `--report` prints the commands of the runs it
tabulates.

    python benchmarks/sloppy_eigenpairs.py --json benchmarks/sloppy_eigenpairs.json
    python benchmarks/sloppy_eigenpairs.py --methods --json benchmarks/sloppy_methods.json
    python benchmarks/sloppy_eigenpairs.py --profile --json benchmarks/sloppy_profile.json
    python benchmarks/sloppy_eigenpairs.py --report benchmarks/sloppy_eigenpairs.json   # several: one table
"""

import argparse
import json
import os
import platform
import statistics
import sys
import time

import numpy as np

import workers  # benchmarks/workers.py, beside this script

FLOWS = ("elementwise_affine", "realnvp", "maf")
DIMS = (1024, 4096)
DENSE_DIMS = (1024, 2048)
NUM_POINTS = 4
K = 5
ROUNDS = 3


def _setup(flow, dim):
  import tensorflow as tf  # pylint: disable=import-outside-toplevel
  import harness  # pylint: disable=import-outside-toplevel
  distribution = harness.build_flow(flow, dim, tf.float64).distribution
  z = tf.constant(distribution.sample(NUM_POINTS, seed=(1, 2)).numpy())
  return tf, distribution, z


def _worker(args):
  start = time.perf_counter()
  tf, distribution, z = _setup(args.flow, args.dim)
  import tfp_hessian  # pylint: disable=import-outside-toplevel
  report = dict(build_s=time.perf_counter() - start)
  methods = {}
  if not args.dense_only:
    methods["sloppy"] = tf.function(lambda z: tfp_hessian.top_eigenpairs(distribution, z, K, which="sloppy"),
                                    autograph=False)
  if args.block_iteration:
    from tfp_hessian import eigenpairs  # pylint: disable=import-outside-toplevel

    def block_iteration(z):  # traced once, on its first call
      eigenpairs.FORM_HESSIAN = False
      try:
        return tfp_hessian.top_eigenpairs(distribution, z, K, which="sloppy")
      finally:
        eigenpairs.FORM_HESSIAN = True

    methods["block_iteration"] = tf.function(block_iteration, autograph=False)
  if args.dense:
    methods["dense"] = tf.function(lambda z: tfp_hessian.spectrum(
        tfp_hessian.log_prob_hessian(distribution, z), symmetry_rtol=None), autograph=False)
  numpy = lambda result: tf.nest.map_structure(lambda t: t.numpy(), result)
  first, outputs, times = {}, {}, {name: [] for name in methods}
  for name, fn in methods.items():
    start = time.perf_counter()
    outputs[name] = numpy(fn(z))
    first[name] = time.perf_counter() - start
  errors = []
  rng = np.random.default_rng(0)
  for _ in range(args.rounds):
    for name in rng.permutation(list(methods)):
      start = time.perf_counter()
      outputs[name] = numpy(methods[name](z))
      times[name].append(time.perf_counter() - start)
    if "dense" in methods and "sloppy" in methods:
      values = outputs["dense"].eigenvalues
      errors.append(float(np.max([np.abs(outputs[name].eigenvalues - values[:, -K:])
                                  / np.max(np.abs(values), axis=-1, keepdims=True)
                                  for name in ("sloppy", "block_iteration") if name in outputs])))
  report.update(first_call_s=first, seconds=times, median_s={name: statistics.median(t) for name, t in times.items()})
  if args.dense:
    values = outputs["dense"].eigenvalues
    report["indefinite"] = bool(np.all((np.min(values, axis=-1) < 0) & (np.max(values, axis=-1) > 0)))
  if args.dense_only:
    print("RESULT " + json.dumps(report), flush=True)
    return
  pairs = outputs["sloppy"]
  scale = np.abs(tfp_hessian.top_eigenpairs(distribution, z, 1).eigenvalues.numpy())  # max|λ|, for the ratios
  report.update(
      num_iterations=int(pairs.num_iterations), all_converged=bool(np.all(pairs.converged)),
      max_relative_residual=float(np.max(pairs.residuals / scale)),
      sloppiest_relative=[float(x) for x in np.min(np.abs(pairs.eigenvalues), axis=-1) / scale[:, 0]])
  if "block_iteration" in outputs:
    block = outputs["block_iteration"]
    report["block_iteration"] = dict(
        num_iterations=int(block.num_iterations), all_converged=bool(np.all(block.converged)),
        max_relative_residual=float(np.max(block.residuals / scale)))
  if errors:
    report["max_eigenvalue_difference_vs_dense"] = max(errors)
  print("RESULT " + json.dumps(report), flush=True)


def _lanczos_products(hessian, k, tolerance, rng, check_every=32):
  """Products before plain Lanczos' `k` sloppiest Rayleigh–Ritz pairs have residuals `<= tolerance · max|λ|`."""
  size = hessian.shape[0]
  scale = np.max(np.abs(np.linalg.eigvalsh(hessian)))
  basis = np.zeros((size + 1, size))
  basis[0] = rng.normal(size=size)
  basis[0] /= np.linalg.norm(basis[0])
  alphas, betas = np.zeros(size), np.zeros(size)
  for j in range(size):
    w = hessian @ basis[j]
    alphas[j] = basis[j] @ w
    for _ in range(2):
      w -= basis[:j + 1].T @ (basis[:j + 1] @ w)
    betas[j] = np.linalg.norm(w)
    basis[j + 1] = w / betas[j] if betas[j] > 0 else 0.
    if (j + 1) % check_every == 0 or j + 1 == size:
      m = j + 1
      theta, vectors = np.linalg.eigh(np.diag(alphas[:m]) + np.diag(betas[:m - 1], 1) + np.diag(betas[:m - 1], -1))
      wanted = np.argsort(np.abs(theta))[:k]
      if np.max(np.abs(betas[m - 1] * vectors[-1, wanted])) <= tolerance * scale:
        return m
  return size


def _minres_relative_residual(hessian, b, iterations):
  """`‖b − H x‖ / ‖b‖` after `iterations` steps of MINRES (Paige & Saunders) on symmetric, indefinite `H`."""
  x, w, w2 = np.zeros_like(b), np.zeros_like(b), np.zeros_like(b)
  r1, y = b.copy(), b.copy()
  r2 = r1.copy()
  beta1 = beta = np.linalg.norm(b)
  old_beta, dbar, epsilon, phibar, cs, sn = 0., 0., 0., beta1, -1., 0.
  for step in range(iterations):
    v = y / beta
    y = hessian @ v
    if step:
      y -= (beta / old_beta) * r1
    alpha = v @ y
    y -= (alpha / beta) * r2
    r1, r2 = r2, y
    old_beta, beta = beta, np.linalg.norm(y)
    old_epsilon = epsilon
    delta = cs * dbar + sn * alpha
    gbar = sn * dbar - cs * alpha
    epsilon, dbar = sn * beta, -cs * beta
    gamma = max(np.hypot(gbar, beta), 1e-300)
    cs, sn = gbar / gamma, beta / gamma
    phi, phibar = cs * phibar, sn * phibar
    w1, w2 = w2, w
    w = (v - old_epsilon * w1 - delta * w2) / gamma
    x += phi * w
  return float(np.linalg.norm(b - hessian @ x) / beta1)


def _methods(args):
  """What decided the method: products per point that each candidate needs, on dense Hessians at D = 1024."""
  tf, distribution, z = _setup(args.flow, args.dim)
  import tfp_hessian  # pylint: disable=import-outside-toplevel
  hessian = tfp_hessian.log_prob_hessian(distribution, z[:1]).numpy()[0].astype(np.float64)
  hessian = 0.5 * (hessian + hessian.T)
  magnitudes = np.sort(np.abs(tf.linalg.eigvalsh(hessian).numpy()))
  scale = magnitudes[-1]
  rng = np.random.default_rng(0)
  # Chebyshev in y = λ² on [λ_{k+1}², max λ²], evaluated at λ_k²: T_n(1 + ε) ≈ cosh(n acosh(1 + ε)).
  epsilon = 2 * (magnitudes[K] ** 2 - magnitudes[K - 1] ** 2) / (scale ** 2 - magnitudes[K] ** 2)
  report = dict(
      sloppiest_relative=(magnitudes[:K + 1] / scale).tolist(),
      median_relative=float(np.median(magnitudes) / scale),
      lanczos_products=_lanczos_products(hessian, K, 1e-10, rng),
      minres_relative_residual_after_6d=_minres_relative_residual(hessian, rng.normal(size=args.dim), 6 * args.dim),
      chebyshev_degree_in_lambda=float(2 * np.log(2e10) / np.arccosh(1 + epsilon)))
  print("RESULT " + json.dumps(report), flush=True)


def _profile(args):
  """Median seconds of the sweep, `eigh`, the sloppy call and its products alone, called side by side."""
  tf, distribution, z = _setup(args.flow, args.dim)
  import tfp_hessian  # pylint: disable=import-outside-toplevel
  from tfp_hessian import eigenpairs, hvp  # pylint: disable=import-outside-toplevel
  block = eigenpairs._block_size(args.dim, args.dim)  # pylint: disable=protected-access
  hessians = tfp_hessian.log_prob_hessian(distribution, z)

  def products(z):  # D products per point, `block` at a time, as the sloppy iteration takes them
    z, times = hvp.hessian_operator(distribution, z)

    def step(i, total):
      q = tf.random.stateless_normal(tf.concat([[block], tf.shape(z)], 0), tf.stack([i, 0]), dtype=z.dtype)
      return i + 1, total + tf.reduce_sum(tf.vectorized_map(times, q))

    return tf.while_loop(lambda i, _: i < args.dim // block, step, (tf.constant(0), tf.zeros([], z.dtype)))[1]

  methods = dict(
      sweep=(tf.function(lambda z: tfp_hessian.log_prob_hessian(distribution, z), autograph=False), z),
      eigh=(tf.function(tf.linalg.eigh, autograph=False), hessians),
      sloppy=(tf.function(lambda z: tfp_hessian.top_eigenpairs(distribution, z, K, which="sloppy"),
                          autograph=False), z),
      products=(tf.function(products, autograph=False), z))
  run = lambda name: tf.nest.map_structure(lambda t: t.numpy(), methods[name][0](methods[name][1]))
  for name in methods:
    run(name)  # traced
  times = {name: [] for name in methods}
  rng = np.random.default_rng(0)
  for _ in range(args.rounds):
    for name in rng.permutation(list(methods)):
      start = time.perf_counter()
      run(name)
      times[name].append(time.perf_counter() - start)
  print("RESULT " + json.dumps(dict(block=block, products_per_point=args.dim // block * block, seconds=times,
                                    median_s={name: statistics.median(t) for name, t in times.items()})),
        flush=True)


def _run(argv, timeout):
  return workers.run_worker(__file__, argv, timeout)


def _extrapolate(cells, flow, dims, dense_dims):
  """Dense time between `∝ D³` and the growth measured between the two largest D where it ran."""
  measured = sorted(d for d in dense_dims if "dense" in cells.get(f"{flow}/{d}", {}).get("median_s", {}))
  if len(measured) < 2:
    return
  low, high = (cells[f"{flow}/{d}"]["median_s"]["dense"] for d in measured[-2:])
  exponent = float(np.log(high / low) / np.log(measured[-1] / measured[-2]))
  for dim in dims:
    cell = cells.setdefault(f"{flow}/{dim}", {})
    if "dense" not in cell.get("median_s", {}):
      ratio = dim / measured[-1]
      cell["dense_estimate"] = dict(from_dim=measured[-1], exponent=exponent,
                                    seconds=sorted([high * ratio**3, high * ratio**exponent]))


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
  parser.add_argument("--json", help="write the results here")
  parser.add_argument("--flows", nargs="+", default=list(FLOWS))
  parser.add_argument("--dims", nargs="+", type=int, default=list(DIMS))
  parser.add_argument("--dense-dims", nargs="+", type=int, default=list(DENSE_DIMS))
  parser.add_argument("--rounds", type=int, default=ROUNDS)
  parser.add_argument("--timeout", type=float, default=900., help="seconds per worker")
  parser.add_argument("--methods", action="store_true", help="the measurements that decided the method")
  parser.add_argument("--profile", action="store_true",
                      help="the sloppy call's time against the sweep, eigh and its products alone, at D = 1024")
  parser.add_argument("--block-iteration", action="store_true",
                      help="also time the block Lanczos iteration (the sloppy path before the formed Hessian)")
  parser.add_argument("--report", metavar="JSON", nargs="+", help="only print the table of earlier runs' JSON")
  parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
  parser.add_argument("--flow", help=argparse.SUPPRESS)
  parser.add_argument("--dim", type=int, help=argparse.SUPPRESS)
  parser.add_argument("--dense", action="store_true", help=argparse.SUPPRESS)
  parser.add_argument("--dense-only", action="store_true", help=argparse.SUPPRESS)
  args = parser.parse_args(argv)
  if args.worker:
    return _methods(args) if args.methods else _profile(args) if args.profile else _worker(args)
  if args.report:
    reports, cells = [], {}
    for path in args.report:
      with open(path) as results:
        reports.append(json.load(results))
      for cell, result in reports[-1]["cells"].items():  # a dense-only cell never replaces a full one
        if cell not in cells or "sloppy" in result.get("median_s", {}):
          cells[cell] = result
    for report in reports:
      load = report["load_average_at_start"][0]
      print(f"{report['command']}   # {report['started_utc']} UTC, load average {load:.1f}")
    print(format_markdown(dict(reports[0], cells=cells)))
    return 0

  import tensorflow as tf  # pylint: disable=import-outside-toplevel
  started = time.time()
  command = "python benchmarks/sloppy_eigenpairs.py " + " ".join(argv or sys.argv[1:])
  report = dict(schema="tfp_hessian.sloppy_eigenpairs/1", command=command,
                started_utc=time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(started)),
                load_average_at_start=list(os.getloadavg()), cpu_count=os.cpu_count(), platform=platform.platform(),
                versions=dict(python=platform.python_version(), tensorflow=tf.__version__, numpy=np.__version__),
                settings=dict(num_points=NUM_POINTS, k=K, rounds=args.rounds, dtype="float64", which="sloppy"),
                cells={})
  for flow in args.flows:
    if args.methods or args.profile:
      mode = "--methods" if args.methods else "--profile"
      print(f"{flow}/1024 {mode}", file=sys.stderr, flush=True)
      report["cells"][f"{flow}/1024"] = _run([mode, "--flow", flow, "--dim", "1024", "--rounds", str(args.rounds)],
                                             args.timeout)
      continue
    for dim in sorted(set(args.dims) | set(args.dense_dims)):
      dense, sloppy = dim in args.dense_dims, dim in args.dims
      print(f"{flow}/{dim}" + (" sloppy" if sloppy else "") + (" dense" if dense else ""), file=sys.stderr,
            flush=True)
      # Where only the dense path runs (to extrapolate from), one call after the first is enough.
      report["cells"][f"{flow}/{dim}"] = _run(
          ["--flow", flow, "--dim", str(dim), "--rounds", str(args.rounds if sloppy else 1)]
          + (["--dense"] if dense else []) + ([] if sloppy else ["--dense-only"])
          + (["--block-iteration"] if sloppy and args.block_iteration else []), args.timeout)
    _extrapolate(report["cells"], flow, args.dims, args.dense_dims)
  report["wall_s"] = time.time() - started
  if args.json:
    with open(args.json, "w") as out:
      out.write(json.dumps(report, indent=1) + "\n")
  print(command)
  print(format_markdown(report))
  return 0


def format_markdown(report):
  """The table of BENCHMARKS.md's "Sloppy pairs at large D" section."""
  if report["settings"].get("which") != "sloppy" or not report["cells"]:
    return ""
  first = next(iter(report["cells"].values()))
  if "products_per_point" in first:
    lines = ["| flow (D = 1024) | sweep | eigh | sweep + eigh | sloppy top-5 | its products alone | the rest |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for cell, result in report["cells"].items():
      t = result["median_s"]
      lines.append(f"| {cell.split('/')[0]} | {t['sweep']:.2f} s | {t['eigh']:.2f} s | {t['sweep'] + t['eigh']:.2f} s "
                   f"| {t['sloppy']:.2f} s | {t['products']:.2f} s ({result['products_per_point']} a point, "
                   f"{result['block']} at a time) | {t['sloppy'] - t['products']:.2f} s |")
    return "\n".join(lines)
  if "lanczos_products" in first:
    lines = ["| flow (D = 1024, one point) | sloppiest \\|λ\\| / max\\|λ\\| (6) | median \\|λ\\| / max\\|λ\\| | "
             "Lanczos: products to converge | MINRES: residual after 6 D | Chebyshev filter: degree |",
             "|---|---|---:|---:|---:|---:|"]
    for cell, result in report["cells"].items():
      sloppiest = ", ".join(f"{x:.1e}" for x in result["sloppiest_relative"])
      lines.append(f"| {cell.split('/')[0]} | {sloppiest} | {result['median_relative']:.1e} | "
                   f"{result['lanczos_products']} | {result['minres_relative_residual_after_6d']:.1e} | "
                   f"{result['chebyshev_degree_in_lambda']:.1e} |")
    return "\n".join(lines)
  blocks = any("block_iteration" in result.get("median_s", {}) for result in report["cells"].values())
  lines = ["| flow | D | sloppy top-5 | first call | products / point | converged | max residual / max\\|λ\\| | "
           "sloppiest \\|λ\\| / max\\|λ\\| | dense: sweep + eigh | dense / sloppy | max eigenvalue difference |"
           + (" block iteration (converged) | dense / block iteration |" if blocks else ""),
           "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|" + ("---:|---:|" if blocks else "")]
  for cell, result in report["cells"].items():
    flow, dim = cell.split("/")
    if "sloppy" not in result.get("median_s", {}):
      continue  # a size where only the dense path ran, to extrapolate from
    sloppy = result["median_s"]["sloppy"]
    if "dense" in result["median_s"]:
      dense = result["median_s"]["dense"]
      dense_text, ratio = f"{dense:.2f} s", f"{dense / sloppy:.2f}×"
    elif "dense_estimate" in result:
      low, high = result["dense_estimate"]["seconds"]
      dense_text = f"≈ {low:.0f}–{high:.0f} s (estimated)"
      ratio = f"≈ {low / sloppy:.1f}–{high / sloppy:.1f}×"
    else:
      dense_text = ratio = "—"
    difference = result.get("max_eigenvalue_difference_vs_dense")
    sloppiest = result["sloppiest_relative"]
    lines.append(f"| {flow} | {dim} | {sloppy:.2f} s | {result['first_call_s']['sloppy']:.1f} s | "
                 f"{result['num_iterations']} | {'all' if result['all_converged'] else 'NOT all'} | "
                 f"{result['max_relative_residual']:.1e} | {min(sloppiest):.1e}–{max(sloppiest):.1e} | "
                 f"{dense_text} | {ratio} | {'—' if difference is None else f'{difference:.1e}'} |"
                 + (_block_columns(result) if blocks else ""))
  return "\n".join(lines)


def _block_columns(result):
  if "block_iteration" not in result.get("median_s", {}):
    return " — | — |"
  block = result["median_s"]["block_iteration"]
  converged = "all" if result["block_iteration"]["all_converged"] else "NOT all"
  dense = result["median_s"].get("dense")
  return f" {block:.2f} s ({converged}) | {'—' if dense is None else f'{dense / block:.2f}×'} |"


if __name__ == "__main__":
  sys.exit(main())
