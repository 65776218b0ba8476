"""A flow of `ScaleMatvecLU` layers: its sweep compiled whole against as traced, time and float32 accuracy.

    python benchmarks/lu_execution.py                      # D = 4 and 16, 16 and 1024 points
    python benchmarks/lu_execution.py --dims 4 --points 16 --rounds 41 --json out.json

`ScaleMatvecLU`'s inverse gathers its permutation (`GatherNd`), which `execution` did not compile before session
35, so its sweep ran as a graph (its pull-back compiled alone from 64 points) even where its triangular solves
would be compiled (n ≤ 16). This measures that choice, forced both ways (`execution.forced`), for a 4-layer flow
`[Shift, ScaleMatvecLU, SinhArcsinh] × 4` over a `MultivariateNormalDiag` base with random float32 weights:

- time: the graph, the sweep compiled whole and TF's own `log_prob`, each a `tf.function`, interleaved round-robin
  (medians of `--rounds` calls, after a first call timed apart and a warm-up call);
- float32 accuracy: per point, the Hessian's largest error over the truth's largest entry, the truth being the
  float64 flow of the same (float32) weights, at `--accuracy-points` points; for the graph, the sweep compiled,
  nested tapes and nested tapes + XLA (median, 99th percentile and largest over the points).
"""

import argparse
import json
import platform
import shlex
import sys

import numpy as np
import tensorflow as tf
import tensorflow_probability as tfp

import tfp_hessian
from tfp_hessian import reference

import harness  # benchmarks/harness/, beside this script

tfd, tfb = tfp.distributions, tfp.bijectors


def lu_flow(dim, dtype, seed=0):
  """The 4-layer LU flow in `dtype`, its weights float32 numbers whatever `dtype` (so the float64 flow is the float32
  one exactly)."""
  rng = np.random.default_rng(seed)
  layers = []
  for _ in range(4):
    matrix = (rng.normal(size=(dim, dim)) + 2 * np.eye(dim)).astype(np.float32)
    lower_upper, permutation = tf.linalg.lu(tf.constant(matrix.astype(dtype)))
    shift = (0.3 * rng.normal(size=dim)).astype(np.float32).astype(dtype)
    layers += [tfb.Shift(shift), tfb.ScaleMatvecLU(lower_upper, permutation),
               tfb.SinhArcsinh(skewness=dtype(np.float32(0.2)), tailweight=dtype(np.float32(1.1)))]
  return tfd.TransformedDistribution(tfd.MultivariateNormalDiag(tf.zeros(dim, dtype)), tfb.Chain(layers))


def _timing(dim, points, rounds, rng):
  flow = lu_flow(dim, np.float32)
  z = tf.constant(flow.sample(points, seed=(1, 2)).numpy())
  functions = {"graph": harness.ours(flow, xla=False), "xla": harness.ours(flow, xla=True),
               "log_prob": tf.function(lambda z: flow.log_prob(z), autograph=False)}
  first, _ = harness.first_calls(functions, z)
  medians = {label: 1e3 * seconds for label, seconds in harness.interleaved_medians(functions, z, rounds, rng).items()}
  return {"dim": dim, "points": points, "median_ms": medians, "graph_over_xla": medians["graph"] / medians["xla"],
          "first_call_s": {"graph": first["graph"], "xla": first["xla"]},
          "default_plan": tfp_hessian.execution_plan(flow, z).reason}


def _accuracy(dim, points):
  flow32, flow64 = lu_flow(dim, np.float32), lu_flow(dim, np.float64)
  z = tf.constant(flow32.sample(points, seed=(3, 4)).numpy())
  truth = tfp_hessian.log_prob_hessian(flow64, tf.cast(z, tf.float64)).numpy()
  scale = np.max(np.abs(truth), axis=(-2, -1))
  hessians = {}
  for label, xla in (("graph", False), ("xla", True)):
    hessians[label] = harness.ours(flow32, xla=xla)(z)
  hessians["tapes"] = tf.function(lambda z: reference.tape_hessian(flow32, z))(z)
  hessians["tapes_xla"] = tf.function(lambda z: reference.tape_hessian(flow32, z), jit_compile=True)(z)
  errors = {}
  for label, hessian in hessians.items():
    error = np.max(np.abs(np.asarray(hessian, np.float64) - truth), axis=(-2, -1)) / scale
    errors[label] = {"median": float(np.median(error)), "p99": float(np.quantile(error, 0.99)),
                     "max": float(error.max())}
  return {"dim": dim, "points": points, "errors": errors}


def main():
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--dims", type=int, nargs="+", default=[4, 16])
  parser.add_argument("--points", type=int, nargs="+", default=[16, 1024])
  parser.add_argument("--rounds", type=int, default=61)
  parser.add_argument("--accuracy-points", type=int, default=256)
  parser.add_argument("--json", help="write the results as JSON to this path")
  args = parser.parse_args()
  command = "python " + " ".join(shlex.quote(a) for a in sys.argv)
  print(f"# {command}\n")
  print("| D | N | graph ms | XLA ms | log_prob ms | graph / XLA | first call graph / XLA s | default call |")
  print("|---:|---:|---:|---:|---:|---:|---|---|")
  timings, accuracies = [], []
  rng = np.random.default_rng(0)
  for dim in args.dims:
    for points in args.points:
      cell = _timing(dim, points, args.rounds, rng)
      timings.append(cell)
      m, f = cell["median_ms"], cell["first_call_s"]
      print(f"| {dim} | {points} | {m['graph']:.3g} | {m['xla']:.3g} | {m['log_prob']:.3g} | "
            f"{cell['graph_over_xla']:.2f} | {f['graph']:.2f} / {f['xla']:.2f} | {cell['default_plan'][:60]} |")
  print("\nfloat32 Hessian error against the float64 flow (median / 99th percentile / largest over the points):\n")
  print("| D | points | graph | XLA | nested tapes | nested tapes + XLA |")
  print("|---:|---:|---|---|---|---|")
  for dim in args.dims:
    cell = _accuracy(dim, args.accuracy_points)
    accuracies.append(cell)
    row = " | ".join("{median:.1e} / {p99:.1e} / {max:.1e}".format(**cell["errors"][label])
                     for label in ("graph", "xla", "tapes", "tapes_xla"))
    print(f"| {dim} | {args.accuracy_points} | {row} |")
  if args.json:
    with open(args.json, "w") as out:
      json.dump({"command": command, "machine": platform.processor() or platform.machine(),
                 "timings": timings, "accuracy": accuracies}, out, indent=1)


if __name__ == "__main__":
  main()
