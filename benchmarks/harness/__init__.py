"""Harness of `python -m tfp_hessian bench`: time `log_prob_hessian` against every other way to the same Hessian.

Five random-weight flows over `R^D` (`FLOWS`). Three of 4 layers each on a `MultivariateNormalDiag` base
(`STOCK_FLOWS`, the flows of issues #4 and #13, which the JAX peer rebuilds from their recipe):

- `elementwise_affine`: `ScaleMatvecTriL → Shift → SinhArcsinh`, 4 times;
- `realnvp`: 4 `RealNVP` couplings with `conditioners.DenseShiftAndLogScale([64, 64], "tanh")`, `Permute` between;
- `maf`: 4 `MaskedAutoregressiveFlow`s with `tfb.AutoregressiveNetwork(params=2, hidden_units=[64, 64],
  activation="tanh")` (random *masked* kernels), `Permute` between.

And two of `tfp_hessian.examples` with their defaults but D (`EXAMPLE_FLOWS`, the real-flows issue's):

- `research_flow`: 3 MAF stages ([32, 32]) with `Permute`, a user-written `Shear` and `BatchNormalization`, a
  post-affine layer and a user-written `BoxMap` onto a box (the last two have no rule: the autodiff fallback);
- `conditional_maf`: 2 MAFs of conditional `AutoregressiveNetwork`s ([32, 32]), a 4-number condition per point
  passed as `log_prob(z, bijector_kwargs=...)`, as TFP's conditional flows take it.

A cell is (flow, D, dtype, N): every method of `METHODS` (and each peer of `PEERS`) gets the same N points, for
each N of `num_points` (default 16, the latency of an interactive call, and 1024, the throughput over posterior
samples):

1. a first call, timed: tracing and compiling included (`first_call_s`);
2. agreement with ours, `max_n max_ij |H_n - H_ours,n|_ij / max_ij |H_ours,n|_ij` (`max_rel_error`);
3. an untimed warm-up call under a sampler of the process's resident set size (`/proc/self/statm`, every
   0.5 ms): `peak_rss_delta_mib` is the peak above the RSS just before the call. It is what that call added
   to the process, a lower bound of its working memory (memory that an earlier call freed may be reused);
4. timed calls interleaved round-robin (in a fresh random order each round), so that the load of a shared
   machine falls on every method alike; the median and the interquartile range are reported, and the points
   per second at the median. A method slower than the time budget allows gets fewer calls (at least one).

Each cell also records which execution the default call chose (`tfp_hessian.execution_plan`: XLA-compiled or
the traced graph, and why) and the command that measures it again.

A method that raises is reported as `failed: <reason>` in its cell and the run goes on; one that cannot serve a
flow (the JAX peer, for the example flows) as `skipped: <reason>`. A method predicted to exceed the per-call
budget (extrapolated from the smaller D, at least as `D³`, and from fewer points, at least as `N`, or `N²` for
tf.hessians), or whose warm-up call did, or whose first call took three times the budget, is
`skipped: > budget` (`log_prob` and ours always run); a method that can afford one call only is timed by its
warm-up call. The log–log slope of time against D per method (`exponents`) and the issues' targets (`targets`:
issue #13's, then issue #4's) close the report.

The harness lives in the repository, not in the package: `tfp_hessian/bench.py` only finds it here (`benchmarks/`
beside the package of a source checkout). Scripts in `benchmarks/` import it as `harness` (their directory is on
`sys.path`). By concern: `flows` (the flows and their points), `methods` (`METHODS`, `PEERS`, and
`forward_over_reverse`), `measurement` (one cell), `peak_rss` (`PeakRss`), `peer` (the JAX worker), `summaries`
(exponents, targets, the text report) and `bench` (`run_bench` and the command line).
"""

from harness.bench import DEFAULTS, QUICK, SCHEMA, add_arguments, run, run_bench
from harness.flows import EXAMPLE_FLOWS, FLOWS, STOCK_FLOWS, BenchFlow, build_flow, sample_points
from harness.measurement import TOLERANCE, first_calls, interleaved_medians
from harness.methods import METHODS, PEERS, Method, forward_over_reverse, ours
from harness.peak_rss import PeakRss
from harness.summaries import FEW_POINTS, MANY_POINTS, cell_command, format_report

__all__ = [
    "BenchFlow", "DEFAULTS", "EXAMPLE_FLOWS", "FEW_POINTS", "FLOWS", "MANY_POINTS", "METHODS", "Method", "PEERS",
    "PeakRss", "QUICK", "SCHEMA", "STOCK_FLOWS", "TOLERANCE", "add_arguments", "build_flow", "cell_command",
    "first_calls", "forward_over_reverse", "format_report", "interleaved_medians", "ours", "run", "run_bench",
    "sample_points",
]
