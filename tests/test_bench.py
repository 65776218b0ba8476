"""The benchmark harness: structure of its report, agreement of every method with ours, failures reported.

Never timing: the machine is shared, so only what a run reports is asserted, not how fast anything was.
"""

import argparse
import json
import math
import pathlib
import shlex

import numpy as np
import pytest
import tensorflow as tf

from tfp_hessian import __main__ as cli

import harness  # benchmarks/harness/ (tests/conftest.py puts benchmarks/ on sys.path)

# D = 2, the smallest: a RealNVP masks one coordinate, a MADE has one input that conditions the other.
TINY = dict(dims=(2, 3), dtypes=("float64",), num_points=(3,), repeats=2, time_budget=0.1)
RESULT_KEYS = {"status", "first_call_s", "median_ms", "q1_ms", "q3_ms", "min_ms", "max_ms", "calls",
               "points_per_s", "peak_rss_delta_mib", "ratio_to_log_prob", "ratio_to_ours"}
JAX_PYTHON = pathlib.Path(harness.__file__).resolve().parents[1] / "jax_peer" / ".venv" / "bin" / "python"


def _check_report(report, flows, dims, dtypes, methods, num_points=(3,)):
  assert report["schema"] == harness.SCHEMA
  assert {"cpu", "cores"} <= set(report["machine"])
  assert {"tensorflow", "tensorflow_probability", "tfp_hessian"} <= set(report["versions"])
  cells = [(c["flow"], c["dim"], c["dtype"], c["num_points"]) for c in report["cells"]]
  assert sorted(cells) == sorted((f, d, t, n) for f in flows for d in dims for t in dtypes for n in num_points)
  for cell in report["cells"]:
    results = cell["results"]
    assert list(results) == methods, cell
    assert isinstance(cell["execution"]["xla"], bool) and cell["execution"]["reason"], cell["execution"]
    assert cell["command"].startswith(f"python -m tfp_hessian bench --flow {cell['flow']} --dim {cell['dim']} "
                                      f"--dtype {cell['dtype']} --num-points {cell['num_points']}")
    for method, result in results.items():
      assert result["status"] == "ok", (cell["flow"], cell["dim"], method, result["status"])
      assert RESULT_KEYS <= set(result), (method, sorted(result))
      assert result["q1_ms"] <= result["median_ms"] <= result["q3_ms"]
      assert math.isclose(result["points_per_s"], cell["num_points"] / result["median_ms"] * 1e3)
      if method != "log_prob":
        assert result["agrees"], (cell["flow"], cell["dim"], method, result["max_rel_error"])
        assert result["max_rel_error"] <= harness.TOLERANCE[cell["dtype"]]
    assert results["ours"]["max_rel_error"] == 0
    assert math.isclose(results["ours"]["ratio_to_ours"], 1)
  assert {(e["flow"], e["dtype"], e["num_points"], e["method"]) for e in report["exponents"]} == (
      {(f, t, n, m) for f in flows for t in dtypes for n in num_points for m in methods} if len(dims) > 1 else set())
  targets = {(row["issue"], row["target"]) for row in report["targets"]}
  if min(num_points) <= harness.FEW_POINTS:
    assert (4, "first call < 3 s") in targets and (4, "within 3x of log_prob (D ≤ 32)") in targets


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("name", sorted(harness.FLOWS))
def test_build_flow(name, dtype):
  flow = harness.build_flow(name, 6, dtype)
  assert flow.distribution.dtype == tf.as_dtype(dtype)
  assert flow.distribution.event_shape == [6]
  z, kwargs = harness.sample_points(flow, 3, seed=1)
  assert z.shape == [3, 6]
  assert np.all(np.isfinite(flow.distribution.log_prob(z, **kwargs).numpy()))
  if name in harness.EXAMPLE_FLOWS:
    assert flow.layers is None and flow.base is None  # no recipe: no peer can rebuild it
    assert bool(kwargs) == (name == "conditional_maf")
    return
  assert not kwargs
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


@pytest.mark.parametrize("name", sorted(harness.FLOWS))
def test_float64_twin_has_the_float32_weights(name):
  """`weights_dtype=tf.float32` (and any example flow) builds the float32 flow exactly, computed in float64: every
  weight the float32 number, so its float64 `log_prob` at the float32 flow's points is the float32 one's truth."""
  flow32 = harness.build_flow(name, 6, tf.float32)
  twin = harness.build_flow(name, 6, tf.float64, weights_dtype=tf.float32)
  variables32, variables64 = flow32.distribution.trainable_variables, twin.distribution.trainable_variables
  assert len(variables32) == len(variables64)
  for v32, v64 in zip(variables32, variables64):
    np.testing.assert_array_equal(v64.numpy(), v32.numpy().astype(np.float64))
  constants = lambda flow: [np.asarray(t) for b in flow.distribution.bijector.bijectors
                            for t in tf.nest.flatten(b.parameters) if isinstance(t, tf.Tensor)]
  for c32, c64 in zip(constants(flow32), constants(twin), strict=True):
    np.testing.assert_array_equal(c64, c32.astype(c64.dtype))
  z32, kwargs32 = harness.sample_points(flow32, 8)
  kwargs64 = tf.nest.map_structure(lambda t: tf.cast(t, tf.float64), kwargs32)
  log_prob32 = flow32.distribution.log_prob(z32, **kwargs32).numpy()
  log_prob64 = twin.distribution.log_prob(tf.cast(z32, tf.float64), **kwargs64).numpy()
  # The same function to float32's rounding, which at the conditional flow's far tail points (|z| ~ 50) reaches
  # 1e-4 of log q; another draw of weights differs by O(1).
  np.testing.assert_allclose(log_prob32, log_prob64, rtol=1e-3)
  if name in harness.STOCK_FLOWS:  # without it, a stock flow's float64 weights are drawn for float64
    other = harness.build_flow(name, 6, tf.float64).distribution.trainable_variables or constants(
        harness.build_flow(name, 6, tf.float64))
    assert not np.array_equal(np.asarray(other[0]), np.asarray((variables64 or constants(twin))[0]))


def test_float32_accuracy_measures_every_method_against_the_twin():
  """`benchmarks/float32_accuracy.py` on a small cell: the float64 twin's Hessians (ours and the tapes') agree in
  float64, every float32 method is within float32 rounding of them, and the tapes meet their own criterion."""
  import float32_accuracy  # pylint: disable=import-outside-toplevel  (benchmarks/, on sys.path by conftest)
  methods = ["tapes", "tapes_xla", "ours", "ours_graph", "ours_compiled"]
  cell = float32_accuracy.measure("maf", 3, 5, methods)
  assert cell["twin"]["ours_float64_vs_truth"] < 1e-12
  assert set(cell["methods"]) == set(methods)
  for name, errors in cell["methods"].items():
    assert 0 < errors["median"] <= errors["p99"] <= errors["max"] < 1e-5, (name, errors)
  assert cell["methods"]["tapes"]["over_criterion"] == 0 and cell["methods"]["tapes_xla"]["over_criterion_xla"] == 0


def test_made_kernels_are_masked():
  # A MADE whose first kernel lets input i reach its own outputs would not be autoregressive.
  made = harness.build_flow("maf", 6, "float64").distribution.bijector.bijectors[0].parameters[
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


@pytest.mark.slow  # ~100 s of CI: every flow builds and agrees (test_build_flow), the CLI tests run the report
def test_run_bench_every_stock_flow():
  report = harness.run_bench(flows=tuple(harness.STOCK_FLOWS), methods=("tapes",), **TINY)
  _check_report(report, list(harness.STOCK_FLOWS), [2, 3], ["float64"], ["log_prob", "ours", "tapes"])
  text = harness.format_report(report)
  assert "growth with D" in text and "targets (issue #4" in text
  assert "every method that ran agrees" in text


@pytest.mark.slow  # ~17 s; the harness's cells (conditional flows are checked against the references elsewhere)
def test_cli_few_and_many_points_of_a_conditional_flow(tmp_path, capsys):
  # Issue #13's cells at a small D: N = 4 (latency) and N = 1024 (throughput), the condition passed to every
  # method; the JAX peer, which rebuilds only the stock flows, skipped with its reason.
  path = tmp_path / "bench.json"
  status = cli.main(["bench", "--quick", "--flow", "conditional_maf", "--dim", "2", "--num-points", "1024", "4",
                     "--methods", "tapes", "--peers", "jax", "--jax-python", str(tmp_path / "none"),
                     "--json", str(path)])
  output = capsys.readouterr().out
  assert status == 0
  report = json.loads(path.read_text())
  for cell in report["cells"]:
    assert cell["results"].pop("jax")["status"] == (
        "skipped: the jax peer rebuilds only the stock flows (elementwise_affine, realnvp, maf)")
  _check_report(report, ["conditional_maf"], [2], ["float64"], ["log_prob", "ours", "tapes"], num_points=(4, 1024))
  assert report["settings"]["num_points"] == [4, 1024]
  assert "[1/2] conditional_maf D=2 float64 N=4" in output and "[2/2] conditional_maf D=2 float64 N=1024" in output
  for cell in report["cells"]:
    # Every figure with the command that measures it again, and which execution the default call chose.
    assert f"$ {cell['command']}" in output
    assert f"  default call: {cell['execution']['reason']}" in output
    parser = argparse.ArgumentParser()
    harness.add_arguments(parser)
    parsed = parser.parse_args(shlex.split(cell["command"])[4:])
    assert (parsed.flows, parsed.dims, parsed.dtypes, parsed.num_points, parsed.peers) == (
        [cell["flow"]], [cell["dim"]], [cell["dtype"]], [cell["num_points"]], ["jax"])
    assert (parsed.repeats, parsed.time_budget) == (harness.QUICK["repeats"], harness.QUICK["time_budget"])
    assert parsed.methods == ["log_prob", "ours", "tapes"]
  rows = {(r["num_points"], r["target"]) for r in report["targets"] if r["issue"] == 13}
  assert rows == {(4, "within 1.5x of log_prob (D ≤ 16, N ≤ 16)"),
                  (1024, "ahead of every alternative (D ≤ 16, N ≥ 1024)")}
  assert output.index("targets (issue #13") < output.index("targets (issue #4")


def _cell(flow, dim, num_points, ms, dtype="float32"):
  """A cell of a report whose methods took `ms` (method → median ms, None: skipped)."""
  results = {m: (dict(status="ok", median_ms=v, first_call_s=1.) if v is not None else dict(status="skipped: x"))
             for m, v in ms.items()}
  return dict(flow=flow, dim=dim, dtype=dtype, num_points=num_points, command="cmd", results=results)


def test_issue13_targets():
  cells = [
      _cell("maf", 64, 1024, dict(log_prob=10., ours=100., tapes=300., jax=190.)),
      _cell("maf", 128, 16, dict(log_prob=2., ours=10., fwd_rev_xla=10., tf_hessians=900.)),
      _cell("research_flow", 64, 16, dict(log_prob=2., ours=10., tapes=30.)),  # D ≥ 64: stock flows only
      _cell("realnvp", 8, 16, dict(log_prob=2., ours=3., tapes=1.)),
      _cell("realnvp", 8, 1024, dict(log_prob=2., ours=30., tapes=30., ours_xla=1.)),  # ours + XLA is ours
      _cell("realnvp", 32, 1024, dict(log_prob=2., ours=30., tapes=31.)),  # no issue-13 target at D = 32
      _cell("elementwise_affine", 4, 1024, dict(log_prob=2., ours=30., tapes=None)),
  ]
  rows = [r for r in harness.summaries.targets(cells) if r["issue"] == 13]
  got = [(r["flow"], r["dim"], r["num_points"], r["target"].split(" (")[0], r["value"], r["met"], r["detail"])
         for r in rows]
  assert got == [
      ("maf", 64, 1024, "≥2x faster than the fastest alternative", 1.9, False, "fastest alternative: jax"),
      ("maf", 128, 16, "at least as fast as the fastest alternative", 1., True, "fastest alternative: fwd_rev_xla"),
      ("realnvp", 8, 16, "within 1.5x of log_prob", 1.5, True, ""),
      ("realnvp", 8, 1024, "ahead of every alternative", 1., False, "fastest alternative: tapes"),
      ("elementwise_affine", 4, 1024, "ahead of every alternative", None, None, "no alternative timed"),
  ]
  issue4 = {(r["flow"], r["dim"], r["num_points"]) for r in harness.summaries.targets(cells) if r["issue"] == 4}
  assert issue4 == {("maf", 128, 16), ("research_flow", 64, 16), ("realnvp", 8, 16)}  # N ≤ 16 only


def test_predictions_from_smaller_cells():
  seconds = lambda s: dict(status="ok", median_ms=1e3 * s)  # noqa: E731
  previous = {(16, 16): seconds(0.1), (32, 16): seconds(1.6), (64, 16): seconds(2.)}
  # From the smaller D at the same N, at least as D³; from fewer points at the same D, as N^points_power.
  assert math.isclose(harness.measurement.predicted_seconds(previous, 128, 16), 16.)
  assert math.isclose(harness.measurement.predicted_seconds(previous, 64, 1024), 128.)
  assert math.isclose(harness.measurement.predicted_seconds(previous, 64, 32, points_power=2), 8.)
  assert harness.measurement.predicted_seconds(previous, 8, 16) is None


def test_cli_writes_json(tmp_path, capsys):
  path = tmp_path / "bench.json"
  # The cheapest stock flow: the harness over RealNVP and MAF runs in the full suite (`slow`).
  status = cli.main(["bench", "--quick", "--flow", "elementwise_affine", "--dtype", "float32", "--dim", "2", "3",
                     "--methods", "tf_hessians", "--json", str(path)])
  output = capsys.readouterr().out
  assert status == 0
  assert ("[1/2] elementwise_affine D=2 float32 N=4" in output
          and "[2/2] elementwise_affine D=3 float32 N=4" in output)
  report = json.loads(path.read_text())
  _check_report(report, ["elementwise_affine"], [2, 3], ["float32"], ["log_prob", "ours", "tf_hessians"],
                num_points=(4,))
  assert report["settings"]["num_points"] == list(harness.QUICK["num_points"])


@pytest.mark.slow  # ~20 s; the harness's alternative, not the package: in the full suite (CI's 20 minutes)
def test_forward_over_reverse_on_realnvp(monkeypatch):
  # Traced for XLA, RealNVP's tf.concat has an XlaDynamicUpdateSlice in its second derivative, whose gradient
  # TensorFlow lacks ("gradient registry has no entry"). It failed only where fwd_rev_xla traced its JVPs first:
  # TensorFlow caches them per op and shapes, and run_bench runs fwd_rev first. So fwd_rev_xla on its own, first,
  # at a size no other test runs forward-over-reverse at; both agree with ours (float64: 1e-8). One coupling layer
  # (the bench's RealNVP has 4): forward-over-reverse traces a JVP function per op, 15 s and more per method here.
  monkeypatch.setattr(harness.flows, "NUM_LAYERS", 1)
  for methods in (("fwd_rev_xla",), ("fwd_rev",)):
    report = harness.run_bench(flows=("realnvp",), methods=methods, **dict(TINY, dims=(4,), num_points=(2,)))
    _check_report(report, ["realnvp"], [4], ["float64"], ["log_prob", "ours", *methods], num_points=(2,))
    assert report["cells"][0]["num_bijectors"] == 1


@pytest.mark.slow  # the harness's bookkeeping, not the package: in the full suite
def test_a_failing_method_is_reported_and_the_run_goes_on(monkeypatch):
  def broken(flow, kwargs):
    def fn(z):
      raise LookupError("No gradient defined for operation XlaDynamicUpdateSlice")
    return fn

  monkeypatch.setitem(harness.METHODS, "broken", harness.Method("broken", broken))
  report = harness.run_bench(flows=("elementwise_affine",), methods=("broken",), **TINY)
  for cell in report["cells"]:
    assert cell["results"]["broken"]["status"].startswith("failed: LookupError: No gradient defined")
    assert cell["results"]["ours"]["status"] == "ok"
  assert "failed: LookupError" in harness.format_report(report)


@pytest.mark.slow  # the harness's bookkeeping, not the package: in the full suite
@pytest.mark.parametrize("cells, smaller", [(dict(dims=(3, 4)), "a smaller D"),
                                             (dict(dims=(3,), num_points=(3, 5)), "fewer points")])
def test_methods_over_budget_are_skipped(cells, smaller):
  report = harness.run_bench(flows=("elementwise_affine",), methods=("tapes",), budget=0., **dict(TINY, **cells))
  first, second = report["cells"]
  # In the first cell a method runs once to be measured; it exceeds a zero budget and is not timed further.
  assert first["results"]["tapes"]["status"].startswith("skipped: > budget")
  assert second["results"]["tapes"]["status"] == f"skipped: > budget at {smaller}"
  assert second["results"]["ours"]["status"] == "ok"  # ours and log_prob always run.
  assert "skipped: > budget" in harness.format_report(report)


def test_unknown_names_are_refused():
  with pytest.raises(ValueError, match="unknown flows"):
    harness.run_bench(flows=("glow",))
  with pytest.raises(ValueError, match="`dims` must be at least 2"):
    harness.run_bench(dims=(1,))


def test_a_missing_peer_is_reported(tmp_path):
  report = harness.run_bench(flows=("elementwise_affine",), methods=(), peers=("jax",), jax_python=tmp_path / "none",
                           **dict(TINY, dims=(2,)))
  assert report["cells"][0]["results"]["jax"]["status"].startswith("failed: PeerError: no JAX environment")


@pytest.mark.slow
def test_quick_cli_runs_every_method(tmp_path, capsys):
  path = tmp_path / "bench.json"
  assert cli.main(["bench", "--quick", "--flow", *harness.FLOWS, "--json", str(path)]) == 0
  report = json.loads(path.read_text())
  _check_report(report, list(harness.FLOWS), list(harness.QUICK["dims"]), list(harness.QUICK["dtypes"]),
                list(harness.METHODS), num_points=harness.QUICK["num_points"])
  assert "agreement with ours: every method that ran agrees" in capsys.readouterr().out


@pytest.mark.skipif(not JAX_PYTHON.exists(), reason="no JAX peer venv: run benchmarks/jax_peer/setup.sh")
def test_jax_peer_agrees():
  report = harness.run_bench(flows=tuple(harness.STOCK_FLOWS), methods=(), peers=("jax",),
                           **dict(TINY, dtypes=("float64", "float32")))
  _check_report(report, list(harness.STOCK_FLOWS), [2, 3], ["float64", "float32"], ["log_prob", "ours", "jax"])
  assert report["versions"]["jax_peer_jax"]
