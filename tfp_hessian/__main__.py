"""Command line of tfp_hessian: `python -m tfp_hessian COMMAND [options]`.

Commands:
  demo   Hessians of a random flow, checked against autodiff, with its spectrum and timings (`demo.py`).
  bench  `log_prob_hessian` timed against tf.hessians, nested tapes, forward-over-reverse and JAX (`bench.py`:
         the harness of a source checkout, `benchmarks/harness/`).
"""

import argparse
import sys

from tfp_hessian import bench, demo

# Every subcommand is a module with `HELP` (one line), `add_arguments(parser)` and `run(args) -> exit status`.
# A new command (`bench`) is one more entry here.
COMMANDS = {
    "demo": demo,
    "bench": bench,
}


def main(argv=None):
  """Parses `argv` (default: `sys.argv[1:]`), runs the chosen command and returns its exit status."""
  parser = argparse.ArgumentParser(
      prog="python -m tfp_hessian",
      description="Exact Hessians of normalizing-flow log densities for TensorFlow Probability.")
  subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
  for name, command in COMMANDS.items():
    subparser = subparsers.add_parser(name, help=command.HELP, description=command.HELP)
    command.add_arguments(subparser)
    subparser.set_defaults(run=command.run)
  args, unrecognized = parser.parse_known_args(argv)
  # A command that takes any arguments (`bench` without its harness) explains itself; the others refuse them.
  if unrecognized and not getattr(args, "any_arguments", False):
    parser.error(f"unrecognized arguments: {' '.join(unrecognized)}")
  return args.run(args)


if __name__ == "__main__":
  sys.exit(main())
