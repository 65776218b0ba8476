"""BENCHMARKS.md and the log–log plot from a `python -m tfp_hessian bench --json` report.

    python benchmarks/report.py benchmarks/results.json [--markdown BENCHMARKS.md] [--plot benchmarks/time_vs_dim.png]

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
  return {(c["flow"], c["dtype"], c["dim"]): c for c in report["cells"]}


def summary_table(report):
  """One row per cell: ours against log_prob, the fastest alternative and tf.hessians."""
  lines = ["| flow | dtype | D | log_prob | ours | ours ×log_prob | fastest alternative | ours speedup | "
           "tf.hessians | ours speedup |", "|---|---|---:|---:|---:|---:|---|---:|---:|---:|"]
  for cell in report["cells"]:
    results = cell["results"]
    ours, log_prob = results.get("ours", {}), results.get("log_prob", {})
    if ours.get("median_ms") is None:
      continue
    alternatives = {m: r["median_ms"] for m, r in results.items()
                    if m not in ("log_prob", "ours", "ours_xla") and r.get("median_ms") is not None}
    fastest = min(alternatives, key=alternatives.get) if alternatives else None
    naive = results.get("tf_hessians", {}).get("median_ms")
    lines.append(
        f"| {cell['flow']} | {cell['dtype']} | {cell['dim']} | {_ms(log_prob.get('median_ms'))} | "
        f"{_ms(ours['median_ms'])} | {ours['median_ms'] / log_prob['median_ms']:.1f} | "
        + (f"{SHORT.get(fastest, fastest)} {_ms(alternatives[fastest])} | "
           f"{alternatives[fastest] / ours['median_ms']:.2f}× | " if fastest else "– | – | ")
        + (f"{_ms(naive)} | {naive / ours['median_ms']:.0f}× |" if naive else "– | – |"))
  return lines + [""]


def timing_tables(report):
  cells, dims = _cells(report), report["settings"]["dims"]
  lines = []
  for dtype in report["settings"]["dtypes"]:
    for flow in report["settings"]["flows"]:
      lines += [f"#### {flow}, {dtype}", "",
                "| method | " + " | ".join(f"D={d}: median [IQR] | ×log_prob | ×ours" for d in dims) + " |",
                "|---|" + "---:|---:|---:|" * len(dims)]
      for method in _methods(report):
        row = [SHORT.get(method, method)]
        for dim in dims:
          result = cells.get((flow, dtype, dim), {}).get("results", {}).get(method)
          if result is None:
            row += ["", "", ""]
          elif result.get("median_ms") is None:
            row += [_status(result), "", ""]
          else:
            row += [f"{_ms(result['median_ms'])} [{_ms(result['q1_ms'])}–{_ms(result['q3_ms'])}]",
                    f"{result.get('ratio_to_log_prob', float('nan')):.1f}",
                    f"{result.get('ratio_to_ours', float('nan')):.2f}"]
        lines.append("| " + " | ".join(row) + " |")
      lines.append("")
  return lines


def _grid(report, value, title):
  """One table per dtype: rows methods, columns (flow, D); `value(result)` a string."""
  cells, dims, flows = _cells(report), report["settings"]["dims"], report["settings"]["flows"]
  lines = []
  for dtype in report["settings"]["dtypes"]:
    columns = [(f, d) for f in flows for d in dims]
    lines += [f"{title}, {dtype}:", "",
              "| method | " + " | ".join(f"{f} {d}" for f, d in columns) + " |",
              "|---|" + "---:|" * len(columns)]
    for method in _methods(report):
      row = [SHORT.get(method, method)]
      for flow, dim in columns:
        result = cells.get((flow, dtype, dim), {}).get("results", {}).get(method)
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
    rows.setdefault((e["flow"], e["dtype"]), {})[e["method"]] = e["exponent"]
  lines = ["| flow, dtype | " + " | ".join(SHORT.get(m, m) for m in methods) + " |",
           "|---|" + "---:|" * len(methods)]
  for (flow, dtype), values in sorted(rows.items()):
    lines.append(f"| {flow}, {dtype} | " + " | ".join(
        f"{values[m]:.2f}" if m in values else "–" for m in methods) + " |")
  return lines + [""]


def target_table(report):
  by_target = {}
  for row in report["targets"]:
    by_target.setdefault(row["target"], []).append(row)
  lines = ["| target | met | worst cell | best cell |", "|---|---:|---|---|"]
  for target, rows in by_target.items():
    measured = [r for r in rows if r["value"] is not None]
    met = sum(bool(r["met"]) for r in measured)
    # Worst: the furthest from the target (lowest speedup; highest ratio or time).
    lower_is_better = "within" in target or "first call" in target
    key = (lambda r: -r["value"]) if lower_is_better else (lambda r: r["value"])
    unit = "s" if "first call" in target else "×"

    def describe(r):
      detail = f", {r['detail'].replace('fastest alternative: ', 'vs ')}" if r["detail"] else ""
      return f"{r['flow']} D={r['dim']} {r['dtype']}: {r['value']:.2f}{unit}{detail}"

    worst, best = (min(measured, key=key), max(measured, key=key)) if measured else (None, None)
    unmeasured = len(rows) - len(measured)
    lines.append(f"| {target} | {met}/{len(measured)}" + (f" ({unmeasured} not measured)" if unmeasured else "")
                 + f" | {describe(worst) if worst else '–'} | {describe(best) if best else '–'} |")
  lines.append("")
  lines += ["Per cell:", "", "| flow | D | dtype | target | value | met |", "|---|---:|---|---|---:|:---:|"]
  for r in report["targets"]:
    unit = "s" if "first call" in r["target"] else "×"
    value = r["detail"] if r["value"] is None else f"{r['value']:.2f}{unit}"
    extra = f" ({r['detail']})" if r["detail"] and r["value"] is not None else ""
    verdict = "–" if r["met"] is None else ("yes" if r["met"] else "**no**")
    lines.append(f"| {r['flow']} | {r['dim']} | {r['dtype']} | {r['target']}{extra} | {value} | {verdict} |")
  return lines + [""]


def problems(report):
  lines = []
  for cell in report["cells"]:
    for method, result in cell["results"].items():
      if result["status"] != "ok":
        lines.append(f"- {cell['flow']} D={cell['dim']} {cell['dtype']}, {SHORT.get(method, method)}: "
                     f"{result['status']}")
  return lines or ["- none"]


def markdown(report, notes):
  machine, versions, settings = report["machine"], report["versions"], report["settings"]
  lines = [
      "# Benchmarks", "",
      "Generated by `python benchmarks/report.py` from the JSON of the run below; only the notes are written by",
      "hand. Issue #4's harness: `tfp_hessian/bench.py` (`python -m tfp_hessian bench --help`).", "",
      "## Machine and versions", "",
      f"- CPU: {machine['cpu']}, {machine['cores']} cores; {machine['platform']}; Python {machine['python']}.",
      f"- Load average when the run started: {', '.join(f'{x:.1f}' for x in machine['load_average_at_start'])} "
      "(a shared machine: other jobs ran throughout, so read ratios, not absolute times).",
      "- " + ", ".join(f"{k} {v}" for k, v in versions.items()) + ".",
      f"- Run {report['created'][:19]} UTC, {report['wall_time_s'] / 60:.0f} min wall time.", "",
      "## Commands", "",
      "```",
      "bash benchmarks/jax_peer/setup.sh          # once: the JAX peer's own venv (benchmarks/jax_peer/.venv)",
      report["command"] or "python -m tfp_hessian bench",
      "python benchmarks/report.py benchmarks/results.json --markdown BENCHMARKS.md --plot benchmarks/time_vs_dim.png",
      "```", "",
      "## What is measured", "",
      f"Three flows of 4 layers with random (not near-identity) weights on a `MultivariateNormalDiag` base, "
      f"{settings['num_points']} points per call (sampled from the flow), dims {settings['dims']}:",
      "`elementwise_affine` = (`ScaleMatvecTriL` → `Shift` → `SinhArcsinh`) × 4; `realnvp` = 4 `RealNVP` "
      "couplings with `DenseShiftAndLogScale([64, 64], tanh)` and `Permute` between; `maf` = 4 "
      "`MaskedAutoregressiveFlow`s with `AutoregressiveNetwork(params=2, hidden_units=[64, 64], tanh)` (random "
      "masked kernels) and `Permute` between.", "",
      "Every method is a `tf.function` (`+ XLA`: `jit_compile=True`) called on the same points. After a first "
      "call (timed separately: tracing and compiling) and one warm-up call, the methods' calls are interleaved "
      f"round-robin in a random order each round, up to {settings['repeats']} calls each (methods slower than "
      f"{settings['time_budget']:g} s of calls per cell allows get fewer, at least one); the tables give the "
      "median and interquartile range. Methods predicted (extrapolated from the smaller D, at least as D³) or "
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
      "## Summary", "",
      "Median time per call for all points; 'speedup' is the other method's time over ours (> 1: ours is "
      "faster). The fastest alternative is the fastest of every method but ours (XLA and JAX included).", "",
      *summary_table(report),
      "## Time per call (all points)", "",
      "×log_prob and ×ours: the method's median over that of `log_prob` alone and of ours.", "",
      *timing_tables(report),
      "## Growth with D", "",
      f"Log–log slope of the median time against D over the dims run ({', '.join(map(str, settings['dims']))}): "
      "the empirical exponent of each method's cost.", "",
      *exponent_table(report),
      "![time per call against D](benchmarks/time_vs_dim.png)", "",
      "## Targets of issue #4", "",
      "'Alternatives' are every other way to the Hessian timed here: tf.hessians, nested tapes, forward-over-"
      "reverse, with and without XLA, and the JAX peer (ours + XLA is ours).", "",
      *target_table(report),
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

  flows, dtypes = report["settings"]["flows"], report["settings"]["dtypes"]
  methods = _methods(report)
  cmap = plt.get_cmap("tab10")
  # Ours bold, log_prob dotted (not a Hessian), XLA-compiled methods (JAX included) dashed.
  style = {m: dict(color=cmap(i), marker="os^v<>Dpx*"[i % 10], lw=2.5 if m == "ours" else 1.2,
                   ls=":" if m == "log_prob" else ("--" if m.endswith("_xla") or m == "jax" else "-"))
           for i, m in enumerate(methods)}
  fig, axes = plt.subplots(len(dtypes), len(flows), figsize=(4.6 * len(flows), 3.8 * len(dtypes)), squeeze=False,
                           sharex=True)
  for i, dtype in enumerate(dtypes):
    for j, flow in enumerate(flows):
      ax = axes[i][j]
      for method in methods:
        points = sorted((c["dim"], c["results"][method]["median_ms"]) for c in report["cells"]
                        if c["flow"] == flow and c["dtype"] == dtype and method in c["results"]
                        and c["results"][method].get("median_ms") is not None)
        if points:
          ax.plot(*zip(*points), label=SHORT.get(method, method).strip("*"), **style[method])
      ax.set_xscale("log")
      ax.set_yscale("log")
      ax.set_xticks(report["settings"]["dims"])
      ax.set_xticklabels(report["settings"]["dims"])
      ax.minorticks_off()
      ax.grid(True, which="major", alpha=0.3)
      ax.set_title(f"{flow}, {dtype}")
      if i == len(dtypes) - 1:
        ax.set_xlabel("D")
      if j == 0:
        ax.set_ylabel(f"ms per call ({report['settings']['num_points']} points)")
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
  parser.add_argument("json", help="a report written by `python -m tfp_hessian bench --json`")
  parser.add_argument("--markdown", help="write BENCHMARKS.md here (keeping its notes and appendix)")
  parser.add_argument("--plot", help="write the log-log plot of time against D here (PNG)")
  args = parser.parse_args(argv)
  report = json.loads(pathlib.Path(args.json).read_text())
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
