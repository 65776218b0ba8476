"""The benchmark harness: structure of its report, agreement of every method with ours, failures reported.

Never timing: the machine is shared, so only what a run reports is asserted, not how fast anything was.
"""

import json
import math
import pathlib

import numpy as np
import pytest
import tensorflow as tf

from tfp_hessian import __main__ as cli
from tfp_hessian import bench

TINY = dict(dims=(3, 4), dtypes=("float64",), num_points=3, repeats=2, time_budget=0.1)
RESULT_KEYS = {"status", "first_call_s", "median_ms", "q1_ms", "q3_ms", "min_ms", "max_ms", "calls",
               "peak_rss_delta_mib", "ratio_to_log_prob", "ratio_to_ours"}
JAX_PYTHON = pathlib.Path(bench.__file__).resolve().parents[1] / "benchmarks" / "jax_peer" / ".venv" / "bin" / "python"


def _check_report(report, flows, dims, dtypes, methods):
  assert report["schema"] == bench.SCHEMA
  assert {"cpu", "cores"} <= set(report["machine"])
  assert {"tensorflow", "tensorflow_probability", "tfp_hessian"} <= set(report["versions"])
  cells = [(c["flow"], c["dim"], c["dtype"]) for c in report["cells"]]
  assert sorted(cells) == sorted((f, d, t) for f in flows for d in dims for t in dtypes)
  for cell in report["cells"]:
    results = cell["results"]
    assert list(results) == methods, cell
    for method, result in results.items():
      assert result["status"] == "ok", (cell["flow"], cell["dim"], method, result["status"])
      assert RESULT_KEYS <= set(result), (method, sorted(result))
      assert result["q1_ms"] <= result["median_ms"] <= result["q3_ms"]
      if method != "log_prob":
        assert result["agrees"], (cell["flow"], cell["dim"], method, result["max_rel_error"])
        assert result["max_rel_error"] <= bench.TOLERANCE[cell["dtype"]]
    assert results["ours"]["max_rel_error"] == 0
    assert math.isclose(results["ours"]["ratio_to_ours"], 1)
  assert {(e["flow"], e["dtype"], e["method"]) for e in report["exponents"]} == {
      (f, t, m) for f in flows for t in dtypes for m in methods}
  targets = {row["target"] for row in report["targets"]}
  assert "first call < 3 s" in targets and "within 3x of log_prob (D ≤ 32)" in targets


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("name", sorted(bench.FLOWS))
def test_build_flow(name, dtype):
  flow = bench.build_flow(name, 6, dtype)
  assert flow.distribution.dtype == tf.as_dtype(dtype)
  assert flow.distribution.event_shape == [6]
  z = flow.distribution.sample(3, seed=(1, 2))
  assert np.all(np.isfinite(flow.distribution.log_prob(z).numpy()))
  kinds = [layer["kind"] for layer in flow.layers]
  expected = {"elementwise_affine": ["scale_tril", "shift", "sinh_arcsinh"] * 4,
              "realnvp": ["real_nvp", "permute"] * 3 + ["real_nvp"],
              "maf": ["maf", "permute"] * 3 + ["maf"]}[name]
  assert kinds == expected
  for layer in flow.layers:
    for value in layer.values():
      for array in (value if isinstance(value, list) else [value]):
        if isinstance(array, np.ndarray) and array.dtype.kind == "f":
          assert array.dtype == np.dtype(dtype)


def test_made_kernels_are_masked():
  # A MADE whose first kernel lets input i reach its own outputs would not be autoregressive.
  made = bench.build_flow("maf", 6, "float64").distribution.bijector.bijectors[0].parameters[
      "shift_and_log_scale_fn"]
  y = tf.constant(np.random.default_rng(0).normal(size=(1, 6)))
  with tf.GradientTape() as tape:
    tape.watch(y)
    out = made(y)  # [1, 6, 2]
  jacobian = tape.jacobian(out, y).numpy()[0, :, :, 0, :]  # [6 outputs, 2 params, 6 inputs]
  order = made._input_order - 1  # pylint: disable=protected-access
  for i in range(6):
    assert np.all(jacobian[order == i][..., order >= i] == 0)
    assert np.any(jacobian[order == i][..., order < i] != 0) or i == 0


def test_run_bench_every_flow():
  report = bench.run_bench(flows=tuple(bench.FLOWS), methods=("tapes",), **TINY)
  _check_report(report, list(bench.FLOWS), [3, 4], ["float64"], ["log_prob", "ours", "tapes"])
  text = bench.format_report(report)
  assert "growth with D" in text and "targets (issue #4)" in text
  assert "every method that ran agrees" in text


def test_cli_writes_json(tmp_path, capsys):
  path = tmp_path / "bench.json"
  status = cli.main(["bench", "--quick", "--flow", "realnvp", "--dtype", "float32", "--dim", "3", "5",
                     "--methods", "tf_hessians", "--json", str(path)])
  output = capsys.readouterr().out
  assert status == 0
  assert "[1/2] realnvp D=3 float32" in output and "[2/2] realnvp D=5 float32" in output
  report = json.loads(path.read_text())
  _check_report(report, ["realnvp"], [3, 5], ["float32"], ["log_prob", "ours", "tf_hessians"])
  assert report["settings"]["num_points"] == bench.QUICK["num_points"]


def test_a_failing_method_is_reported_and_the_run_goes_on(monkeypatch):
  def broken(flow):
    def fn(z):
      raise LookupError("No gradient defined for operation XlaDynamicUpdateSlice")
    return fn

  monkeypatch.setitem(bench.METHODS, "broken", bench.Method("broken", broken))
  report = bench.run_bench(flows=("elementwise_affine",), methods=("broken",), **TINY)
  for cell in report["cells"]:
    assert cell["results"]["broken"]["status"].startswith("failed: LookupError: No gradient defined")
    assert cell["results"]["ours"]["status"] == "ok"
  assert "failed: LookupError" in bench.format_report(report)


def test_methods_over_budget_are_skipped():
  report = bench.run_bench(flows=("elementwise_affine",), methods=("tapes", "tf_hessians"), budget=0., **TINY)
  first, second = report["cells"]
  # At the smallest D a method runs once to be measured; it exceeds a zero budget and is not timed further.
  assert first["results"]["tapes"]["status"].startswith("skipped: > budget")
  assert second["results"]["tapes"]["status"] == "skipped: > budget at a smaller D"
  assert second["results"]["ours"]["status"] == "ok"  # ours and log_prob always run.
  assert "skipped: > budget" in bench.format_report(report)


def test_unknown_names_are_refused():
  with pytest.raises(ValueError, match="unknown flows"):
    bench.run_bench(flows=("glow",))
  with pytest.raises(ValueError, match="`dims` must be at least 2"):
    bench.run_bench(dims=(1,))


def test_a_missing_peer_is_reported(tmp_path):
  report = bench.run_bench(flows=("maf",), methods=(), peers=("jax",), jax_python=tmp_path / "none",
                           **dict(TINY, dims=(3,)))
  assert report["cells"][0]["results"]["jax"]["status"].startswith("failed: PeerError: no JAX environment")


@pytest.mark.slow
def test_quick_cli_runs_every_method(tmp_path, capsys):
  path = tmp_path / "bench.json"
  assert cli.main(["bench", "--quick", "--json", str(path)]) == 0
  report = json.loads(path.read_text())
  _check_report(report, list(bench.FLOWS), list(bench.QUICK["dims"]), list(bench.QUICK["dtypes"]),
                list(bench.METHODS))
  assert "agreement with ours: every method that ran agrees" in capsys.readouterr().out


@pytest.mark.skipif(not JAX_PYTHON.exists(), reason="no JAX peer venv: run benchmarks/jax_peer/setup.sh")
def test_jax_peer_agrees():
  report = bench.run_bench(flows=tuple(bench.FLOWS), methods=(), peers=("jax",),
                           **dict(TINY, dtypes=("float64", "float32")))
  _check_report(report, list(bench.FLOWS), [3, 4], ["float64", "float32"], ["log_prob", "ours", "jax"])
  assert report["versions"]["jax_peer_jax"]
