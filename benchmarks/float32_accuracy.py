"""float32 accuracy at many points: every way to the Hessian against the float64 truth, point by point.

    python benchmarks/float32_accuracy.py                       # the benchmark flows at D = 4 and 16, 1024 points
    python benchmarks/float32_accuracy.py --flows maf --dims 64 --points 1024 --json out.json
    python benchmarks/float32_accuracy.py --functions     # XLA's float32 tanh, exp, ... against TensorFlow's

Issue #13 asks that ours in float32 be no less accurate than nested tapes' own float32 Hessian against a float64
reference, point by point. The tests hold every flow of the registry to that at its few points
(`tests/test_execution.py::test_compiled_float32_no_less_accurate_than_tapes`: at each point, ours' error at most
twice the tapes' plus 8 float32 ulps of the Hessian's largest entry). This measures it at the benchmarks' scale:
the benchmark flow in float32 at points it drew, and its float64 twin with exactly the same weights
(`harness.build_flow(..., weights_dtype=tf.float32)`) at the same points, where nested tapes give the truth.

Every method of the benchmarks (`harness.METHODS`: ours as the default call and as the traced graph, nested tapes,
forward-over-reverse, with and without XLA) is then held to the same criterion against the tapes, so that where
ours misses it, the other ways to the Hessian say how often rounding alone misses it. Reported per method: the
error at each point relative to the truth's largest entry there (median, 99th percentile, largest), the number of
points where it exceeds twice the tapes' error plus 8 ulps (`over_criterion`), and the same against nested tapes
compiled by XLA (`over_criterion_xla`), whose rounding (fused, reordered, XLA's own `tanh` and `exp`) an
XLA-compiled sweep shares and the graph's tapes do not. `--functions` measures instead the elementwise functions
the flows use, in float32, as TensorFlow runs them and XLA-compiled, in ulps from float64 on 10⁶ inputs.
"""

import argparse
import json
import platform
import shlex
import sys

import numpy as np
import tensorflow as tf

import tfp_hessian
from tfp_hessian import reference

import harness  # benchmarks/harness/, beside this script

METHODS = ["ours", "ours_graph", "ours_compiled", "tapes", "tapes_xla", "fwd_rev", "fwd_rev_xla"]
DEFAULT_METHODS = ["ours", "ours_graph", "tapes", "tapes_xla", "fwd_rev", "fwd_rev_xla"]
ULPS = 8


def _method(name, distribution, kwargs):
  if name in ("ours_graph", "ours_compiled"):  # the sweep as traced, nothing compiled; or compiled whole, forced
    xla = name == "ours_compiled"
    return harness.ours(distribution, kwargs, xla=xla, pull_back_xla=xla)
  return harness.METHODS[name].make(distribution, kwargs)


def measure(flow, dim, num_points, methods, seed=0):
  """One cell: the truth's and each method's per-point errors, summarised."""
  flow32 = harness.build_flow(flow, dim, tf.float32, seed)
  flow64 = harness.build_flow(flow, dim, tf.float64, seed, weights_dtype=tf.float32)
  z32, kwargs32 = harness.sample_points(flow32, num_points, seed)
  z64 = tf.cast(z32, tf.float64)
  kwargs64 = tf.nest.map_structure(lambda t: tf.cast(t, tf.float64), kwargs32)
  truth = tf.function(lambda z: reference.tape_hessian(flow64.distribution, z, **kwargs64), autograph=False)(z64)
  truth = truth.numpy()
  ours64 = tf.function(lambda z: tfp_hessian.log_prob_hessian(flow64.distribution, z, **kwargs64),
                       autograph=False)(z64).numpy()
  scale = np.max(np.abs(truth), axis=(-2, -1))
  errors = {}
  for name in methods:
    hessian = _method(name, flow32.distribution, kwargs32)(z32).numpy()
    errors[name] = np.max(np.abs(hessian - truth), axis=(-2, -1)) / scale
  allowed = {tapes: 2 * errors[tapes] + ULPS * np.finfo(np.float32).eps for tapes in ("tapes", "tapes_xla")}
  plan = tfp_hessian.execution_plan(flow32.distribution, z32, **kwargs32)
  return dict(
      flow=flow, dim=dim, num_points=num_points, execution=dict(xla=plan.xla, chunks=plan.chunks, reason=plan.reason),
      twin=dict(ours_float64_vs_truth=float(np.max(np.max(np.abs(ours64 - truth), axis=(-2, -1)) / scale)),
                largest_entry=dict(median=float(np.median(scale)), max=float(np.max(scale)))),
      methods={name: dict(median=float(np.median(e)), p99=float(np.quantile(e, 0.99)), max=float(np.max(e)),
                          worst_point=int(np.argmax(e)), over_criterion=int(np.sum(e > allowed["tapes"])),
                          over_criterion_xla=int(np.sum(e > allowed["tapes_xla"])))
               for name, e in errors.items()})


FUNCTIONS = {
    "tanh": (tf.tanh, np.tanh), "exp": (tf.exp, np.exp), "log": (tf.math.log, np.log),
    "softplus": (tf.nn.softplus, lambda x: np.logaddexp(0., x)),
    "sigmoid": (tf.sigmoid, lambda x: 1 / (1 + np.exp(-x))),
    "asinh": (tf.asinh, np.arcsinh), "sinh": (tf.sinh, np.sinh), "cosh": (tf.cosh, np.cosh),
}


def function_ulps(size=10 ** 6, seed=0):
  """`{name: (largest, mean ulps as traced, largest, mean ulps XLA-compiled)}` of `FUNCTIONS` in float32 at `size`
  normal draws (× 3; absolute values for `log`), against float64."""
  x = np.random.default_rng(seed).standard_normal(size).astype(np.float32) * 3
  rows = {}
  for name, (tf_fn, np_fn) in FUNCTIONS.items():
    points = np.abs(x) if name == "log" else x
    truth = np_fn(points.astype(np.float64))
    ulp = np.spacing(np.abs(truth).astype(np.float32)).astype(np.float64)
    row = []
    for jit_compile in (False, True):
      value = tf.function(tf_fn, autograph=False, jit_compile=jit_compile)(tf.constant(points)).numpy()
      error = np.abs(value.astype(np.float64) - truth) / ulp
      row += [float(error.max()), float(error.mean())]
    rows[name] = tuple(row)
  return rows


def _table(cells, methods):
  lines = ["| flow | D | N | " + " | ".join(methods) + " |", "|---|---:|---:|" + "---|" * len(methods)]
  for cell in cells:
    entries = []
    for name in methods:
      m = cell["methods"][name]
      entries.append(f"{m['median']:.1e} / {m['p99']:.1e} / {m['max']:.1e} ({m['over_criterion']}, "
                     f"{m['over_criterion_xla']})")
    lines.append(f"| {cell['flow']} | {cell['dim']} | {cell['num_points']} | " + " | ".join(entries) + " |")
  return "\n".join(lines)


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--flows", nargs="+", default=list(harness.FLOWS), choices=list(harness.FLOWS))
  parser.add_argument("--dims", nargs="+", type=int, default=[4, 16])
  parser.add_argument("--points", nargs="+", type=int, default=[1024])
  parser.add_argument("--methods", nargs="+", default=DEFAULT_METHODS, choices=METHODS,
                      help="ours_graph: the sweep forced as traced; ours_compiled: forced compiled whole")
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--json", metavar="PATH")
  parser.add_argument("--functions", action="store_true", help="the elementwise functions alone (module docstring)")
  args = parser.parse_args(argv)
  if args.functions:
    print("| function | as traced: largest / mean ulps | XLA: largest / mean ulps |\n|---|---|---|")
    for name, (graph_max, graph_mean, xla_max, xla_mean) in function_ulps().items():
      print(f"| {name} | {graph_max:.2f} / {graph_mean:.3f} | {xla_max:.2f} / {xla_mean:.3f} |")
    return 0
  methods = list(dict.fromkeys(["tapes", "tapes_xla"] + args.methods))  # the criteria are the tapes' errors
  cells = []
  for flow in args.flows:
    for dim in args.dims:
      for num_points in args.points:
        cell = measure(flow, dim, num_points, methods, args.seed)
        cells.append(cell)
        print(f"{flow} D={dim} N={num_points} (float64 ours vs truth {cell['twin']['ours_float64_vs_truth']:.1e}): "
              + "; ".join(f"{name} {m['median']:.1e}/{m['p99']:.1e}/{m['max']:.1e} over {m['over_criterion']}, "
                          f"{m['over_criterion_xla']}" for name, m in cell["methods"].items()), flush=True)
  print("\nError relative to the truth's largest entry, per point: median / 99th percentile / largest (points over "
        f"twice the error of nested tapes + {ULPS} ulps, of nested tapes + XLA + {ULPS} ulps)\n")
  print(_table(cells, methods))
  if args.json:
    command = "python benchmarks/float32_accuracy.py " + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:]))
    with open(args.json, "w") as f:
      json.dump(dict(command=command.strip(), machine=platform.processor() or platform.machine(),
                     versions=dict(tensorflow=tf.__version__), cells=cells), f, indent=1)
  return 0


if __name__ == "__main__":
  sys.exit(main())
