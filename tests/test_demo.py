"""The demo, in process and as `python -m tfp_hessian demo`: it runs, agrees with autodiff and exits 0."""

import os
import re
import subprocess
import sys

import numpy as np
import pytest

from tfp_hessian import __main__ as cli
from tfp_hessian import demo

SMALL = ["--dim", "4", "--num-points", "3", "--seed", "1", "--repeats", "2", "--no-figure"]
AGREEMENT = re.compile(r"max relative disagreement (\S+) \(tolerance 1e-08\): (OK|FAILED)")


def _agreement(output):
  match = AGREEMENT.search(output)
  assert match is not None, f"no agreement line in the demo's output:\n{output}"
  return float(match.group(1)), match.group(2)


def test_main_prints_report_and_fails_on_disagreement(monkeypatch, capsys, tmp_path):
  """One demo run through the command line: its report (the stiff and sloppy directions of every point, the
  ladder figure written where asked), and the `DemoResult` behind it. It runs with a tolerance no disagreement
  passes, so that it also shows the verdict failing and the exit status 1; `test_module_command_line` runs the
  demo as users do, at the real tolerance."""
  monkeypatch.setattr(demo, "TOLERANCE", -1.0)
  results = []
  run_demo = demo.run_demo
  monkeypatch.setattr(demo, "run_demo", lambda **kwargs: results.append(run_demo(**kwargs)) or results[-1])
  path = tmp_path / "ladder.png"
  status = cli.main(["demo"] + [arg for arg in SMALL if arg != "--no-figure"] + ["--figure", str(path)])
  output = capsys.readouterr().out
  assert status == 1
  assert re.search(r"max relative disagreement \S+ \(tolerance -1e\+00\): FAILED", output), output
  assert "stiff -> sloppy" in output
  assert "median of 2 calls" in output
  assert "stiff and sloppy directions per point" in output
  assert sum(line.startswith("  z[") for line in output.splitlines()) == 3
  assert f"eigenvalue ladder of all 3 points written to {path}" in output
  assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
  [result] = results
  assert not result.ok
  assert len(result.disagreement) == 4
  assert max(result.disagreement.values()) <= 1e-8  # the real tolerance
  assert result.eigenvalues.shape == (4,)
  assert result.spectrum.eigenvalues.shape == (3, 4)
  np.testing.assert_array_equal(result.eigenvalues, result.spectrum.eigenvalues[0])
  np.testing.assert_array_equal(np.abs(result.eigenvalues), np.sort(np.abs(result.eigenvalues))[::-1])
  assert list(result.timings) == ["ours, tf.function", "ours, eager", "tf.hessians, tf.function",
                                  "nested tapes, tf.function", "log_prob alone, tf.function"]
  assert all(seconds > 0 for seconds in result.timings.values())


def test_main_requires_a_command():
  with pytest.raises(SystemExit) as raised:
    cli.main([])
  assert raised.value.code == 2


def test_demo_rejects_dim_below_two():
  with pytest.raises(ValueError, match="`dim` must be at least 2; got 1"):
    cli.main(["demo", "--dim", "1"])


def test_module_command_line(tmp_path):
  """`python -m tfp_hessian demo` in a fresh process: it agrees with autodiff, exits 0 and, with matplotlib
  installed (the test extra has it), writes its figure without being asked."""
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
  args = [arg for arg in SMALL if arg != "--no-figure"]
  completed = subprocess.run([sys.executable, "-m", "tfp_hessian", "demo"] + args, capture_output=True,
                             text=True, env=env, cwd=tmp_path, timeout=300, check=False)
  assert completed.returncode == 0, completed.stdout + completed.stderr
  disagreement, verdict = _agreement(completed.stdout)
  assert disagreement <= 1e-8
  assert verdict == "OK"
  assert (tmp_path / demo.DEFAULT_FIGURE).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
