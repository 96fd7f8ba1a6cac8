"""The report's figures: accuracy against each compute measure with fitted bands, the rejection
rate, accuracy by difficulty bin with the compute-optimal choice. Every PNG is FIGSIZE × DPI."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from nabla_dist.experiment.collect import LABELS, MEASURES, pareto_front, points, title
from nabla_dist.experiment.scaling import MeasureAnalysis, band

MARKERS = {"nabla": "D", "greedy": "*", "self_consistency": "o", "best_of_n": "s"}
COLORS = {"greedy": "C0", "self_consistency": "C1", "best_of_n": "C2", "nabla": "C3"}  # every report alike
FIGSIZE, DPI = (9, 5.5), 100  # every PNG is 900 × 550 pixels


def curve_colors(rows: list[dict]) -> dict[str, str]:
    """A method's first curve gets the method's color, further curves (other policies, …) C4, C5, …"""
    colors, spare = {}, iter(f"C{i % 10}" for i in range(4, 1000))
    for r in rows:
        if r["curve"] not in colors:
            taken = COLORS.get(r["method"]) in colors.values()
            colors[r["curve"]] = next(spare) if taken or r["method"] not in COLORS else COLORS[r["method"]]
    return colors


def _figure(panels: int = 1):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, panels, figsize=FIGSIZE, dpi=DPI, squeeze=False)
    return plt, fig, axes[0]


def _save(plt, fig, path: Path) -> None:
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def plot_accuracy(path: Path, rows: list[dict], column: str, xlabel: str, analysis: MeasureAnalysis | None,
                  runs: dict, measure: str) -> None:
    """Points with their intervals, each curve's chosen fit with its 95% band, the Pareto front."""
    plt, fig, (ax,) = _figure()
    colors = curve_colors(rows)
    fits = {f.series.curve: f for f in analysis.fits} if analysis else {}
    for curve in colors:
        mine = sorted(points([r for r in rows if r["curve"] == curve], column), key=lambda p: p[0])
        if not mine:
            continue
        color, marker = colors[curve], MARKERS.get(mine[0][2]["method"], "o")
        size = 14 if marker == "*" else 8
        top = 4 if len(mine) == 1 else 3  # a lone point (greedy) stays visible over a curve's
        fitted = band(fits[curve]) if curve in fits else None
        label = curve + (f" ({fits[curve].chosen} fit)" if fitted else "")
        ax.plot([], [], "-" + marker, color=color, markersize=size * 0.8, label=label)
        if fitted:
            grid, value, low, high = fitted
            ax.plot(grid, value, "-", color=color, linewidth=1.5, alpha=0.8)
            ax.fill_between(grid, low, high, color=color, alpha=0.15, linewidth=0)
        else:
            ax.plot([p[0] for p in mine], [p[1] for p in mine], "-", color=color, alpha=0.4)
        for x, y, r in mine:
            low, high = r.get("avg@k_ci_low"), r.get("avg@k_ci_high")
            if low is not None:
                ax.errorbar(x, y, yerr=[[y - low], [high - y]], color=color, alpha=0.25, capsize=2)
            ax.plot(x, y, marker, color=color, markersize=size, zorder=top, alpha=0.9,
                    markerfacecolor=color if r["source"] == "run" else "none")
    front = pareto_front(points(rows, column))
    if front:
        ax.step([p[0] for p in front], [p[1] for p in front], "--", where="post", color="black", linewidth=1,
                label="Pareto front (all methods)")
        ax.plot([p[0] for p in front], [p[1] for p in front], "o", markersize=14, markerfacecolor="none",
                markeredgecolor="black", linewidth=0)
    if any(r["source"] != "run" for r in rows if r.get(column) is not None):
        ax.plot([], [], "o", color="gray", markerfacecolor="none", label="open marker: re-scored from larger N")
    if any(f.chosen != "point" for f in fits.values()):
        ax.fill_between([], [], [], color="gray", alpha=0.15, label="line and band: chosen fit, 95% bootstrap band")
    ax.set_xscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("accuracy (avg@k, 95% CI)")
    ax.set_ylim(-0.03, 1.03)
    ax.set_title(f"Accuracy against {measure}\n{title(runs)}", fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    if not front:
        ax.text(0.5, 0.5, f"no run has a {measure} value", transform=ax.transAxes, ha="center")
    else:
        ax.legend(fontsize=8, loc="best")
    _save(plt, fig, path)


def plot_rejection(path: Path, rows: list[dict], runs: dict) -> None:
    plt, fig, (ax,) = _figure()
    colors = curve_colors(rows)
    rejecting = {r["method"] for r in rows if r.get("rejection_rate") is not None}
    bars = [r for r in rows if r["source"] == "run" and r["method"] in rejecting]
    for i, r in enumerate(bars):
        rate = r.get("rejection_rate")
        ax.bar(i, rate or 0, color=colors[r["curve"]],
               label=r["curve"] if r["curve"] not in [b["curve"] for b in bars[:i]] else None)
        ax.text(i, (rate or 0) + 0.02, "no proposal\ncompared" if rate is None else f"{rate:.2f}", ha="center",
                fontsize=8)
    budget = {"nabla": "max_rollouts", "self_consistency": "N", "best_of_n": "N"}
    ax.set_xticks(range(len(bars)), [f"{r['curve']}\n{budget.get(r['method'], 'budget')} {r['budget']}" for r in bars],
                  fontsize=8)
    without = sorted({LABELS.get(r["method"], r["method"]) for r in rows if r["method"] not in rejecting})
    ax.set_ylabel("rejection rate (rejected / compared proposals)")
    ax.set_xlabel("run")
    ax.set_ylim(0, 1.05)
    note = f"; no rejection step: {', '.join(without)}" if without else ""
    ax.set_title(f"Rejection rate per run{note}\n{title(runs)}", fontsize=10)
    if bars:
        ax.legend(fontsize=8)
    else:
        ax.text(0.5, 0.5, "no run has a rejection step", transform=ax.transAxes, ha="center")
    _save(plt, fig, path)


def _small_log_axis(ax) -> None:
    """A narrow panel's log axis: decade labels only (minor labels overlap at this width)."""
    from matplotlib.ticker import NullFormatter

    ax.set_xscale("log")
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_ylim(-0.03, 1.03)
    ax.grid(True, which="both", alpha=0.3)
    ax.tick_params(labelsize=7)


def plot_difficulty(path: Path, rows: list[dict], bin_rows: list[dict], ranges: list[tuple[int, str]],
                    choice_rows: list[dict], xlabel: str, measure: str, runs: dict) -> None:
    """One panel per difficulty bin (each curve's accuracy on the bin's problems against the points'
    compute), and a last panel: the per-bin choice against the best single method, with 95% bands."""
    plt, fig, axes = _figure(len(ranges) + 1)
    colors = curve_colors(rows)
    column = MEASURES[measure][0]
    compute = {(r["run"], r["curve"]): r.get(column) for r in rows}
    for ax, (number, scores) in zip(axes, ranges):
        mine = [b for b in bin_rows if b["bin"] == number and compute.get((b["run"], b["curve"]))]
        for curve in dict.fromkeys(b["curve"] for b in mine):
            xs = np.array([compute[b["run"], curve] for b in mine if b["curve"] == curve])
            ys = np.array([b["accuracy"] for b in mine if b["curve"] == curve])
            order = np.argsort(xs)
            ax.plot(xs[order], ys[order], "-o", color=colors.get(curve, "gray"), markersize=4, label=curve)
        problems = mine[0]["problems"] if mine else 0
        ax.set_title(f"bin {number}: base {scores}\n{problems} problems", fontsize=8)
        _small_log_axis(ax)
    axes[0].set_ylabel("accuracy on the bin's problems")
    axes[0].legend(fontsize=6, loc="best")
    ax = axes[-1]
    for evaluation, style in (("in-sample", "-"), ("held-out half", "--")):
        mine = [c for c in choice_rows if c["evaluation"] == evaluation]
        if not mine:
            continue
        xs = [c["compute"] for c in mine]
        for name, color in (("choice", "C3"), ("single", "C0")):
            ax.step(xs, [c[name] for c in mine], style, where="post", color=color,
                    label=f"{'per-bin choice' if name == 'choice' else 'best single'} ({evaluation})")
            ax.fill_between(xs, [c[f"{name}_ci_low"] for c in mine], [c[f"{name}_ci_high"] for c in mine],
                            step="post", color=color, alpha=0.12, linewidth=0)
    _small_log_axis(ax)
    ax.set_title("compute-optimal choice\n(options costing ≤ budget)", fontsize=8)
    ax.legend(fontsize=6, loc="best")
    fig.supxlabel(xlabel, fontsize=9)
    fig.suptitle(f"Accuracy by difficulty bin against {measure} · {title(runs)}", fontsize=9)
    _save(plt, fig, path)
