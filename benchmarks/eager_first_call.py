"""The first eager call on a flow (op by op), with autodiff Jacobians by pfor or by a loop of gradients.

Eagerly, a Jacobian vectorized by pfor traces a graph on every call; `tapes.use_pfor` takes a loop of gradients
instead up to `tapes.EAGER_LOOP_MAX_SIZE` coordinates. For the test flows whose layers or bases go through
autodiff, this times the first call of `log_prob_and_derivatives` on a freshly built flow both ways (pfor forced
by a limit of 0), alternating, best of `--rounds`, and checks that the Hessians agree.

    python benchmarks/eager_first_call.py --rounds 2
"""

import argparse
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))

FLOWS = ["batch [B, 1] fallback layer, points [N, 1, D]", "MultivariateStudentT (full autodiff)",
         "Sample(StudentT) (diagonal autodiff)", "chain with Ascending and Invert(RealNVP)", "mixed chain",
         "research-style: MAF stages, BatchNorm, box map, shear"]


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
  parser.add_argument("--rounds", type=int, default=2)
  args = parser.parse_args(argv)
  import tfp_hessian  # pylint: disable=import-outside-toplevel
  from tfp_hessian import tapes  # pylint: disable=import-outside-toplevel
  import test_flows  # pylint: disable=import-outside-toplevel  (tests/: the flows of the test registry)
  default = tapes.EAGER_LOOP_MAX_SIZE
  print(f"{'flow':55s} {'pfor':>8s} {'loop':>8s} {'pfor/loop':>10s} {'max rel. diff':>14s}")
  for name in FLOWS:
    seconds, hessians = {}, {}
    for _ in range(args.rounds):
      for mode, limit in (("pfor", 0), ("loop", default)):
        tapes.EAGER_LOOP_MAX_SIZE = limit
        flow, z, kwargs = test_flows.make_flow(name, np.float64)
        start = time.perf_counter()
        hessians[mode] = tfp_hessian.log_prob_and_derivatives(flow, z, **kwargs).hessian.numpy()
        seconds.setdefault(mode, []).append(time.perf_counter() - start)
    tapes.EAGER_LOOP_MAX_SIZE = default
    pfor, loop = min(seconds["pfor"]), min(seconds["loop"])
    difference = np.max(np.abs(hessians["pfor"] - hessians["loop"])) / np.max(np.abs(hessians["pfor"]))
    print(f"{name[:55]:55s} {pfor:7.2f}s {loop:7.2f}s {pfor / loop:9.1f}x {difference:14.1e}", flush=True)
  return 0


if __name__ == "__main__":
  sys.exit(main())
