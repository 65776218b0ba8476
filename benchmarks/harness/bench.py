"""The run: `run_bench` over cells (flow, D, dtype, N), and the command line `python -m tfp_hessian bench`.

`tfp_hessian/bench.py` finds this package in the source checkout and hands it `add_arguments` and `run`.
"""

import argparse
import datetime
import json
import os
import pathlib
import platform
import sys
import tempfile
import time

import numpy as np
import tensorflow as tf
import tensorflow_probability as tfp
import tf_keras

import tfp_hessian
from harness import measurement, summaries
from harness.flows import EXAMPLE_FLOWS, FLOWS, STOCK_FLOWS, build_flow, sample_points
from harness.measurement import TOLERANCE
from harness.methods import METHODS, PEERS, label
from harness.peer import JaxPeer, PeerError
from harness.summaries import FEW_POINTS, MANY_POINTS, cell_command, format_report

__all__ = ["DEFAULTS", "QUICK", "SCHEMA", "add_arguments", "run", "run_bench"]

SCHEMA = "tfp_hessian.bench/2"  # 2: several N per run (cells by flow, D, dtype, N), execution plans

DEFAULTS = dict(flows=("elementwise_affine", "realnvp", "maf"), dims=(16, 64, 128), dtypes=("float32", "float64"),
                num_points=(FEW_POINTS, MANY_POINTS), repeats=15, budget=20., time_budget=5.)
# What `--quick` changes: tiny flows, few calls (what tests/test_bench.py runs).
QUICK = dict(dims=(3, 5), dtypes=("float64",), num_points=(4,), repeats=3, budget=20., time_budget=0.5)


def _cpu_model():
  try:
    with open("/proc/cpuinfo") as cpuinfo:
      for line in cpuinfo:
        if line.startswith("model name"):
          return line.split(":", 1)[1].strip()
  except OSError:
    pass
  return platform.processor() or platform.machine()


def _machine():
  load = os.getloadavg() if hasattr(os, "getloadavg") else None
  return dict(cpu=_cpu_model(), cores=os.cpu_count(), platform=platform.platform(), python=platform.python_version(),
              load_average_at_start=load)


def _versions():
  return dict(tensorflow=tf.__version__, tensorflow_probability=tfp.__version__, tf_keras=tf_keras.__version__,
              numpy=np.__version__, tfp_hessian=tfp_hessian.__version__)


def run_bench(flows=DEFAULTS["flows"], dims=DEFAULTS["dims"], dtypes=DEFAULTS["dtypes"],
              num_points=DEFAULTS["num_points"], repeats=DEFAULTS["repeats"], budget=DEFAULTS["budget"],
              time_budget=DEFAULTS["time_budget"], methods=tuple(METHODS), peers=(), seed=0, jax_python=None,
              out=None, command=None):
  """Runs the benchmark and returns its report (the JSON document, as a dict).

  Args:
    flows: keys of `FLOWS`.
    dims: event sizes D.
    dtypes: "float32" and/or "float64".
    num_points: the numbers of points N per call (an int: one).
    repeats: timed calls per method and cell (at most; fewer for methods slower than `time_budget` allows).
    budget: seconds per call above which a method is skipped (predicted from a smaller cell, or measured).
    time_budget: seconds of timed calls per method and cell that decide how many calls a slow method gets.
    methods: keys of `METHODS` to time; "ours" and "log_prob" are always included.
    peers: keys of `PEERS`.
    seed: seed of weights and points.
    jax_python: the JAX venv's interpreter (default `benchmarks/jax_peer/.venv/bin/python`).
    out: text stream for progress and tables (default `sys.stdout`).
    command: the command line to record.

  Returns:
    A dict: `schema`, `command`, `created`, `machine`, `versions`, `settings`, `methods` (key → label),
    `cells` (one per flow, dtype, D, N: `command` reproducing it, `execution` (how the default call runs:
    `xla`, `reason`), `results` per method with `status`, `median_ms`, `q1_ms`, `q3_ms`, `min_ms`, `max_ms`,
    `calls`, `points_per_s`, `first_call_s`, `max_rel_error`, `agrees`, `peak_rss_delta_mib`, `ratio_to_log_prob`,
    `ratio_to_ours`), `exponents`, `targets`, `wall_time_s`.
  """
  out = sys.stdout if out is None else out
  for name, allowed, values in (("flows", FLOWS, flows), ("methods", METHODS, methods), ("peers", PEERS, peers),
                                ("dtypes", TOLERANCE, dtypes)):
    unknown = [v for v in values if v not in allowed]
    if unknown:
      raise ValueError(f"unknown {name} {unknown}; choose from {sorted(allowed)}")
  if not dims or min(dims) < 2:
    raise ValueError(f"`dims` must be at least 2; got {list(dims)}.")
  num_points = sorted(set([num_points] if isinstance(num_points, int) else num_points))
  if not num_points or num_points[0] < 1 or repeats < 1:
    raise ValueError(f"`num_points` and `repeats` must be at least 1; got {num_points}, {repeats}.")
  methods = [m for m in METHODS if m in measurement.ALWAYS_RUN or m in methods]
  settings = dict(flows=list(flows), dims=sorted(set(dims)), dtypes=list(dtypes), num_points=num_points,
                  repeats=repeats, budget=budget, time_budget=time_budget, methods=methods, peers=list(peers),
                  seed=seed, tolerance=TOLERANCE)

  def say(line=""):
    print(line, file=out, flush=True)

  started = time.perf_counter()
  report = dict(schema=SCHEMA, command=command, created=datetime.datetime.now(datetime.timezone.utc).isoformat(),
                machine=_machine(), versions=_versions(), settings=settings,
                command_options=_command_options(settings), methods={m: label(m) for m in methods + list(peers)},
                cells=[])
  peer_objects, peer_errors = {}, {}
  for name in peers:
    try:
      peer_objects[name] = JaxPeer(jax_python, budget)
      report["versions"].update({f"jax_peer_{k}": v for k, v in peer_objects[name].versions.items()})
    except PeerError as error:
      peer_errors[name] = str(error)
      say(f"peer {name}: not available: {error}")

  total = len(flows) * len(dtypes) * len(settings["dims"]) * len(num_points)
  rng = np.random.default_rng(seed)
  try:
    with tempfile.TemporaryDirectory(prefix="tfp_hessian_bench_") as workdir:
      for flow_name in flows:
        for dtype in dtypes:
          history = {}
          for dim in settings["dims"]:
            bench_flow = build_flow(flow_name, dim, dtype, seed=seed)
            flow = bench_flow.distribution
            for n in num_points:
              index = len(report["cells"]) + 1
              name = f"{flow_name} D={dim} {dtype} N={n}"
              say(f"[{index}/{total}] {name}: building the flow and {n} points ...")
              z, kwargs = sample_points(bench_flow, n, seed)
              execution = _execution(flow, z, kwargs)
              runners = {m: (lambda m=m: measurement.TfRunner(METHODS[m].make(flow, kwargs), z)) for m in methods}
              unsupported = {}
              for peer in peers:
                if bench_flow.layers is None:
                  unsupported[peer] = f"the {peer} peer rebuilds only the stock flows ({', '.join(STOCK_FLOWS)})"
                elif peer in peer_objects:
                  runners[peer] = lambda peer=peer: peer_objects[peer].runner(bench_flow, z.numpy(), workdir)
                else:
                  runners[peer] = lambda peer=peer: (_ for _ in ()).throw(PeerError(peer_errors[peer]))
              runners.update({peer: None for peer in unsupported})
              cell_started = time.perf_counter()
              results = measurement.run_cell(z, dtype, runners, settings, history, rng, unsupported)
              for method, result in results.items():
                history.setdefault(method, {})[dim, n] = result
              cell = dict(flow=flow_name, dim=dim, dtype=dtype, num_points=n, num_bijectors=bench_flow.num_bijectors,
                          command=cell_command(report["command_options"], [flow_name], [dim], [dtype], [n]),
                          execution=execution, results=results)
              report["cells"].append(cell)
              say(f"[{index}/{total}] {name}: {_cell_summary(results)}; default call: {execution['reason']}; "
                  f"{time.perf_counter() - cell_started:.0f} s (total {time.perf_counter() - started:.0f} s)")
  finally:
    for peer in peer_objects.values():
      peer.close()

  report["exponents"] = summaries.exponents(report["cells"])
  report["targets"] = summaries.targets(report["cells"])
  report["wall_time_s"] = time.perf_counter() - started
  say()
  say(format_report(report))
  return report


def _execution(distribution, z, kwargs):
  """How the default call `log_prob_hessian` runs in a `tf.function` on these points: `{xla, reason, chunks}`."""
  try:
    plan = tfp_hessian.execution_plan(distribution, z, **kwargs)
  except Exception as error:  # pylint: disable=broad-except
    return dict(xla=None, reason=f"unknown: {measurement.reason(error)}")
  return dict(xla=bool(plan.xla), reason=plan.reason, chunks=int(plan.chunks))


def _command_options(settings):
  """The options of a run's settings that differ from the defaults, as a command line fragment."""
  options = []
  if settings["methods"] != list(METHODS):
    options.append("--methods " + " ".join(settings["methods"]))
  if settings["peers"]:
    options.append("--peers " + " ".join(settings["peers"]))
  for key in ("repeats", "budget", "time_budget", "seed"):
    default = DEFAULTS.get(key, 0)
    if settings[key] != default:
      options.append(f"--{key.replace('_', '-')} {settings[key]:g}")
  return " ".join(options)


def _cell_summary(results):
  ours = results.get("ours", {})
  if ours.get("median_ms") is None:
    return f"ours {ours.get('status', 'missing')}"
  parts = [f"ours {summaries.format_ms(ours['median_ms'])}"]
  if results.get("log_prob", {}).get("ratio_to_ours"):
    parts.append(f"{1 / results['log_prob']['ratio_to_ours']:.1f}x log_prob")
  fastest, fastest_ms = summaries.fastest_alternative(results)
  if fastest:
    parts.append(f"fastest alternative {fastest} {summaries.format_ms(fastest_ms)}")
  problems = [m for m, r in results.items() if r["status"] != "ok" or r.get("agrees") is False]
  if problems:
    parts.append("not timed or disagreeing: " + ", ".join(problems))
  return ", ".join(parts)


# Issue #13's table: the stock flows at every D of its targets, the example flows at the small D, one document.
FULL_RUN = """issue #13's table (about 2 h on a quiet 2-core machine: 72 + 32 cells):
  python -m tfp_hessian bench --flow elementwise_affine realnvp maf --dim 2 4 8 16 64 128 --peers jax \\
      --json benchmarks/results.json
  python -m tfp_hessian bench --flow research_flow conditional_maf --dim 2 4 8 16 --peers jax \\
      --json benchmarks/results_examples.json
  python benchmarks/report.py benchmarks/results.json benchmarks/results_examples.json --markdown BENCHMARKS.md \\
      --plot benchmarks/time_vs_dim.png"""


def add_arguments(parser):
  """Adds the benchmark's options to an `argparse` (sub)parser."""
  parser.formatter_class = argparse.RawDescriptionHelpFormatter
  parser.epilog = FULL_RUN
  parser.add_argument("--flow", nargs="+", choices=list(FLOWS), default=None, dest="flows",
                      help=f"flows to benchmark (default: the stock flows, {' '.join(DEFAULTS['flows'])}); "
                           f"{' and '.join(EXAMPLE_FLOWS)} are tfp_hessian.examples' (their defaults but D), which "
                           "the JAX peer does not rebuild")
  parser.add_argument("--dim", nargs="+", type=int, default=None, dest="dims",
                      help="event sizes D, at least 2 (default: 16 64 128; --quick: 3 5)")
  parser.add_argument("--dtype", nargs="+", choices=sorted(TOLERANCE), default=None, dest="dtypes",
                      help="dtypes (default: float32 float64; --quick: float64)")
  parser.add_argument("--num-points", nargs="+", type=int, default=None,
                      help=f"points N per call, one cell per N (default: {FEW_POINTS} {MANY_POINTS}, latency and "
                           "throughput; --quick: 4)")
  parser.add_argument("--methods", nargs="+", choices=list(METHODS), default=None,
                      help="TensorFlow methods to time (default: all; log_prob and ours always run)")
  parser.add_argument("--peers", nargs="*", choices=sorted(PEERS), default=(),
                      help="other frameworks: jax (needs benchmarks/jax_peer/setup.sh)")
  parser.add_argument("--repeats", type=int, default=None,
                      help="timed calls per method and cell, at most (default: 15; --quick: 3)")
  parser.add_argument("--budget", type=float, default=None,
                      help="skip a method slower than this many seconds per call (default: 20)")
  parser.add_argument("--time-budget", type=float, default=None,
                      help="seconds of timed calls per method and cell; slower methods get fewer calls (default: 5)")
  parser.add_argument("--seed", type=int, default=0, help="seed of weights and points (default: 0)")
  parser.add_argument("--json", default=None, metavar="PATH", help="write the report as JSON to PATH")
  parser.add_argument("--jax-python", default=None, metavar="PATH",
                      help="interpreter of the JAX peer (default: benchmarks/jax_peer/.venv/bin/python)")
  parser.add_argument("--quick", action="store_true",
                      help="tiny flows and few calls, for a smoke test (D = 3 5, float64, 4 points, 3 calls, 0.5 s "
                           "of calls per method); the options given explicitly override it")


def run(args):
  """Runs the benchmark from parsed arguments; exit status 0 unless ours failed or a method disagreed."""
  settings = dict(DEFAULTS, **(QUICK if args.quick else {}))
  for key in ("flows", "dims", "dtypes", "num_points", "repeats", "budget", "time_budget"):
    if getattr(args, key) is not None:
      settings[key] = getattr(args, key)
  command = "python -m tfp_hessian bench" + "".join(f" {a}" for a in sys.argv[2:]) if sys.argv[1:2] == ["bench"] \
      else None
  report = run_bench(methods=tuple(args.methods or METHODS), peers=tuple(args.peers), seed=args.seed,
                     jax_python=args.jax_python, command=command, **settings)
  if args.json:
    path = pathlib.Path(args.json)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(_finite(report), indent=1, allow_nan=False) + "\n")
    print(f"wrote {path}")
  ok = all(c["results"].get("ours", {}).get("status") == "ok" for c in report["cells"])
  ok = ok and not any(r.get("agrees") is False for c in report["cells"] for r in c["results"].values())
  return 0 if ok else 1


def _finite(value):
  """The report with NaN and infinities as None (strict JSON has neither) and numpy scalars as Python's."""
  if isinstance(value, dict):
    return {k: _finite(v) for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return [_finite(v) for v in value]
  if isinstance(value, (np.integer, np.floating, np.bool_)):
    value = value.item()
  if isinstance(value, float) and not np.isfinite(value):
    return None
  return value
