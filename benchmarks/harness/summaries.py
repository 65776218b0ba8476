"""What a run's cells add up to: growth with D (`exponents`), the issues' targets (`targets`), the text report.

`format_report` prints every figure with the command that measures it again (`cell_command`).
"""

import numpy as np

from harness.flows import STOCK_FLOWS
from harness.methods import METHODS, PEERS, label

__all__ = ["FEW_POINTS", "MANY_POINTS", "cell_command", "exponents", "fastest_alternative", "format_ms",
           "format_report", "targets"]

# Points per call of issue #13's targets: a few (what an interactive call feels) and many (posterior samples).
FEW_POINTS, MANY_POINTS = 16, 1024


def exponents(cells):
  """Log–log slope of median time against D per (flow, dtype, N, method), over the dims where it ran."""
  series = {}
  for cell in cells:
    for method, result in cell["results"].items():
      if result.get("median_ms") is not None:
        key = (cell["flow"], cell["dtype"], cell["num_points"], method)
        series.setdefault(key, []).append((cell["dim"], result["median_ms"]))
  slopes = []
  for (flow, dtype, num_points, method), points in series.items():
    dims = sorted({d for d, _ in points})
    if len(dims) < 2:
      continue
    d, ms = np.array(points, dtype=float).T
    slope = float(np.polyfit(np.log(d), np.log(ms), 1)[0])
    slopes.append(dict(flow=flow, dtype=dtype, num_points=num_points, method=method, exponent=slope, dims=dims))
  return slopes


def fastest_alternative(results):
  """`(method, median_ms)` of the fastest alternative timed in a cell, or `(None, None)`."""
  alternatives = {m: r["median_ms"] for m, r in results.items()
                  if r.get("median_ms") is not None and (m in PEERS or (m in METHODS and METHODS[m].alternative))}
  if not alternatives:
    return None, None
  fastest = min(alternatives, key=alternatives.get)
  return fastest, alternatives[fastest]


def _speed_row(key, target, value, met, fastest=None):
  detail = f"fastest alternative: {fastest}" if fastest else ""
  return dict(key, target=target, value=value, met=met, detail=detail)


def _issue13_targets(cell, key):
  """Issue #13: against the fastest alternative at few and many points, and against log_prob at small D."""
  results, dim, num_points = cell["results"], cell["dim"], cell["num_points"]
  ours_ms = results["ours"]["median_ms"]
  fastest, fastest_ms = fastest_alternative(results)
  rows = []

  def against_alternatives(target, threshold, strictly=False):
    if fastest is None:
      rows.append(dict(key, target=target, value=None, met=None, detail="no alternative timed"))
      return
    speedup = fastest_ms / ours_ms
    met = speedup > threshold if strictly else speedup >= threshold
    rows.append(_speed_row(key, target, speedup, bool(met), fastest))

  if dim >= 64 and cell["flow"] in STOCK_FLOWS:
    if num_points >= MANY_POINTS:
      against_alternatives(f"≥2x faster than the fastest alternative (D ≥ 64, N ≥ {MANY_POINTS})", 2)
    elif num_points <= FEW_POINTS:
      against_alternatives(f"at least as fast as the fastest alternative (D ≥ 64, N ≤ {FEW_POINTS})", 1)
  if dim <= 16:
    if num_points <= FEW_POINTS:
      log_prob_ms = results.get("log_prob", {}).get("median_ms")
      target = f"within 1.5x of log_prob (D ≤ 16, N ≤ {FEW_POINTS})"
      if log_prob_ms is None:
        rows.append(dict(key, target=target, value=None, met=None, detail=results["log_prob"]["status"]))
      else:
        ratio = ours_ms / log_prob_ms
        rows.append(dict(key, target=target, value=ratio, met=bool(ratio <= 1.5), detail=""))
    elif num_points >= MANY_POINTS:
      against_alternatives(f"ahead of every alternative (D ≤ 16, N ≥ {MANY_POINTS})", 1, strictly=True)
  return [dict(row, issue=13) for row in rows]


def _issue4_targets(cell, key):
  """Issue #4, stated at 16 points: so only at N ≤ 16."""
  results = cell["results"]
  ours = results["ours"]
  rows = []
  fastest, fastest_ms = fastest_alternative(results)
  if cell["dim"] >= 64 and fastest is not None:
    speedup = fastest_ms / ours["median_ms"]
    rows.append(_speed_row(key, "≥2x faster than the fastest alternative (D ≥ 64)", speedup, bool(speedup >= 2),
                           fastest))
  naive = results.get("tf_hessians", {})
  if naive.get("median_ms") is not None:
    speedup = naive["median_ms"] / ours["median_ms"]
    rows.append(dict(key, target="≥100x faster than tf.hessians", value=speedup, met=bool(speedup >= 100),
                     detail=""))
  elif "tf_hessians" in results:
    rows.append(dict(key, target="≥100x faster than tf.hessians", value=None, met=None,
                     detail=results["tf_hessians"]["status"]))
  log_prob = results.get("log_prob", {})
  if cell["dim"] <= 32 and log_prob.get("median_ms") is not None:
    ratio = ours["median_ms"] / log_prob["median_ms"]
    rows.append(dict(key, target="within 3x of log_prob (D ≤ 32)", value=ratio, met=bool(ratio <= 3), detail=""))
  rows.append(dict(key, target="first call < 3 s", value=ours["first_call_s"], met=bool(ours["first_call_s"] < 3),
                   detail=""))
  return [dict(row, issue=4) for row in rows]


def targets(cells):
  """The issues' targets per cell: which are met, by how much; issue #13's first."""
  issue13, issue4 = [], []
  for cell in cells:
    if cell["results"].get("ours", {}).get("median_ms") is None:
      continue
    key = dict(flow=cell["flow"], dim=cell["dim"], dtype=cell["dtype"], num_points=cell["num_points"],
               command=cell.get("command"))
    issue13 += _issue13_targets(cell, key)
    if cell["num_points"] <= FEW_POINTS:
      issue4 += _issue4_targets(cell, key)
  return issue13 + issue4


def format_ms(ms):
  if ms is None:
    return "-"
  if ms >= 1000:
    return f"{ms / 1e3:.2f} s"
  return f"{ms:.3g} ms" if ms < 10 else f"{ms:.1f} ms"


def _format_rate(points_per_s):
  if points_per_s is None:
    return "-"
  return f"{points_per_s / 1e3:.3g}k" if points_per_s >= 1e3 else f"{points_per_s:.3g}"


def _format_target(row):
  verdict = "n/a " if row["met"] is None else ("met " if row["met"] else "MISS")
  value = row["detail"] if row["value"] is None else f"{row['value']:.2f}" + (
      "s" if "first call" in row["target"] else "x")
  detail = f"  ({row['detail']})" if row["detail"] and row["value"] is not None else ""
  cell = f"{row['flow']} D={row['dim']} {row['dtype']} N={row.get('num_points', '?')}"
  command = f"   $ {row['command']}" if row.get("command") else ""
  return f"  {verdict} {cell:36s} {row['target']:58s} {value}{detail}{command}"


def format_report(report):
  """The report's tables as text: one block per cell, then the exponents and the targets.

  Every figure is printed with the command that measures it again: each cell's block and each target row.
  """
  lines = []
  width = max([44] + [len(label(m)) + 2 for c in report["cells"] for m in c["results"]])
  for cell in report["cells"]:
    lines.append(f"{cell['flow']}, D={cell['dim']}, {cell['dtype']}, N={cell['num_points']} points "
                 f"({cell['num_bijectors']} bijectors)   $ {cell['command']}")
    lines.append(f"  default call: {cell['execution']['reason']}")
    lines.append(f"  {'method':{width}s}{'median':>10s}{'IQR':>19s}{'points/s':>10s}{'calls':>6s}{'/log_prob':>10s}"
                 f"{'/ours':>8s}{'1st call':>10s}{'dRSS MiB':>10s}{'rel err':>9s}")
    for method, r in cell["results"].items():
      head = f"  {label(method):{width}s}"
      if r.get("median_ms") is None:
        extra = f"   (1st call {r['first_call_s']:.1f} s)" if r.get("first_call_s") is not None else ""
        lines.append(head + r["status"] + extra)
        continue
      iqr = f"{format_ms(r['q1_ms'])}–{format_ms(r['q3_ms'])}"
      error = "" if r.get("max_rel_error") is None else f"{r['max_rel_error']:.0e}" + ("" if r["agrees"] else "!")
      rss = "-" if r.get("peak_rss_delta_mib") is None else f"{r['peak_rss_delta_mib']:.0f}"
      lines.append(head + f"{format_ms(r['median_ms']):>10s}{iqr:>19s}{_format_rate(r.get('points_per_s')):>10s}"
                   f"{r['calls']:6d}"
                   f"{r.get('ratio_to_log_prob', float('nan')):9.1f}x{r.get('ratio_to_ours', float('nan')):7.2f}x"
                   f"{r['first_call_s']:9.2f}s{rss:>10s}{error:>9s}")
    lines.append("")
  if report["exponents"]:
    lines.append("growth with D: log-log slope of median time vs D   $ " + cell_command(
        report.get("command_options", ""), report["settings"]["flows"], report["settings"]["dims"],
        report["settings"]["dtypes"], report["settings"]["num_points"]))
    rows = sorted({(e["flow"], e["dtype"], e["num_points"]) for e in report["exponents"]})
    methods = [m for m in list(METHODS) + list(PEERS) if any(e["method"] == m for e in report["exponents"])]
    lines.append(f"  {'flow, dtype, N':36s}" + "".join(f"{m:>13s}" for m in methods))
    for flow, dtype, num_points in rows:
      values = {e["method"]: e["exponent"] for e in report["exponents"]
                if (e["flow"], e["dtype"], e["num_points"]) == (flow, dtype, num_points)}
      lines.append(f"  {f'{flow}, {dtype}, N={num_points}':36s}" + "".join(
          f"{values[m]:13.2f}" if m in values else f"{'-':>13s}" for m in methods))
    lines.append("")
  for issue, title in ((13, f"targets (issue #13: N ≤ {FEW_POINTS} latency, N ≥ {MANY_POINTS} throughput; "
                            "D ≥ 64 rows for the stock flows)"),
                       (4, f"targets (issue #4, stated at 16 points: cells with N ≤ {FEW_POINTS})")):
    rows = [row for row in report["targets"] if row.get("issue", 4) == issue]
    if rows:
      measured = [row for row in rows if row["met"] is not None]
      lines.append(f"{title}: {sum(row['met'] for row in measured)}/{len(measured)} met")
      lines += [_format_target(row) for row in rows]
      lines.append("")
  disagreeing = [(c["flow"], c["dim"], c["dtype"], c["num_points"], m) for c in report["cells"]
                 for m, r in c["results"].items() if r.get("agrees") is False]
  lines.append("agreement with ours: " + ("every method that ran agrees" if not disagreeing else
                                          f"DISAGREEMENT in {disagreeing}"))
  return "\n".join(lines)


def cell_command(options, flows, dims, dtypes, num_points):
  """The command that measures the given cells again, with the run's `options` (`bench.command_options`)."""
  parts = ["python -m tfp_hessian bench", "--flow " + " ".join(flows), "--dim " + " ".join(map(str, dims)),
           "--dtype " + " ".join(dtypes), "--num-points " + " ".join(map(str, num_points))]
  return " ".join(parts + ([options] if options else []))

