"""The flows users really have: ours eager and in `tf.function`, against nested tapes and TF's own `log_prob`.

    python benchmarks/real_flows.py --json benchmarks/real_flows.json --markdown real_flows.md

Flows (`tfp_hessian.examples`), float32, the same weights and points for every method:

- research-style flow, D = 10: 3 MAF stages (AutoregressiveNetwork [32, 32]), Permute, a user-written `Shear`
  per stage, BatchNormalization, post-affine, a user-written map onto a box (`BoxMap`);
- shears only, D = 32: 4 user-written coordinate-mixing bijectors (`Shear`) and a Permute between each: every
  layer is served by the autodiff fallback;
- conditional MAF, D = 16, a 4-dimensional condition per point: 2 MAFs of conditional AutoregressiveNetworks;
- JointDistributionNamed with 3 named parts (`scale`, `w` [8], `noise`), parts depending on each other;
- surrogate posterior over the same 3 parts (`tfp.experimental.vi.build_affine_surrogate_posterior`, a
  DeferredModule).

Methods, each timed at N = 16 and N = 1024 points:

- `ours eager`: `tfp_hessian.log_prob_hessian(flow, z, **kwargs)` called eagerly, as the README writes it (after
  its first call);
- `ours tf.function`: the same call inside the user's own `tf.function`;
- `tapes`: nested `GradientTape`s (`batch_jacobian` of the gradient) inside `tf.function`, what an expert writes;
- `log_prob`: `flow.log_prob(z, **kwargs)` inside `tf.function`, the floor.

Timing: every method is called once to trace (and its result checked against the tapes to 1e-3 relative, in
float32), then the methods are called in interleaved rounds, one call each per round, and the median of the
rounds is reported, with the ratios of the medians.
"""

import argparse
import json
import platform
import statistics
import time

import numpy as np
import tensorflow as tf
import tensorflow_probability as tfp

import tfp_hessian
from tfp_hessian import examples, reference

tfb, tfd = tfp.bijectors, tfp.distributions

FLOWS = ("research-style", "shears", "conditional MAF", "JointDistributionNamed", "surrogate posterior")
METHODS = ("ours eager", "ours tf.function", "tapes", "log_prob")


def shears(dim, dtype, seed=0):
  """4 user-written coordinate-mixing bijectors (`Shear`), a Permute between each: all autodiff fallback."""
  rng = np.random.default_rng(seed)
  layers = []
  for k in range(4):
    layers += [examples.Shear(tf.constant(rng.normal(size=(dim, dim)) * 0.3, dtype), name=f"shear{k}"),
               tfb.Permute(rng.permutation(dim))]
  return tfd.TransformedDistribution(tfd.MultivariateNormalDiag(tf.zeros(dim, dtype)), tfb.Chain(layers[:-1]))


def build(name, num_points, dtype=tf.float32, seed=0):
  """`(distribution, z, kwargs)` of a benchmark flow, `num_points` points sampled from it (copied)."""
  kwargs = {}
  if name == "research-style":
    flow = examples.research_flow(dim=10, dtype=dtype, seed=seed)
  elif name == "shears":
    flow = shears(32, dtype, seed)
  elif name == "conditional MAF":
    flow = examples.conditional_maf(dim=16, condition_size=4, dtype=dtype, seed=seed)
    condition = tf.constant(np.random.default_rng(seed).normal(size=(num_points, 4)), dtype)
    kwargs = flow.condition_kwargs(condition)
  elif name == "JointDistributionNamed":
    flow = examples.named_model(dtype=dtype, seed=seed)
  elif name == "surrogate posterior":
    flow = examples.named_surrogate(dtype=dtype, seed=seed)
  else:
    raise ValueError(f"Unknown flow {name!r}; one of {FLOWS}.")
  sample = flow.sample(num_points, seed=(seed, 7), **kwargs)
  z = tf.nest.map_structure(lambda t: tf.constant(t.numpy()), sample)
  return flow, z, kwargs


def methods(flow, kwargs):
  """`{method: callable(z)}` for one flow."""
  ours = lambda z: tfp_hessian.log_prob_hessian(flow, z, **kwargs)  # noqa: E731
  tapes = lambda z: reference.tape_hessian(flow, z, **kwargs)  # noqa: E731
  return {
      "ours eager": ours,
      "ours tf.function": tf.function(ours, autograph=False),
      "tapes": tf.function(tapes, autograph=False),
      "log_prob": tf.function(lambda z: flow.log_prob(z, **kwargs), autograph=False),
  }


def time_flow(name, num_points, rounds, dtype=tf.float32):
  flow, z, kwargs = build(name, num_points, dtype)
  calls = methods(flow, kwargs)
  expected = None
  for method, call in calls.items():
    result = call(z)
    if method == "ours eager":
      result = call(z)  # the first eager call runs op by op; the compiled function serves every later one
    if method == "tapes":
      expected = result.numpy()
  for method in ("ours eager", "ours tf.function"):
    actual = calls[method](z).numpy()
    error = np.max(np.abs(actual - expected)) / np.max(np.abs(expected))
    if not error < 1e-3:
      raise AssertionError(f"{name}, {method}: {error:.2g} relative error against nested tapes")
  times = {method: [] for method in calls}
  for _ in range(rounds):
    for method, call in calls.items():
      start = time.perf_counter()
      result = call(z)
      (result if isinstance(result, tf.Tensor) else tf.constant(0.)).numpy()
      times[method].append(time.perf_counter() - start)
  return {method: 1e3 * statistics.median(values) for method, values in times.items()}


def markdown(report):
  lines = [f"Command: `{report['command']}`; {report['machine']}; float32, median of {report['rounds']} interleaved "
           "rounds, ms per call.", "",
           "| flow | N | ours eager | ours tf.function | nested tapes | log_prob | tapes / ours eager "
           "| tapes / ours tf.function |", "|---|---:|---:|---:|---:|---:|---:|---:|"]
  for cell in report["cells"]:
    ms = cell["ms"]
    lines.append(f"| {cell['flow']} | {cell['num_points']} | {ms['ours eager']:.2f} | {ms['ours tf.function']:.2f} | "
                 f"{ms['tapes']:.2f} | {ms['log_prob']:.2f} | "
                 f"{ms['tapes'] / ms['ours eager']:.2f}× | {ms['tapes'] / ms['ours tf.function']:.2f}× |")
  return "\n".join(lines) + "\n"


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--flows", nargs="*", default=list(FLOWS))
  parser.add_argument("--num-points", type=int, nargs="*", default=[16, 1024])
  parser.add_argument("--rounds", type=int, default=15)
  parser.add_argument("--json")
  parser.add_argument("--markdown")
  args = parser.parse_args(argv)
  command = "python benchmarks/real_flows.py " + " ".join(argv if argv is not None else __import__("sys").argv[1:])
  report = dict(command=command.strip(), rounds=args.rounds, cells=[],
                machine=f"{platform.processor() or platform.machine()}, TF {tf.__version__}")
  for name in args.flows:
    for num_points in args.num_points:
      ms = time_flow(name, num_points, args.rounds)
      report["cells"].append(dict(flow=name, num_points=num_points, ms=ms))
      print(f"{name}, N = {num_points}: " + ", ".join(f"{m} {v:.2f} ms" for m, v in ms.items()), flush=True)
  print(markdown(report))
  if args.json:
    with open(args.json, "w", encoding="utf-8") as file:
      json.dump(report, file, indent=1)
  if args.markdown:
    with open(args.markdown, "w", encoding="utf-8") as file:
      file.write(markdown(report))


if __name__ == "__main__":
  main()
