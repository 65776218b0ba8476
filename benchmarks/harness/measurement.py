"""Measuring one cell (flow, D, dtype, N): first call, agreement with ours, peak RSS, interleaved timed calls.

`run_cell` takes runners, each with `first_call() -> (output, seconds)`, `warm_up() -> (seconds, peak RSS delta
in MiB)`, `timed_call() -> seconds` and `close()`: `TfRunner` for a TensorFlow method, `peer.JaxRunner` for the
JAX peer.
"""

import time

import numpy as np
import tensorflow as tf

from harness.methods import METHODS
from harness.peak_rss import PeakRss

__all__ = ["ALWAYS_RUN", "TOLERANCE", "TfRunner", "predicted_seconds", "reason", "run_cell"]

# Worst relative disagreement with ours that still counts as agreement, per dtype: the references round
# differently, and in float32 a 4-layer flow at D = 128 loses a few digits to conditioning.
TOLERANCE = {"float64": 1e-8, "float32": 1e-3}

# Methods exempt from the budget: the point of the benchmark and its yardstick.
ALWAYS_RUN = ("log_prob", "ours")


class TfRunner:
  """One TensorFlow method on one cell's points."""

  def __init__(self, fn, z):
    self._fn, self._z = fn, z

  def first_call(self):
    start = time.perf_counter()
    output = self._fn(self._z)
    output = output.numpy()
    return output, time.perf_counter() - start

  def timed_call(self):
    # A tf.function call on CPU returns when its outputs are computed; no copy to numpy is timed.
    start = time.perf_counter()
    self._fn(self._z)
    return time.perf_counter() - start

  def warm_up(self):
    """`(seconds of one call, peak RSS delta in MiB)`: untimed calls, under the RSS sampler."""
    with PeakRss() as peak:
      start = time.perf_counter()
      self._fn(self._z)
      seconds = time.perf_counter() - start
      while time.perf_counter() - start < 0.02:  # Short calls: a few more, so the sampler sees one.
        self._fn(self._z)
    return seconds, peak.delta_mib

  def close(self):
    pass



def _relative_error(hessian, expected):
  """`max_n max_ij |H_n - R_n|_ij / max_ij |R_n|_ij`; NaN if anything is not finite."""
  hessian, expected = np.asarray(hessian, np.float64), np.asarray(expected, np.float64)
  if hessian.shape != expected.shape:
    raise ValueError(f"Hessian of shape {hessian.shape}, expected {expected.shape}")
  if not (np.all(np.isfinite(hessian)) and np.all(np.isfinite(expected))):
    return float("nan")
  scale = np.max(np.abs(expected), axis=(-2, -1))
  return float(np.max(np.max(np.abs(hessian - expected), axis=(-2, -1)) / np.maximum(scale, np.finfo(float).tiny)))


def reason(error):
  text = " ".join(str(error).split())
  text = text if len(text) <= 160 else text[:157] + "..."
  return f"{type(error).__name__}: {text}"


def _statistics(seconds):
  ms = np.asarray(seconds) * 1e3
  q1, median, q3 = np.percentile(ms, [25, 50, 75])
  return dict(median_ms=float(median), q1_ms=float(q1), q3_ms=float(q3), min_ms=float(ms.min()),
              max_ms=float(ms.max()), calls=len(ms))


def first_calls(functions, z):
  """`(first, outputs)` of each of `functions` (`{label: fn(z)}`): seconds of its first call (tracing and compiling
  included), then, after a second call to warm up, the output of a third as numpy. For the A/B scripts
  (`execution_choice.py`, `chunked_sweep.py`), before `interleaved_medians`."""
  first, outputs = {}, {}
  for label, function in functions.items():
    start = time.perf_counter()
    function(z).numpy()
    first[label] = time.perf_counter() - start
    function(z).numpy()
  for label, function in functions.items():
    outputs[label] = function(z).numpy()
  return first, outputs


def interleaved_medians(functions, z, calls, rng):
  """Median seconds per call of each of `functions` (`{label: fn(z)}`), called `calls` times round-robin in a
  random order each round: the A/B comparisons of the benchmark scripts (`small_products.py`,
  `permutation_frames.py`)."""
  times = {label: [] for label in functions}
  for _ in range(calls):
    for index in rng.permutation(len(functions)):
      label = list(functions)[index]
      start = time.perf_counter()
      tf.nest.map_structure(lambda t: t.numpy(), functions[label](z))
      times[label].append(time.perf_counter() - start)
  return {label: float(np.median(value)) for label, value in times.items()}


def predicted_seconds(previous, dim, num_points, points_power=1.):
  """Seconds per call at `(dim, num_points)`, extrapolated from the smaller cells measured, or None.

  From the smaller D at the same N: from the largest of them, the time grows as `D^p` with `p` the slope between
  the two largest measured, or 3 if that is less (or there is only one): pessimistic for every method here
  except XLA's batched triangular solves on CPU, whose time grows faster still (and which that slope then
  catches). From fewer points at the same D: the time grows as `N^points_power` (per-call overhead makes this
  pessimistic too). The larger of the two predictions.
  """
  predictions = []
  smaller = sorted((d, r["median_ms"] / 1e3) for (d, n), r in previous.items()
                   if n == num_points and d < dim and r.get("median_ms") is not None)
  if smaller:
    power = 3.
    if len(smaller) >= 2:
      (d0, t0), (d1, t1) = smaller[-2:]
      power = max(power, np.log(t1 / t0) / np.log(d1 / d0))
    d, seconds = smaller[-1]
    predictions.append(seconds * (dim / d) ** power)
  fewer = sorted((n, r["median_ms"] / 1e3) for (d, n), r in previous.items()
                 if d == dim and n < num_points and r.get("median_ms") is not None)
  if fewer:
    n, seconds = fewer[-1]
    predictions.append(seconds * (num_points / n) ** points_power)
  return max(predictions, default=None)


def run_cell(z, dtype, runners, settings, history, rng, unsupported=None):
  """Measures every runner on one cell; returns `{method: result}` in the order of `runners`.

  `history` holds the results of the cells run before for the same flow and dtype, `{method: {(D, N): result}}`;
  `unsupported` maps methods that cannot serve this flow to why (they are reported as skipped).
  """
  results, outputs, active = {}, {}, {}
  num_points, dim = z.shape
  unsupported = unsupported or {}
  for name, make in runners.items():
    if name in unsupported:
      results[name] = dict(status=f"skipped: {unsupported[name]}")
      continue
    previous = history.get(name, {})
    if name not in ALWAYS_RUN:
      smaller = {(d, n): r for (d, n), r in previous.items() if d <= dim and n <= num_points}
      over_budget = [(d, n) for (d, n), r in smaller.items() if r["status"].startswith("skipped: > budget")]
      timed_out = [r for r in smaller.values() if "(worker stopped)" in r["status"]]
      points_power = METHODS[name].points_power if name in METHODS else 1.
      predicted = predicted_seconds(previous, dim, num_points, points_power)
      if over_budget:
        where = "a smaller D" if any(d < dim for d, _ in over_budget) else "fewer points"
        results[name] = dict(status=f"skipped: > budget at {where}")
        continue
      if timed_out:
        results[name] = dict(status="skipped: timed out at a smaller cell")
        continue
      if predicted is not None and predicted > settings["budget"]:
        results[name] = dict(status=f"skipped: > budget (~{predicted:.0f} s/call predicted > {settings['budget']:g} s)")
        continue
    try:
      runner = make()
      output, first = runner.first_call()
    except Exception as error:  # pylint: disable=broad-except
      results[name] = dict(status=f"failed: {reason(error)}")
      continue
    results[name] = dict(status="ok", first_call_s=first)
    outputs[name] = output
    if name not in ALWAYS_RUN and first > 3 * settings["budget"]:
      # Tracing and compiling can take far longer than a call (XLA: 15 s and more), so only a first call far
      # over the budget stops a method; it is checked for agreement, not timed.
      results[name]["status"] = f"skipped: > budget (first call {first:.0f} s > 3 x {settings['budget']:g} s)"
      runner.close()
      continue
    active[name] = runner

  hessians = {name: out for name, out in outputs.items() if out.ndim == 3}
  if "ours" in hessians:
    for name, hessian in hessians.items():
      try:
        error = _relative_error(hessian, hessians["ours"])
      except ValueError as failure:
        error = float("nan")
        results[name]["status"] = f"failed: {failure}"
      results[name]["max_rel_error"] = error
      results[name]["agrees"] = bool(error <= TOLERANCE[dtype])

  # Warm-up (under the RSS sampler), and how many timed calls each method can afford within the time budget.
  planned, estimates = {}, {}
  for name, runner in list(active.items()):
    try:
      estimates[name], results[name]["peak_rss_delta_mib"] = runner.warm_up()
      estimate = estimates[name]
    except Exception as error:  # pylint: disable=broad-except
      results[name]["status"] = f"failed: {reason(error)}"
      continue
    if name in ALWAYS_RUN:
      planned[name] = settings["repeats"]
    elif estimate > settings["budget"]:
      results[name]["status"] = f"skipped: > budget (a call took {estimate:.0f} s > {settings['budget']:g} s)"
      results[name]["single_call_s"] = estimate
    else:
      planned[name] = int(np.clip(settings["time_budget"] // max(estimate, 1e-9), 1, settings["repeats"]))

  # A method that can afford one call only has just made it: that call is its measurement.
  samples = {name: [] for name in planned}
  for name, calls in planned.items():
    if calls == 1 and name not in ALWAYS_RUN:
      samples[name].append(estimates[name])
  for _ in range(settings["repeats"]):
    for name in rng.permutation(list(planned)):
      if len(samples[name]) >= planned[name]:
        continue
      try:
        samples[name].append(active[name].timed_call())
      except Exception as error:  # pylint: disable=broad-except
        results[name]["status"] = f"failed: {reason(error)}"
        planned[name] = 0
  for name, runner in active.items():
    if samples.get(name) and results[name]["status"] == "ok":
      results[name].update(_statistics(samples[name]))
      results[name]["points_per_s"] = num_points / (results[name]["median_ms"] / 1e3)
    try:
      runner.close()
    except Exception:  # pylint: disable=broad-except
      pass

  for name in ("log_prob", "ours"):
    reference_ms = results.get(name, {}).get("median_ms")
    for result in results.values():
      if reference_ms and result.get("median_ms") is not None:
        result[f"ratio_to_{name}"] = result["median_ms"] / reference_ms
  return results
