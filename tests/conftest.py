import os
import pathlib
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

# The benchmark harness lives in the repository, not the package: tests import it as `harness`, as the scripts
# in benchmarks/ do.
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "benchmarks"))

# The files whose tests take half a minute or more each (a property search, subprocesses, notebooks, the
# benchmark CLI) are run first: pytest-xdist hands tests out in collection order, so this way the workers finish
# together instead of one of them running a long test alone at the end.
_LONG_FIRST = ["test_properties.py", "test_distribute.py", "test_notebooks.py", "test_bench.py", "test_demo.py"]


def pytest_collection_modifyitems(items):
  rank = {name: position for position, name in enumerate(_LONG_FIRST)}
  items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # a stable sort: the order is kept otherwise
