"""The README shows the commands CI runs and links docs/; README and docs/ list every analytic bijector, and run."""

import pathlib
import re

from tfp_hessian import registry

ROOT = pathlib.Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text(encoding="utf-8")
DOCS = {path: path.read_text(encoding="utf-8") for path in sorted((ROOT / "docs").glob("*.md"))}
# The README first, then docs/ in name order: every page whose examples and claims the tests check.
PAGES = {ROOT / "README.md": README, **DOCS}
DEMO_COMMAND = "pip install -e . && python -m tfp_hessian demo"


def _ci_test_command():
  """The `TEST_COMMAND='...'` line of `.ci/run`, the one source of the test command."""
  match = re.search(r"^TEST_COMMAND='([^']+)'$", (ROOT / ".ci" / "run").read_text(encoding="utf-8"), re.M)
  assert match is not None, ".ci/run has no TEST_COMMAND='...' line"
  return match.group(1)


def _code_blocks(text=README):
  return re.findall(r"^```[a-z]*\n(.*?)^```$", text, re.M | re.S)


def _python_blocks():
  """Every ```python block of the README and docs/, with the page it is on."""
  return [(path, block) for path, text in PAGES.items()
          for block in re.findall(r"^```python\n(.*?)^```$", text, re.M | re.S)]


def _links(text):
  """The targets of a page's Markdown links, without `#anchors`."""
  return [target.split("#", 1)[0] for target in re.findall(r"\]\(([^)\s]+)\)", text)]


def test_readme_shows_the_ci_test_command_verbatim():
  command = _ci_test_command()
  assert command == 'pip install -e ".[test]" && python -m pytest'
  assert command in [block.strip() for block in _code_blocks()]


def test_demo_command_comes_first():
  blocks = [block.strip() for block in _code_blocks()]
  assert blocks[0] == DEMO_COMMAND
  assert blocks[1] == _ci_test_command()


def test_docs_list_every_analytic_bijector():
  sections = [text.split("## Which bijectors are analytic", 1)[1].split("\n## ", 1)[0]
              for text in PAGES.values() if "## Which bijectors are analytic" in text]
  assert len(sections) == 1, "exactly one page has the section '## Which bijectors are analytic'"
  missing = [name for name in registry.analytic_bijectors() if f"`{name}`" not in sections[0]]
  assert not missing, f"the analytic list (docs/bijectors.md) misses {missing}"


def test_readme_links_every_docs_page_and_every_link_resolves():
  """The README is the front page: it links every page of docs/, and no link of README or docs/ is broken."""
  linked = {(ROOT / target).resolve() for target in _links(README) if target.startswith("docs/")}
  assert linked, "the README links no page of docs/"
  unlinked = sorted(path.name for path in set(DOCS) - linked)
  assert not unlinked, f"docs/ pages the README does not link: {unlinked}"
  broken = [(path.relative_to(ROOT).as_posix(), target) for path, text in PAGES.items() for target in _links(text)
            if target and "://" not in target and not (path.parent / target).exists()]
  assert not broken, f"links to files that do not exist (page, target): {broken}"


def test_readme_example_runs():
  example = re.search(r"^```python\n(.*?)^```$", README, re.M | re.S).group(1)
  namespace = {}
  exec(compile(example, "README.md example", "exec"), namespace)  # pylint: disable=exec-used
  assert namespace["hessian"].shape == (5, 3, 3)
  assert namespace["second"].shape == (5, 3, 3, 3)


def test_examples_of_conditional_and_structured_flows_run():
  """The conditional-flow and named-parameters examples (self-contained blocks) run and give the stated shapes."""
  blocks = [(path, block) for path, block in _python_blocks()
            if "conditional_input" in block or "build_affine_surrogate_posterior" in block]
  assert len(blocks) == 2
  shapes = []
  for path, block in blocks:
    namespace = {}
    exec(compile(block, f"{path.relative_to(ROOT).as_posix()} example", "exec"), namespace)  # pylint: disable=exec-used
    shapes.append(tuple(namespace["hessian"].shape))
  assert shapes == [(5, 3, 3), (4, 4, 4)]
  assert namespace["stiffest"].shape == (4,)
