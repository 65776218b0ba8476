"""`python -m tfp_hessian bench`: runs the benchmark harness of the source checkout, `benchmarks/harness/`.

The harness (the flows, the methods timed, the JAX peer, the issues' targets) is not part of the package: it lives
in the repository, beside the package, which a source checkout installed with `pip install -e .` provides. Without
one, `bench` says where to get it.
"""

import argparse
import importlib.util
import pathlib
import sys

__all__ = ["HELP", "add_arguments", "harness", "run"]

HELP = "Time log_prob_hessian against tf.hessians, nested tapes, forward-over-reverse (and JAX) on random flows."

# Where a source checkout has the harness: the repository's benchmarks/, beside this package.
HARNESS = pathlib.Path(__file__).resolve().parents[1] / "benchmarks" / "harness"

MISSING = (f"The benchmark harness is not part of the installed package: it lives in the repository's benchmarks/ "
           f"(not found at {HARNESS}). To run it, clone the repository, install it with `pip install -e .` from "
           "there, and run `python -m tfp_hessian bench` again.")


def harness():
  """The package `benchmarks/harness` of the source checkout, imported as `harness`, or None if there is none.

  It is loaded from its path, so that `benchmarks/` need not be on `sys.path` (the scripts there import it as
  `harness` too: the same module if they were first).
  """
  init = HARNESS / "__init__.py"
  loaded = sys.modules.get("harness")
  if loaded is not None and pathlib.Path(loaded.__file__).resolve() == init:
    return loaded
  if not init.is_file():
    return None
  spec = importlib.util.spec_from_file_location("harness", init, submodule_search_locations=[str(HARNESS)])
  module = importlib.util.module_from_spec(spec)
  sys.modules["harness"] = module
  try:
    spec.loader.exec_module(module)
  except BaseException:
    del sys.modules["harness"]
    raise
  return module


def add_arguments(parser):
  """Adds the harness's options to an `argparse` (sub)parser; without a checkout, it takes any and `run` explains."""
  found = harness()
  if found is not None:
    found.add_arguments(parser)
    return
  parser.formatter_class = argparse.RawDescriptionHelpFormatter
  parser.description = f"{HELP}\n\n{MISSING}"
  parser.set_defaults(any_arguments=True)


def run(args):
  """Runs the harness from parsed arguments (its exit status), or says where to get it (exit status 1)."""
  found = harness()
  if found is None:
    print(f"python -m tfp_hessian bench: {MISSING}", file=sys.stderr)
    return 1
  return found.run(args)
