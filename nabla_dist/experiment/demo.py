"""`nabla-dist demo`: the README's main job. ∇-Reasoner against greedy, self-consistency@8
and Best-of-N@8 on the same problems, on a local loopback Ray cluster; then a table and
the report plots. The models and problems are nabla_dist/configs/sweep/demo.yaml's base experiment.

It is the sweep `nabla_dist/configs/sweep/demo.yaml`, so an interrupted demo resumes where it stopped.
"""

from __future__ import annotations

import csv
from pathlib import Path

from rich.console import Console
from rich.table import Table

from nabla_dist.experiment.collect import pareto_front
from nabla_dist.experiment.metrics import paired_difference
from nabla_dist.experiment.results import ResultsFile
from nabla_dist.experiment.sweep import Sweep, load_sweep, run_sweep

COLUMNS = [  # (summary.csv column, header, format)
    ("avg@k", "accuracy", "{:.3f}"),
    ("model_calls_mean", "calls paper", "{:.0f}"),
    ("model_calls_honest_mean", "calls honest", "{:.0f}"),
    ("wall_s_per_result", "s/problem", "{:.2f}"),
    ("rejection_rate", "reject", "{:.2f}"),
    ("cache_skip_rate", "cache skip", "{:.2f}"),
    ("selection_skip_rate", "select skip", "{:.2f}"),
]


def _cell(row: dict, column: str, fmt: str) -> str:
    value = row.get(column, "")
    return fmt.format(float(value)) if value not in ("", None) else "–"


def demo_table(rows: list[dict]) -> Table:
    table = Table(title="∇-Reasoner vs baselines at a budget of 8 (accuracy with 95% bootstrap intervals)")
    table.add_column("method", no_wrap=True)
    table.add_column("accuracy [95% CI]", justify="right", no_wrap=True)
    for _, header, _ in COLUMNS[1:]:
        table.add_column(header, justify="right")
    for row in rows:
        accuracy = f"{float(row['avg@k']):.3f} [{float(row['avg@k_ci_low']):.2f},{float(row['avg@k_ci_high']):.2f}]"
        table.add_row(row["run"], accuracy, *(_cell(row, c, f) for c, _, f in COLUMNS[1:]))
    return table


def correctness(sweep: Sweep, method: str) -> dict[str, float]:
    """Problem × repeat -> 1.0 / 0.0 for the sweep's point of `method` (each demo method has one)."""
    point = next(p for p in sweep.points if p.cfg.method.name == method)
    records = ResultsFile(Path(point.cfg.output_dir) / "results.jsonl").read()
    return {f"{r['problem_id']}#{r['repeat']}": float(bool(r["correct"])) for r in records if r["correct"] is not None}


def reading(sweep: Sweep, rows: list[dict]) -> list[str]:
    """Two or three sentences that read the demo's own table."""
    front = [row for _, _, row in pareto_front([(float(r["model_calls_mean"]), float(r["avg@k"]), r) for r in rows])]
    sentences = ["On the Pareto front of accuracy against model calls (as the paper counts them): "
                 + "; ".join(f"{r['run']} ({float(r['avg@k']):.3f} at {float(r['model_calls_mean']):.0f} calls)"
                             for r in front) + "."]
    nabla = correctness(sweep, "nabla")
    for other, label in (("best_of_n", "Best-of-N@8"), ("greedy", "greedy")):
        diff, low, high = paired_difference(nabla, correctness(sweep, other))
        verdict = ("the interval holds 0: these problems do not tell the two apart" if low <= 0 <= high
                   else f"the interval excludes 0: ∇-Reasoner is {'better' if diff > 0 else 'worse'}")
        sentences.append(f"∇-Reasoner − {label}: {diff:+.3f} [{low:+.3f}, {high:+.3f}] (paired 95% bootstrap over "
                         f"problems); {verdict}.")
    return sentences


def run_demo(overrides: list[str]) -> int:
    """Run (or resume) the demo sweep, print its table and the sentences that read it; the
    exit status (1 if a point failed)."""
    sweep = run_sweep(load_sweep("demo", overrides))
    report = sweep.output_dir / "report"
    console = Console()
    if not console.is_terminal:  # a log file or pipe: no terminal width to respect
        console = Console(width=150)
    failed = [p for p in sweep.points if p.status == "failed"]
    for point in failed:
        console.print(f"[red]{point.name} failed:[/red] {point.error}")
    if (report / "summary.csv").exists():
        with open(report / "summary.csv", newline="") as f:
            rows = [r for r in csv.DictReader(f) if r["source"] == "run"]
        console.print(demo_table(rows))
        if not failed:
            for sentence in reading(sweep, rows):
                console.print(sentence)
        console.print(f"report: {report / 'report.md'}  plots: {report}/*.png")
    return 1 if failed else 0
