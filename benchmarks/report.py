"""BENCHMARKS.md and the log–log plot from `python -m tfp_hessian bench --json` reports.

    python benchmarks/report.py benchmarks/results.json [more.json ...] [--markdown BENCHMARKS.md]
        [--plot benchmarks/time_vs_dim.png]

Several reports (runs of different flows or dims) make one document of all their cells; every table names the
command of each run that measured it, restricted to its cells.

Everything in the markdown comes from the JSON, except what an existing output file has by hand and keeps: the
notes between `<!-- notes -->` and `<!-- /notes -->`, and everything from `<!-- appendix -->` to the end (other
benchmarks' sections, e.g. benchmarks/large_d.py's). The plot needs matplotlib (the harness does not).
"""

import argparse
import json
import pathlib
import re
import sys

NOTES = re.compile(r"<!-- notes -->.*?<!-- /notes -->", re.S)
APPENDIX = "<!-- appendix -->"
ORDER = ["log_prob", "ours", "ours_xla", "tf_hessians", "tapes", "tapes_xla", "fwd_rev", "fwd_rev_xla", "jax"]
SHORT = {"log_prob": "log_prob alone", "ours": "**ours**", "ours_xla": "ours + XLA", "tf_hessians": "tf.hessians",
         "tapes": "nested tapes", "tapes_xla": "nested tapes + XLA", "fwd_rev": "fwd-over-rev",
         "fwd_rev_xla": "fwd-over-rev + XLA", "jax": "JAX jit(vmap(hessian))"}


def _normalized(report):
  """A report of schema 1 (one N per run, no execution plans) in the shape of schema 2, with its `runs`."""
  settings = report["settings"]
  if isinstance(settings["num_points"], int):
    settings["num_points"] = [settings["num_points"]]
  for cell in report["cells"]:
    cell.setdefault("num_points", settings["num_points"][0])
    cell.setdefault("execution", dict(xla=None, reason="not recorded (a run before execution plans)"))
    cell.setdefault("command", None)
  for row in report["exponents"]:
    row.setdefault("num_points", settings["num_points"][0])
  for row in report["targets"]:
    row.setdefault("issue", 4)
    row.setdefault("num_points", settings["num_points"][0])
  report.setdefault("runs", [dict(command=report["command"], options=report.get("command_options", ""),
                                  **{k: settings[k] for k in ("flows", "dims", "dtypes", "num_points")})])
  return report


def merge(reports):
  """One report of several runs (say, the stock flows and the example flows at other dims): cells concatenated.

  Machine, versions and timing settings are the first run's; each run keeps its own command (`runs`).
  """
  reports = [_normalized(r) for r in reports]
  merged = dict(reports[0], cells=[], exponents=[], targets=[], runs=[], wall_time_s=0.)
  merged["settings"] = dict(reports[0]["settings"])
  for key in ("flows", "dtypes"):
    merged["settings"][key] = list(dict.fromkeys(v for r in reports for v in r["settings"][key]))
  for key in ("dims", "num_points"):
    merged["settings"][key] = sorted({v for r in reports for v in r["settings"][key]})
  for report in reports:
    for key in ("cells", "exponents", "targets", "runs"):
      merged[key] += report[key]
    merged["wall_time_s"] += report["wall_time_s"]
    merged["versions"] = dict(report["versions"], **merged["versions"])
  return merged


def _command(options, flows, dims, dtypes, num_points):
  """The bench command that measures these cells again (as `harness.cell_command`)."""
  parts = ["python -m tfp_hessian bench", "--flow " + " ".join(flows), "--dim " + " ".join(map(str, dims)),
           "--dtype " + " ".join(dtypes), "--num-points " + " ".join(map(str, num_points))]
  return " ".join(parts + ([options] if options else []))


def _reproduce(report, flows, dims, dtypes, num_points):
  """`Reproduce: ...`, the commands of each run that measured some of these cells, for these cells only."""
  commands = []
  for run in report["runs"]:
    chosen = [[v for v in values if v in run[key]] for key, values in
              (("flows", flows), ("dims", dims), ("dtypes", dtypes), ("num_points", num_points))]
    if all(chosen):
      commands.append(f"`{_command(run['options'], *chosen)}`")
  return "Reproduce: " + ("; ".join(commands) or "–")


def _ms(ms):
  if ms is None:
    return "–"
  if ms >= 1000:
    return f"{ms / 1e3:.2f} s"
  return f"{ms:.3g} ms" if ms < 100 else f"{ms:.0f} ms"


def _methods(report):
  present = {m for c in report["cells"] for m in c["results"]}
  return [m for m in ORDER if m in present] + sorted(present - set(ORDER))


def _status(result):
  status = result["status"]
  if status.startswith("failed"):
    return "failed†"
  if status.startswith("skipped"):
    return "skipped‡"
  return status


def _cells(report):
  return {(c["flow"], c["dtype"], c["dim"], c["num_points"]): c for c in report["cells"]}


def _rate(points_per_s):
  if points_per_s is None:
    return "–"
  return f"{points_per_s / 1e3:.3g}k" if points_per_s >= 1e3 else f"{points_per_s:.3g}"


def _plan(cell):
  xla, chunks = cell["execution"]["xla"], cell["execution"].get("chunks", 1)
  return "?" if xla is None else ("graph" if not xla else "XLA" if chunks == 1 else f"XLA, {chunks} chunks")


def summary_table(report):
  """One row per cell: ours against log_prob, the fastest alternative and tf.hessians."""
  lines = ["| flow | dtype | D | N | default call | log_prob | ours | ours points/s | ours ×log_prob | "
           "fastest alternative | ours speedup | tf.hessians | ours speedup | reproduce |",
           "|---|---|---:|---:|---|---:|---:|---:|---:|---|---:|---:|---:|---|"]
  for cell in report["cells"]:
    results = cell["results"]
    ours, log_prob = results.get("ours", {}), results.get("log_prob", {})
    if ours.get("median_ms") is None:
      continue
    alternatives = {m: r["median_ms"] for m, r in results.items()
                    if m not in ("log_prob", "ours", "ours_xla") and r.get("median_ms") is not None}
    fastest = min(alternatives, key=alternatives.get) if alternatives else None
    naive = results.get("tf_hessians", {}).get("median_ms")
    ratio = f"{ours['median_ms'] / log_prob['median_ms']:.1f}" if log_prob.get("median_ms") else "–"
    command = f"`{cell['command']}`" if cell["command"] else "–"
    lines.append(
        f"| {cell['flow']} | {cell['dtype']} | {cell['dim']} | {cell['num_points']} | {_plan(cell)} | "
        f"{_ms(log_prob.get('median_ms'))} | {_ms(ours['median_ms'])} | {_rate(ours.get('points_per_s'))} | "
        f"{ratio} | "
        + (f"{SHORT.get(fastest, fastest)} {_ms(alternatives[fastest])} | "
           f"{alternatives[fastest] / ours['median_ms']:.2f}× | " if fastest else "– | – | ")
        + (f"{_ms(naive)} | {naive / ours['median_ms']:.0f}× | " if naive else "– | – | ")
        + f"{command} |")
  return lines + [""]


def execution_table(report):
  """Which execution the default call `log_prob_hessian` chose in each cell (`tfp_hessian.execution_plan`)."""
  lines = ["| flow | dtype | D | N | default call | why |", "|---|---|---:|---:|---|---|"]
  for cell in report["cells"]:
    lines.append(f"| {cell['flow']} | {cell['dtype']} | {cell['dim']} | {cell['num_points']} | {_plan(cell)} | "
                 f"{cell['execution']['reason']} |")
  return lines + [""]


def timing_tables(report):
  cells, dims = _cells(report), report["settings"]["dims"]
  lines = []
  for dtype in report["settings"]["dtypes"]:
    for flow in report["settings"]["flows"]:
      for num_points in report["settings"]["num_points"]:
        plans = {d: cells[flow, dtype, d, num_points]["execution"]["reason"] for d in dims
                 if (flow, dtype, d, num_points) in cells}
        lines += [f"#### {flow}, {dtype}, N = {num_points}", "",
                  _reproduce(report, [flow], dims, [dtype], [num_points]), "",
                  "Default call: " + "; ".join(f"D={d}: {reason}" for d, reason in plans.items()) + ".", "",
                  "| method | " + " | ".join(f"D={d}: median [IQR] | points/s | ×log_prob | ×ours" for d in dims)
                  + " |", "|---|" + "---:|---:|---:|---:|" * len(dims)]
        for method in _methods(report):
          row = [SHORT.get(method, method)]
          for dim in dims:
            result = cells.get((flow, dtype, dim, num_points), {}).get("results", {}).get(method)
            if result is None:
              row += ["", "", "", ""]
            elif result.get("median_ms") is None:
              row += [_status(result), "", "", ""]
            else:
              row += [f"{_ms(result['median_ms'])} [{_ms(result['q1_ms'])}–{_ms(result['q3_ms'])}]",
                      _rate(result.get("points_per_s")),
                      f"{result.get('ratio_to_log_prob', float('nan')):.1f}",
                      f"{result.get('ratio_to_ours', float('nan')):.2f}"]
          lines.append("| " + " | ".join(row) + " |")
        lines.append("")
  return lines


def _grid(report, value, title):
  """One table per dtype: rows the cells (flow, D, N), columns the methods; `value(result)` a string."""
  methods = _methods(report)
  settings = report["settings"]
  lines = []
  for dtype in settings["dtypes"]:
    lines += [f"{title}, {dtype}:", "",
              _reproduce(report, settings["flows"], settings["dims"], [dtype], settings["num_points"]), "",
              "| flow | D | N | " + " | ".join(SHORT.get(m, m) for m in methods) + " |",
              "|---|---:|---:|" + "---:|" * len(methods)]
    for cell in report["cells"]:
      if cell["dtype"] != dtype:
        continue
      row = [cell["flow"], str(cell["dim"]), str(cell["num_points"])]
      for method in methods:
        result = cell["results"].get(method)
        row.append("" if result is None else value(result))
      lines.append("| " + " | ".join(row) + " |")
    lines.append("")
  return lines


def first_call_tables(report):
  def value(result):
    first = result.get("first_call_s")
    return _status(result) if first is None else f"{first:.1f}"

  return _grid(report, value, "First call (tracing + compiling + one call), seconds")


def memory_tables(report):
  def value(result):
    rss = result.get("peak_rss_delta_mib")
    return _status(result) if rss is None and result["status"] != "ok" else ("–" if rss is None else f"{rss:.0f}")

  return _grid(report, value, "Peak RSS above the RSS before one call, MiB (sampled every 0.5 ms)")


def agreement_tables(report):
  def value(result):
    error = result.get("max_rel_error")
    if error is None:
      return "–" if result["status"] == "ok" else _status(result)
    return f"{error:.0e}" + ("" if result.get("agrees") else " ✗")

  return _grid(report, value, "Max relative disagreement with ours")


def exponent_table(report):
  methods = _methods(report)
  rows = {}
  for e in report["exponents"]:
    rows.setdefault((e["flow"], e["dtype"], e["num_points"]), {})[e["method"]] = e["exponent"]
  lines = ["| flow, dtype, N | " + " | ".join(SHORT.get(m, m) for m in methods) + " |",
           "|---|" + "---:|" * len(methods)]
  for (flow, dtype, num_points), values in sorted(rows.items()):
    lines.append(f"| {flow}, {dtype}, N = {num_points} | " + " | ".join(
        f"{values[m]:.2f}" if m in values else "–" for m in methods) + " |")
  return lines + [""]


def _unit(target):
  return "s" if "first call" in target else "×"


def _describe(row):
  detail = f", {row['detail'].replace('fastest alternative: ', 'vs ')}" if row["detail"] else ""
  cell = f"{row['flow']} D={row['dim']} N={row['num_points']} {row['dtype']}"
  return f"{cell}: {row['value']:.2f}{_unit(row['target'])}{detail}"


def target_table(report, issue):
  """The targets of `issue` (13 or 4): a summary per target, then one row per cell with its command."""
  rows_of_issue = [row for row in report["targets"] if row["issue"] == issue]
  if not rows_of_issue:
    return ["No cell of this run is one of these targets' (see the dims and N they name).", ""]
  by_target = {}
  for row in rows_of_issue:
    by_target.setdefault(row["target"], []).append(row)
  lines = ["| target | dtype | met | worst cell | best cell |", "|---|---|---:|---|---|"]
  for target, rows in by_target.items():
    for dtype in report["settings"]["dtypes"]:
      rows_dtype = [r for r in rows if r["dtype"] == dtype]
      if not rows_dtype:
        continue
      measured = [r for r in rows_dtype if r["value"] is not None]
      met = sum(bool(r["met"]) for r in measured)
      # Worst: the furthest from the target (lowest speedup; highest ratio or time).
      lower_is_better = "within" in target or "first call" in target
      key = (lambda r: -r["value"]) if lower_is_better else (lambda r: r["value"])
      worst, best = (min(measured, key=key), max(measured, key=key)) if measured else (None, None)
      unmeasured = len(rows_dtype) - len(measured)
      lines.append(f"| {target} | {dtype} | {met}/{len(measured)}"
                   + (f" ({unmeasured} not measured)" if unmeasured else "")
                   + f" | {_describe(worst) if worst else '–'} | {_describe(best) if best else '–'} |")
  lines.append("")
  lines += ["Per cell:", "", "| flow | D | N | dtype | target | value | met | reproduce |",
            "|---|---:|---:|---|---|---:|:---:|---|"]
  for r in rows_of_issue:
    value = r["detail"] if r["value"] is None else f"{r['value']:.2f}{_unit(r['target'])}"
    extra = f" ({r['detail']})" if r["detail"] and r["value"] is not None else ""
    verdict = "–" if r["met"] is None else ("yes" if r["met"] else "**no**")
    command = f"`{r['command']}`" if r.get("command") else "–"
    lines.append(f"| {r['flow']} | {r['dim']} | {r['num_points']} | {r['dtype']} | {r['target']}{extra} | {value} "
                 f"| {verdict} | {command} |")
  return lines + [""]


def problems(report):
  lines = []
  for cell in report["cells"]:
    for method, result in cell["results"].items():
      if result["status"] != "ok":
        lines.append(f"- {cell['flow']} D={cell['dim']} N={cell['num_points']} {cell['dtype']}, "
                     f"{SHORT.get(method, method)}: {result['status']}")
  return lines or ["- none"]


def markdown(report, notes):
  report = _normalized(report)
  machine, versions, settings = report["machine"], report["versions"], report["settings"]
  lines = [
      "# Benchmarks", "",
      "Generated by `python benchmarks/report.py` from the JSON of the run below; only the notes are written by",
      "hand. The harness of issues #4 and #13: `benchmarks/harness/` (`python -m tfp_hessian bench --help`). "
      "Every table says the command that measures it again; the per-cell tables say it per row.", "",
      "## Machine and versions", "",
      f"- CPU: {machine['cpu']}, {machine['cores']} cores; {machine['platform']}; Python {machine['python']}.",
      f"- Load average when the run started: {', '.join(f'{x:.1f}' for x in machine['load_average_at_start'])} "
      "(a shared machine: other jobs ran throughout, so read ratios, not absolute times).",
      "- " + ", ".join(f"{k} {v}" for k, v in versions.items()) + ".",
      f"- Run {report['created'][:19]} UTC, {report['wall_time_s'] / 60:.0f} min wall time.", "",
      "## Commands", "",
      "```",
      "bash benchmarks/jax_peer/setup.sh          # once: the JAX peer's own venv (benchmarks/jax_peer/.venv)",
      *[run["command"] or _command(run["options"], run["flows"], run["dims"], run["dtypes"], run["num_points"])
        for run in report["runs"]],
      "python benchmarks/report.py " + " ".join(report.get("json_paths", ["benchmarks/results.json"]))
      + " --markdown BENCHMARKS.md --plot benchmarks/time_vs_dim.png",
      "```", "",
      "## What is measured", "",
      f"Flows with random (not near-identity) weights, points sampled from the flow, N = "
      f"{', '.join(map(str, settings['num_points']))} points per call, dims {settings['dims']}. The three stock "
      "flows have 4 layers on a `MultivariateNormalDiag` base: "
      "`elementwise_affine` = (`ScaleMatvecTriL` → `Shift` → `SinhArcsinh`) × 4; `realnvp` = 4 `RealNVP` "
      "couplings with `DenseShiftAndLogScale([64, 64], tanh)` and `Permute` between; `maf` = 4 "
      "`MaskedAutoregressiveFlow`s with `AutoregressiveNetwork(params=2, hidden_units=[64, 64], tanh)` (random "
      "masked kernels) and `Permute` between. The real-flows issue's flows are `tfp_hessian.examples`' with their "
      "defaults but D: `research_flow` = 3 MAF stages ([32, 32]) with `Permute`, a user-written `Shear` and "
      "`BatchNormalization`, a post-affine layer and a user-written `BoxMap`; `conditional_maf` = 2 MAFs of "
      "conditional `AutoregressiveNetwork`s ([32, 32]), a 4-number condition per point passed through "
      "`bijector_kwargs`. The JAX peer rebuilds only the stock flows.", "",
      "Every method is a `tf.function` (`+ XLA`: `jit_compile=True`) called on the same points; **ours** is the "
      "default call `log_prob_hessian` as a user writes it, which chooses by itself whether XLA compiles its sweep "
      "(the 'default call' column: `XLA` or `graph`, why in 'Execution of the default call'). After a first "
      "call (timed separately: tracing and compiling) and one warm-up call, the methods' calls are interleaved "
      f"round-robin in a random order each round, up to {settings['repeats']} calls each (methods slower than "
      f"{settings['time_budget']:g} s of calls per cell allows get fewer, at least one); the tables give the "
      "median and interquartile range, and the points per second at the median. Methods predicted (extrapolated "
      "from the smaller D, at least as D³, and from fewer points, at least as N, or N² for tf.hessians) or "
      f"measured (one warm-up call) to take more than {settings['budget']:g} s per call are skipped (‡); a "
      "method that can afford one call only is timed by that call. Before timing, every Hessian is "
      "compared with ours: `max_n max_ij |H_n − H_ours,n| / max_ij |H_ours,n|`, tolerance "
      f"{settings['tolerance']['float64']:g} (float64) and {settings['tolerance']['float32']:g} (float32). "
      "`fwd-over-rev` is a `tf.autodiff.ForwardAccumulator` over a `GradientTape` gradient, `tf.vectorized_map` "
      "over the D basis tangents. The JAX peer is `jax.jit(jax.vmap(jax.hessian(log_prob)))` on the same "
      "flow (same weights and points) built with TFP's JAX substrate, in its own process and venv; its calls "
      "are interleaved with the others' too (with `OPENBLAS_NUM_THREADS=1`: see benchmarks/jax_peer/worker.py).", "",
      "### Notes", "",
      notes, "",
      "## Targets of issue #13", "",
      "Ours is the default call. Latency at N ≤ 16 points and throughput at N ≥ 1024; the D ≥ 64 targets are "
      "for the three stock flows, the D ≤ 16 ones for every flow. 'Alternatives' are every other way to the "
      "Hessian timed here: tf.hessians, nested tapes, forward-over-reverse, with and without XLA, and the JAX peer "
      "(ours + XLA is ours).", "",
      _reproduce(report, settings["flows"], settings["dims"], settings["dtypes"], settings["num_points"]), "",
      *target_table(report, 13),
      "## Summary", "",
      "Median time per call for all points; 'speedup' is the other method's time over ours (> 1: ours is "
      "faster). The fastest alternative is the fastest of every method but ours (XLA and JAX included).", "",
      *summary_table(report),
      "## Execution of the default call", "",
      "How `log_prob_hessian` ran inside the `tf.function`, as `tfp_hessian.execution_plan(flow, z)` reports it.",
      "",
      _reproduce(report, settings["flows"], settings["dims"], settings["dtypes"], settings["num_points"]), "",
      *execution_table(report),
      "## Time per call (all points)", "",
      "×log_prob and ×ours: the method's median over that of `log_prob` alone and of ours.", "",
      *timing_tables(report),
      "## Growth with D", "",
      f"Log–log slope of the median time against D over the dims run ({', '.join(map(str, settings['dims']))}): "
      "the empirical exponent of each method's cost.", "",
      _reproduce(report, settings["flows"], settings["dims"], settings["dtypes"], settings["num_points"]), "",
      *exponent_table(report),
      "![time per call against D](benchmarks/time_vs_dim.png)", "",
      "## Targets of issue #4", "",
      "Stated at 16 points, so computed at N ≤ 16 only.", "",
      _reproduce(report, settings["flows"], settings["dims"], settings["dtypes"], settings["num_points"]), "",
      *target_table(report, 4),
      "## First calls", "",
      *first_call_tables(report),
      "## Memory", "",
      "The process's resident set size is sampled every 0.5 ms during one call (a few for calls under 20 ms); the "
      "table gives its peak above the RSS just before. It is what the call added to the process: a lower bound "
      "of its working memory, as memory freed by earlier calls may be reused without growing the RSS.", "",
      *memory_tables(report),
      "## Agreement", "",
      *agreement_tables(report),
      "## Skipped and failed", "",
      *problems(report), "",
  ]
  return "\n".join(lines)


def plot(report, path):
  import matplotlib  # pylint: disable=import-outside-toplevel
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel

  report = _normalized(report)
  flows = report["settings"]["flows"]
  measured = {(c["dtype"], c["num_points"]) for c in report["cells"]}
  rows = [(dtype, n) for dtype in report["settings"]["dtypes"] for n in report["settings"]["num_points"]
          if (dtype, n) in measured]
  methods = _methods(report)
  cmap = plt.get_cmap("tab10")
  # Ours bold, log_prob dotted (not a Hessian), XLA-compiled methods (JAX included) dashed.
  style = {m: dict(color=cmap(i), marker="os^v<>Dpx*"[i % 10], lw=2.5 if m == "ours" else 1.2,
                   ls=":" if m == "log_prob" else ("--" if m.endswith("_xla") or m == "jax" else "-"))
           for i, m in enumerate(methods)}
  fig, axes = plt.subplots(len(rows), len(flows), figsize=(4.6 * len(flows), 3.8 * len(rows)), squeeze=False,
                           sharex=True)
  for i, (dtype, num_points) in enumerate(rows):
    for j, flow in enumerate(flows):
      ax = axes[i][j]
      for method in methods:
        points = sorted((c["dim"], c["results"][method]["median_ms"]) for c in report["cells"]
                        if c["flow"] == flow and c["dtype"] == dtype and c["num_points"] == num_points
                        and method in c["results"] and c["results"][method].get("median_ms") is not None)
        if points:
          ax.plot(*zip(*points), label=SHORT.get(method, method).strip("*"), **style[method])
      ax.set_xscale("log")
      ax.set_yscale("log")
      ax.set_xticks(report["settings"]["dims"])
      ax.set_xticklabels(report["settings"]["dims"])
      ax.minorticks_off()
      ax.grid(True, which="major", alpha=0.3)
      ax.set_title(f"{flow}, {dtype}, N = {num_points}")
      if i == len(rows) - 1:
        ax.set_xlabel("D")
      if j == 0:
        ax.set_ylabel(f"ms per call ({num_points} points)")
  handles, labels = axes[0][0].get_legend_handles_labels()
  for ax in axes.flat:
    for handle, label in zip(*ax.get_legend_handles_labels()):
      if label not in labels:
        handles.append(handle)
        labels.append(label)
  fig.legend(handles, labels, loc="lower center", ncol=min(len(labels), 5), frameon=False)
  fig.tight_layout(rect=(0, 0.08 if len(labels) > 5 else 0.05, 1, 1))
  fig.savefig(path, dpi=110)


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("json", nargs="+", help="reports written by `python -m tfp_hessian bench --json` (several: "
                                              "one report of all their cells)")
  parser.add_argument("--markdown", help="write BENCHMARKS.md here (keeping its notes and appendix)")
  parser.add_argument("--plot", help="write the log-log plot of time against D here (PNG; a row per dtype and N)")
  args = parser.parse_args(argv)
  report = merge([json.loads(pathlib.Path(path).read_text()) for path in args.json])
  report["json_paths"] = args.json
  if args.markdown:
    path = pathlib.Path(args.markdown)
    notes, appendix = "<!-- notes -->\n(none yet)\n<!-- /notes -->", ""
    if path.exists():
      existing = path.read_text()
      match = NOTES.search(existing)
      notes = match.group(0) if match else notes
      if APPENDIX in existing:
        appendix = existing[existing.index(APPENDIX):]
    path.write_text(markdown(report, notes) + ("\n" + appendix if appendix else ""))
    print(f"wrote {path}")
  if args.plot:
    plot(report, args.plot)
    print(f"wrote {args.plot}")
  if not (args.markdown or args.plot):
    print(markdown(report, ""))
  return 0


if __name__ == "__main__":
  sys.exit(main())
