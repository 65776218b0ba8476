"""Every notebook in notebooks/ runs top to bottom, and is committed executed.

Each notebook is run in a fresh kernel of this Python with `TFP_HESSIAN_NOTEBOOK_SMALL=1`, which every notebook
reads to shrink its settings (fewer training steps, dimensions, timing repeats) so that it runs in seconds. A
cell that raises fails the test with the cell's traceback. The committed files themselves keep the outputs of
a run with full settings, so that they read on GitHub: that is checked too, without running anything.
"""

import json
import pathlib
import sys

import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOK_DIR = pathlib.Path(__file__).resolve().parent.parent / "notebooks"
NOTEBOOKS = sorted(NOTEBOOK_DIR.glob("*.ipynb"))
SMALL = "TFP_HESSIAN_NOTEBOOK_SMALL"
CELL_TIMEOUT = 300  # seconds per cell; a small run takes seconds
MAX_BYTES = 1_000_000  # committed size, outputs included


def test_there_are_notebooks():
  assert NOTEBOOKS, f"no notebooks in {NOTEBOOK_DIR}"


def _this_interpreters_kernel(directory):
  """A `python3` kernel spec running `sys.executable`, in a directory to put first on JUPYTER_PATH.

  Any other `python3` spec (a user's, in ~/.local/share/jupyter) might run another Python without the package.
  """
  spec = directory / "kernels" / "python3"
  spec.mkdir(parents=True)
  (spec / "kernel.json").write_text(json.dumps({
      "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
      "display_name": "Python 3", "language": "python"}), encoding="utf-8")
  return str(directory)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda path: path.name)
def test_notebook_runs_with_small_settings(path, monkeypatch, tmp_path):
  monkeypatch.setenv(SMALL, "1")
  monkeypatch.setenv("TF_CPP_MIN_LOG_LEVEL", "3")
  monkeypatch.setenv("JUPYTER_PATH", _this_interpreters_kernel(tmp_path / "jupyter"))
  notebook = nbformat.read(path, as_version=4)
  # The kernel inherits this environment.
  client = NotebookClient(notebook, timeout=CELL_TIMEOUT, kernel_name="python3",
                          resources={"metadata": {"path": str(NOTEBOOK_DIR)}})
  client.execute()


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda path: path.name)
def test_notebook_is_committed_executed(path):
  size = path.stat().st_size
  assert size <= MAX_BYTES, f"{path.name} is {size} bytes (> {MAX_BYTES}): shrink its figures or outputs"
  notebook = nbformat.read(path, as_version=4)
  nbformat.validate(notebook)
  code = [cell for cell in notebook.cells if cell.cell_type == "code"]
  unexecuted = [k for k, cell in enumerate(code) if cell.get("execution_count") is None]
  assert not unexecuted, f"{path.name}: code cells {unexecuted} (0-based, code cells only) have no outputs run"
  counts = [cell.execution_count for cell in code]
  assert counts == list(range(1, len(code) + 1)), f"{path.name}: not run top to bottom in one go: {counts}"
  errors = [output.get("ename") for cell in code for output in cell.get("outputs", [])
            if output.get("output_type") == "error"]
  assert not errors, f"{path.name}: committed with errors {errors}"
  images = [output for cell in code for output in cell.get("outputs", []) if "image/png" in output.get("data", {})]
  assert images, f"{path.name}: committed without figures"
