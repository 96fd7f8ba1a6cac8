"""Reports over run and sweep directories: tables, scaling fits with intervals, methods at equal
compute, the compute-optimal method by difficulty, plots.

    nabla-dist report DIR [DIR ...] [--out OUT] [--params P] [--wandb MODE]
                      [--bootstrap B] [--seed S] [--bins K] [--bins-from BASE] [--split]

A DIR is a run directory or a sweep directory (collect.py). OUT (default DIR/report for one
DIR, ./report for several) gets:

- summary.csv: one row per run and method (collect.py): accuracy with intervals, model
  calls (paper, honest), tokens, FLOPs, wall time, ∇-Reasoner's rates.
- fits.csv: per compute measure (paper calls, honest calls, FLOPs, wall time), curve and
  form (log-linear, power): the coefficients with 95% bootstrap intervals (`*_ci_low`,
  `*_ci_high`), the held-out error, and `chosen` (fits.py, scaling.py).
- predictions.csv (each fit at the report budgets), comparisons.csv (curve pairs at matched
  compute, paired intervals), extrapolation.csv (fit below the largest budget, predict it).
- bins.csv (each problem's base score and difficulty bin), difficulty.csv (each point's
  accuracy per bin), compute_optimal.csv (per budget: best option per bin against the best
  single option, in-sample and, with --split, on a held-out half) (difficulty.py).
- report.md: all of it in tables and sentences; plots.py's PNGs.

The tables and plots are logged to W&B in the runs' group (a sweep's points share the
sweep's group) when the runs' wandb.mode (or --wandb) is not "disabled".
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from nabla_dist.experiment import difficulty
from nabla_dist.experiment.collect import MEASURES, collect
from nabla_dist.experiment.fits import resample_weights
from nabla_dist.experiment.plots import plot_accuracy, plot_difficulty, plot_rejection
from nabla_dist.experiment.report_md import fmt, write_markdown
from nabla_dist.experiment.scaling import analyze, series

TABLES = ("summary", "fits", "predictions", "comparisons", "extrapolation", "bins", "difficulty", "compute_optimal")


def write_csv(path: Path, rows: list[dict], columns: list[str] | None = None) -> None:
    """Every key of every row is a column (`columns` when there are no rows)."""
    columns = list(dict.fromkeys(k for r in rows for k in r)) or columns or []
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, columns)
        writer.writeheader()
        writer.writerows(rows)


def analyze_report(rows: list[dict], runs: dict, bootstrap: int = 1000, seed: int = 0, bins: int = 5,
                   bins_from: str = "auto", split: bool = False) -> dict:
    """Everything report.md says beyond the runs' own numbers: {"problems", "measures": {measure:
    MeasureAnalysis}, "series": {measure: [Series]}, "bins", "split_bins", "bin_rows", "choices"}."""
    verdicts = runs["verdicts"]
    kept = {(r["run"], r["method"]) for r in rows}
    problems = sorted({p for key, v in verdicts.items() if key in kept for p in v})
    out = {"problems": problems, "measures": {}, "series": {}, "bins": None, "split_bins": None, "bin_rows": [],
           "choices": [], "bootstrap": bootstrap, "seed": seed, "bins_asked": bins}
    if not problems:
        return out
    weights = resample_weights(len(problems), bootstrap, seed)
    for measure, (column, _, _) in MEASURES.items():
        out["series"][measure] = series(rows, verdicts, problems, column)
        out["measures"][measure] = analyze(measure, out["series"][measure], weights)
    base = difficulty.base_scores(rows, runs, problems, bins_from)
    if base is None:
        return out
    out["bins"] = difficulty.make_bins(*base, bins=bins)
    out["split_bins"] = difficulty.make_bins(*base, bins=bins, split=True, seed=seed) if split else None
    widest = max(out["series"].values(), key=lambda s: sum(len(x.compute) for x in s))
    out["bin_rows"] = difficulty.bin_curves(widest, out["bins"], weights)
    for measure, analysis in out["measures"].items():
        for which in filter(None, (out["bins"], out["split_bins"])):
            out["choices"] += difficulty.compute_optimal(measure, out["series"][measure], which, analysis.budgets,
                                                         weights)
    return out


def _bin_table(analysis: dict) -> list[dict]:
    bins, half = analysis["bins"], analysis["split_bins"]
    if bins is None:
        return []
    out = []
    for i, problem in enumerate(analysis["problems"]):
        row = {"problem_id": problem, "base_score": None if np.isnan(bins.scores[i]) else float(bins.scores[i]),
               "bin": int(bins.labels[i]) or None}
        if half is not None:
            row.update(split_bin=int(half.labels[i]) or None,
                       split_half="select" if half.select[i] else "evaluate" if half.evaluate[i] else None)
        out.append(row)
    return out


def _log_wandb(out: Path, tables: dict[str, list[dict]], plots: list[str], runs: dict, mode: str | None) -> None:
    settings = runs["wandb"] or {}
    mode = mode or settings.get("mode", "disabled")
    if mode == "disabled":
        return
    import wandb

    from nabla_dist.experiment.tracking import run_id

    group = settings.get("group")
    run = wandb.init(mode=mode, project=settings.get("project", "nabla-dist"), entity=settings.get("entity"),
                     group=group, job_type="report", name=f"report-{group or out.parent.name}", id=run_id(out),
                     resume="allow", dir=str(out), settings=wandb.Settings(silent=True))
    logged = {}
    for name, rows in tables.items():
        if rows:
            columns = list(dict.fromkeys(k for r in rows for k in r))
            logged[f"report/{name}"] = wandb.Table(columns=columns, data=[[r.get(c) for c in columns] for r in rows])
    logged.update({f"report/{stem}": wandb.Image(str(out / f"{stem}.png")) for stem in plots})
    run.log(logged)
    run.finish()


def write_report(dirs: list[Path], out: Path | None = None, params: int | None = None,
                 wandb_mode: str | None = None, bootstrap: int = 1000, seed: int = 0, bins: int = 5,
                 bins_from: str = "auto", split: bool = False) -> dict:
    """The CSVs, report.md and the plots in `out`; returns {"rows", "fits", "analysis", "out"}."""
    dirs = [Path(d) for d in dirs]
    out = Path(out) if out else (dirs[0] / "report" if len(dirs) == 1 else Path("report"))
    rows, notes, runs = collect(dirs, params)
    if not rows:
        raise FileNotFoundError(f"no finished run (summary.json) under {', '.join(map(str, dirs))}")
    out.mkdir(parents=True, exist_ok=True)
    analysis = analyze_report(rows, runs, bootstrap, seed, bins, bins_from, split)
    measures = analysis["measures"].values()
    tables = {"summary": rows, "fits": [f for m in measures for f in m.fit_rows],
              "predictions": [p for m in measures for p in m.predictions],
              "comparisons": [c for m in measures for c in m.comparisons],
              "extrapolation": [e for m in measures for e in m.extrapolation], "bins": _bin_table(analysis),
              "difficulty": analysis["bin_rows"], "compute_optimal": analysis["choices"]}
    for name in TABLES:
        write_csv(out / f"{name}.csv", tables[name], ["measure", "curve", "form"] if name == "fits" else None)
    plots = []
    for measure, (column, xlabel, stem) in MEASURES.items():
        if column == "flops_mean":
            xlabel += f", P = {', '.join(sorted({fmt(r['params']) for r in rows if r['params']}))}"
        plot_accuracy(out / f"{stem}.png", rows, column, xlabel, analysis["measures"].get(measure), runs, measure)
        plots.append(stem)
    plot_rejection(out / "rejection_rate.png", rows, runs)
    plots.append("rejection_rate")
    if analysis["bins"] is not None:
        for measure, (column, xlabel, stem) in MEASURES.items():
            choices = [c for c in analysis["choices"] if c["measure"] == measure]
            if choices:
                difficulty_stem = stem.replace("accuracy_vs_", "difficulty_vs_")
                plot_difficulty(out / f"{difficulty_stem}.png", rows, analysis["bin_rows"],
                                analysis["bins"].ranges(), choices, xlabel, measure, runs)
                plots.append(difficulty_stem)
    write_markdown(out / "report.md", rows, analysis, notes, runs, plots)
    _log_wandb(out, tables, plots, runs, wandb_mode)
    return {"rows": rows, "fits": tables["fits"], "analysis": analysis, "out": out}
