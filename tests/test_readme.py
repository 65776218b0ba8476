"""The README shows the commands CI runs, and lists every analytic bijector."""

import pathlib
import re

from tfp_hessian import registry

ROOT = pathlib.Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text(encoding="utf-8")
DEMO_COMMAND = "pip install -e . && python -m tfp_hessian demo"


def _ci_test_command():
  """The `TEST_COMMAND='...'` line of `.ci/run`, the one source of the test command."""
  match = re.search(r"^TEST_COMMAND='([^']+)'$", (ROOT / ".ci" / "run").read_text(encoding="utf-8"), re.M)
  assert match is not None, ".ci/run has no TEST_COMMAND='...' line"
  return match.group(1)


def _code_blocks():
  return re.findall(r"^```[a-z]*\n(.*?)^```$", README, re.M | re.S)


def test_readme_shows_the_ci_test_command_verbatim():
  command = _ci_test_command()
  assert command == 'pip install -e ".[test]" && python -m pytest'
  assert command in [block.strip() for block in _code_blocks()]


def test_demo_command_comes_first():
  blocks = [block.strip() for block in _code_blocks()]
  assert blocks[0] == DEMO_COMMAND
  assert blocks[1] == _ci_test_command()


def test_readme_lists_every_analytic_bijector():
  section = README.split("## Which bijectors are analytic", 1)[1].split("\n## ", 1)[0]
  missing = [name for name in registry.analytic_bijectors() if f"`{name}`" not in section]
  assert not missing, f"README's analytic list misses {missing}"


def test_readme_example_runs():
  example = re.search(r"^```python\n(.*?)^```$", README, re.M | re.S).group(1)
  namespace = {}
  exec(compile(example, "README.md example", "exec"), namespace)  # pylint: disable=exec-used
  assert namespace["hessian"].shape == (5, 3, 3)
  assert namespace["second"].shape == (5, 3, 3, 3)


def test_readme_examples_of_conditional_and_structured_flows_run():
  """The conditional-flow and named-parameters examples (self-contained blocks) run and give the stated shapes."""
  blocks = [block for block in re.findall(r"^```python\n(.*?)^```$", README, re.M | re.S)
            if "conditional_input" in block or "build_affine_surrogate_posterior" in block]
  assert len(blocks) == 2
  shapes = []
  for block in blocks:
    namespace = {}
    exec(compile(block, "README.md example", "exec"), namespace)  # pylint: disable=exec-used
    shapes.append(tuple(namespace["hessian"].shape))
  assert shapes == [(5, 3, 3), (4, 4, 4)]
  assert namespace["stiffest"].shape == (4,)
