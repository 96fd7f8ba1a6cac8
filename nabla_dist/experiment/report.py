"""Reports: one table, compute fits and plots over run and sweep directories.

    nabla-dist report DIR [DIR ...] [--out OUT] [--params P] [--wandb MODE]

A DIR is a run directory (config.yaml + summary.json) or a sweep directory (sweep.json: its
points' run directories; points without a summary are listed as not run). OUT (default
DIR/report for one DIR, ./report for several) gets:

- summary.csv: one row per run and method, numbers copied from its summary.json — accuracy
  (avg@k, pass@1, pass@k, maj@k with 95% bootstrap intervals), model calls (paper, honest),
  tokens, wall time, rejection / cache-skip / selection-skip rates — plus what is derived
  here: FLOPs, wall time per result, rollouts saved by reuse (below).
- fits.csv and report.md: the tables, accuracy = a + b·log10(compute) per curve, the Pareto fronts.
- accuracy_vs_{model_calls,model_calls_honest,flops,wall_time}.png, rejection_rate.png.

FLOPs per problem ≈ 2·P·(forward tokens) + 2·P·(backward tokens): a forward pass costs 2·P
per token, and the backward passes of ∇-Reasoner go to the input embeddings with frozen
weights, so they compute activation gradients only (≈ 2·P, not the 4·P of training). P is
the policy's parameter count less its input embedding table (a lookup; a tied table is kept,
it is the LM head), from the config of `policy.path` (or `--params`). Attention-score FLOPs
are left out. The records do not split tokens by model, so tokens through the reward model
are charged at the policy's P too; report.md prints the reward model's P beside it.

Curves: one per method (and per swept value of any key that is not a budget key, e.g.
`policy.path`). A self-consistency / Best-of-N run also gives its points at n = 1, 2, 4, … < N,
re-scored from its candidates (rescore.py), unless a run at that n is in the report; they
are marked "rescored from N" in the tables and drawn with open markers, and have no wall
time of their own. Rollouts saved by reuse (∇-Reasoner): optimized positions whose resampled
token equals the rollout's, so the rollout is kept instead of regenerated — positions
optimized − (rollouts − 1), per problem. The tokens such a regeneration would have cost are
not recorded.
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
from omegaconf import OmegaConf

from nabla_dist.experiment.rescore import RESCORABLE, default_ns, rescore_records
from nabla_dist.experiment.results import ResultsFile
from nabla_dist.experiment.summary import summarize_results


LABELS = {"nabla": "∇-Reasoner", "greedy": "greedy", "self_consistency": "SC", "best_of_n": "BoN"}
MARKERS = {"nabla": "D", "greedy": "*", "self_consistency": "o", "best_of_n": "s"}
COLORS = {"greedy": "C0", "self_consistency": "C1", "best_of_n": "C2", "nabla": "C3"}  # every report alike
BUDGET_KEYS = {"method.name", "method.n", "method.max_rollouts", "method.max_iters", "method.max_new_tokens",
               "method.confidence_threshold", "method.grad_norm_threshold", "method.entropy_threshold"}
COPIED = ("model_calls_mean", "model_calls_honest_mean", "model_calls_total", "model_calls_honest_total",
          "forward_tokens_mean", "backward_tokens_mean", "forward_tokens_total", "backward_tokens_total",
          "response_tokens_mean", "run_wall_s", "wall_s_mean", "rejection_rate", "cache_skip_rate",
          "selection_skip_rate")
# measure -> (column, axis label, file stem)
MEASURES = {
    "model calls": ("model_calls_mean", "model calls per problem (paper count)", "accuracy_vs_model_calls"),
    "model calls (honest)": ("model_calls_honest_mean", "model calls per problem (honest count)",
                             "accuracy_vs_model_calls_honest"),
    "FLOPs": ("flops_mean", "estimated FLOPs per problem, 2·P·(forward + backward tokens)", "accuracy_vs_flops"),
    "wall time": ("wall_s_per_result", "wall time per problem (s): run wall time / results",
                  "accuracy_vs_wall_time"),
}
FIGSIZE, DPI = (9, 5.5), 100  # every PNG is 900 × 550 pixels


# -- reading runs --------------------------------------------------------------------------------
def run_dirs(path: Path) -> list[tuple[Path, dict, str | None]]:
    """(run dir, swept values, status) of a run directory or of each point of a sweep directory."""
    if (path / "sweep.json").exists():
        index = json.loads((path / "sweep.json").read_text())
        return [(path / p["dir"], p["values"], p["status"]) for p in index["points"]]
    if (path / "config.yaml").exists():
        return [(path, {}, None)]
    raise FileNotFoundError(f"{path} is neither a run directory (config.yaml) nor a sweep directory (sweep.json)")


def count_params(path: str, reward: bool = False) -> int:
    """Parameters doing matmuls per token: all, less an untied input embedding table (meta-device
    build from the model's config: no weights are read). `reward`: a one-output sequence classifier."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSequenceClassification

    from nabla_dist.engines.loading import resolve_path

    config = AutoConfig.from_pretrained(resolve_path(path))
    with torch.device("meta"):
        if reward:
            config.num_labels = 1
            model = AutoModelForSequenceClassification.from_config(config)
        else:
            model = AutoModelForCausalLM.from_config(config)
    total = sum(p.numel() for p in model.parameters())  # a tied matrix is counted once
    embedding = model.get_input_embeddings().weight
    head = model.get_output_embeddings()
    return total if head is not None and head.weight is embedding else total - embedding.numel()


def _params(path: str | None, reward: bool, notes: list[str], known: dict) -> int | None:
    """count_params once per model; None (and a note) where its config cannot be read."""
    if path and (path, reward) not in known:
        try:
            known[path, reward] = count_params(path, reward)
        except Exception as error:  # an unreachable hub id: FLOPs left blank, said in the report
            known[path, reward] = None
            notes.append(f"no parameter count for {path!r} ({type(error).__name__}: {error}); pass --params")
    return known.get((path, reward))


def _row(run: str, run_dir: Path, method: str, s: dict, cfg: dict, values: dict, params: int | None,
         source: str = "run") -> dict:
    accuracy = s.get("accuracy") or {}
    k = accuracy.get("k")
    row = {"run": run, "method": method, "source": source, "dir": str(run_dir),
           "budget": _budget(method, values, cfg), **values,
           "problems": s["problems"], "results": s["results"], "errors": s["errors"], "k": k}
    names = {"avg@k": f"avg@{k}", "pass@1": "pass@1", "pass@k": f"pass@{k}", "maj@k": f"maj@{k}"}
    for metric, key in names.items():
        for suffix in ("", "_ci_low", "_ci_high"):
            row[metric + suffix] = accuracy.get(key + suffix)
    row.update({key: s.get(key) for key in COPIED})
    if source != "run":  # re-scored: the N-run's timings are not this n's
        row.update(run_wall_s=None, wall_s_mean=None)
    row["wall_s_per_result"] = row["run_wall_s"] / s["results"] if row["run_wall_s"] and s["results"] else None
    row["params"] = params
    tokens = (s.get("forward_tokens_mean") or 0) + (s.get("backward_tokens_mean") or 0)
    row["flops_mean"] = 2 * params * tokens if params else None
    row["flops_total"] = (2 * params * ((s.get("forward_tokens_total") or 0) + (s.get("backward_tokens_total") or 0))
                          if params else None)
    return row


def _budget(method: str, values: dict, cfg: dict):
    """N for SC / BoN, max_rollouts for ∇-Reasoner, 1 for greedy."""
    if method in RESCORABLE:
        return values.get("method.n", cfg["method"]["n"])
    if method == "nabla":
        return values.get("method.max_rollouts", cfg["method"]["max_rollouts"])
    return 1


def _reuse_saved(records: list[dict]) -> float | None:
    ok = [r["counts"] for r in records if not r.get("error")]
    if not ok:
        return None
    return sum(c.get("positions_optimized", 0) - (c.get("rollouts", 1) - 1) for c in ok) / len(ok)


def collect(dirs: list[Path], params_override: int | None = None) -> tuple[list[dict], list[str], dict]:
    """(rows, notes, what was run) over every run of `dirs`."""
    rows, notes, known = [], [], {}
    runs = {"data": set(), "size": set(), "policy": set(), "reward": set(), "wandb": None, "swept": {},
            "params": {"policy": {}, "reward": {}}}  # role -> {path: P}
    for path in dirs:
        for run_dir, values, status in run_dirs(Path(path)):
            runs["swept"].update(dict.fromkeys(values))
            name = run_dir.name if len(dirs) == 1 or run_dir == Path(path) else f"{Path(path).name}/{run_dir.name}"
            if not (run_dir / "summary.json").exists():
                notes.append(f"{name}: no summary.json (status {status or 'unknown'}), not in the report")
                continue
            cfg = OmegaConf.to_container(OmegaConf.load(run_dir / "config.yaml"))
            summary = json.loads((run_dir / "summary.json").read_text())
            records = ResultsFile(run_dir / "results.jsonl").read()
            params = params_override or _params(cfg["policy"]["path"], False, notes, known)
            runs["params"]["policy"][cfg["policy"]["path"] if not params_override else "--params"] = params
            data = cfg["data"]
            runs["data"].add(f"{data['name']}{':' + Path(data['path']).name if data.get('path') else ''}")
            runs["size"].update(f"{s['problems']} problems × {data['repeats']}" for s in summary.values())
            runs["policy"].add(cfg["policy"]["path"])
            runs["wandb"] = runs["wandb"] or cfg.get("wandb")
            for method, s in summary.items():
                row = _row(name, run_dir, method, s, cfg, values, params)
                mine = [r for r in records if r["method"] == method]
                row["rollouts_saved_by_reuse_mean"] = _reuse_saved(mine) if method == "nabla" else None
                rows.append(row)
                if method in ("nabla", "best_of_n") and cfg.get("reward"):
                    runs["reward"].add(cfg["reward"]["path"])
                    if not params_override:  # shown beside the policy's P, when that is counted too
                        classifier = cfg["reward"].get("kind", "classifier") == "classifier"  # else a causal LM
                        path = cfg["reward"]["path"]
                        runs["params"]["reward"][path] = _params(path, classifier, notes, known)
                if method in RESCORABLE:
                    rows += _rescored(row, mine, cfg, values, params, s, notes)
    swept = runs["swept"] = list(runs["swept"])
    for r in rows:
        r["curve"] = _curve(r, swept)
    real = {(r["curve"], r["budget"]) for r in rows if r["source"] == "run"}
    rows = [r for r in rows if r["source"] == "run" or (r["curve"], r["budget"]) not in real]
    first = ["run", "method", "curve", "source", "dir", "budget", *swept]  # the same columns in every row
    rows = [{**{k: r.get(k) for k in first}, **{k: v for k, v in r.items() if k not in first}} for r in rows]
    return rows, notes, runs


def _rescored(row: dict, records: list[dict], cfg: dict, values: dict, params, s: dict, notes: list[str]):
    method, big_n = row["method"], int(cfg["method"]["n"])
    if big_n == 1 or not records or any(not r.get("error") and "candidates" not in r for r in records):
        return []
    if len(records) != s["results"]:
        notes.append(f"{row['run']}: results.jsonl holds {len(records)} results but summary.json "
                     f"{s['results']}; not re-scored at smaller N")
        return []
    out = []
    for n in default_ns(big_n)[:-1]:
        summary = summarize_results(rescore_records(records, n), int(cfg["data"]["repeats"]))[method]
        point = {**values, **({"method.n": n} if "method.n" in values else {})}
        r = _row(f"{row['run']}@{n}", Path(row["dir"]), method, summary, cfg, point, params,
                 source=f"rescored from N={big_n}")
        r.update(budget=n, rollouts_saved_by_reuse_mean=None)
        out.append(r)
    return out


# -- curves, fronts, fits -------------------------------------------------------------------------
def _curve(row: dict, swept: list[str]) -> str:
    """The method, and the values of swept keys other than budgets (e.g. the policy)."""
    extra = [f"{k.split('.')[-1]}={_short(row[k])}" for k in swept
             if k not in BUDGET_KEYS and row.get(k) is not None]
    return ", ".join([LABELS.get(row["method"], row["method"]), *extra])


def _short(value) -> str:
    text = str(value)
    return text.rstrip("/").rsplit("/", 1)[-1] if "/" in text else text


def _points(rows: list[dict], column: str) -> list[tuple[float, float, dict]]:
    return [(float(r[column]), float(r["avg@k"]), r) for r in rows
            if r.get(column) is not None and r.get("avg@k") is not None and r[column] > 0]


def pareto_front(points: list[tuple[float, float, dict]]) -> list[tuple[float, float, dict]]:
    """The points no other point beats on both: less (or equal) compute and more accuracy."""
    front, best = [], -math.inf
    for x, y, row in sorted(points, key=lambda p: (p[0], -p[1])):
        if y > best:
            front.append((x, y, row))
            best = y
    return front


def fit_log(xs: list[float], ys: list[float]) -> dict | None:
    """Least squares of accuracy = a + b·log10(compute); None below two distinct compute values."""
    if len(set(xs)) < 2:
        return None
    u, y = np.log10(np.asarray(xs, float)), np.asarray(ys, float)
    slope, intercept = np.polyfit(u, y, 1)
    residual = float(((y - (intercept + slope * u)) ** 2).sum())
    spread = float(((y - y.mean()) ** 2).sum())
    return {"intercept": float(intercept), "slope": float(slope), "points": len(xs),
            "r2": 1 - residual / spread if spread > 0 else None}


def fits(rows: list[dict]) -> list[dict]:
    out = []
    for measure, (column, _, _) in MEASURES.items():
        for curve in dict.fromkeys(r["curve"] for r in rows):
            points = _points([r for r in rows if r["curve"] == curve], column)
            fit = fit_log([p[0] for p in points], [p[1] for p in points])
            if fit:
                out.append({"measure": measure, "curve": curve, **fit})
    return out


# -- writing ---------------------------------------------------------------------------------------
def _fmt(value, flops: bool = False) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return str(value)
    if flops:
        return f"{value:.3e}"
    if isinstance(value, int) or float(value).is_integer():
        return f"{int(value):,}"
    return f"{value:,.1f}" if abs(value) >= 1000 else f"{value:.4f}".rstrip("0").rstrip(".")


def _interval(row: dict, metric: str) -> str:
    if row.get(metric) is None:
        return "—"
    return f"{_fmt(row[metric])} [{_fmt(row[metric + '_ci_low'])}, {_fmt(row[metric + '_ci_high'])}]"


def _table(header: list[str], lines: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header),
            *["| " + " | ".join(line) + " |" for line in lines], ""]


def title(runs: dict) -> str:
    reward = f" · reward {', '.join(sorted(runs['reward']))}" if runs["reward"] else ""
    return (f"{', '.join(sorted(runs['data']))} ({', '.join(sorted(runs['size']))}) · "
            f"policy {', '.join(sorted(runs['policy']))}{reward}")


def write_csv(path: Path, rows: list[dict]) -> None:
    columns = list(dict.fromkeys(k for r in rows for k in r))
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, columns)
        writer.writeheader()
        writer.writerows(rows)


def write_markdown(path: Path, rows: list[dict], fit_rows: list[dict], notes: list[str], runs: dict,
                   plots: list[str]) -> None:
    swept = [k for k in runs["swept"] if k != "method.name"]
    name = lambda r: r["run"] + ("" if r["source"] == "run" else f" ({r['source']})")  # noqa: E731
    rescored = sum(r["source"] != "run" for r in rows)
    lines = [f"# Report: {title(runs)}", "",
             f"{len(rows) - rescored} runs" + (f" and {rescored} rows re-scored at smaller N from an SC / BoN run's "
                                               "candidates, marked \"rescored from N\"" if rescored else "")
             + ". The numbers of a run are its summary.json's; 95% bootstrap intervals in brackets; "
             "k = repeats per problem; per problem = mean over results.", "", "## Accuracy", ""]
    lines += _table(["run", "method", *swept, "problems", "k", "avg@k", "pass@k", "maj@k"],
                    [[name(r), r["method"], *[_fmt(r.get(k)) for k in swept], _fmt(r["problems"]), _fmt(r["k"]),
                      _interval(r, "avg@k"), _interval(r, "pass@k"), _interval(r, "maj@k")] for r in rows])
    lines += ["## Compute (per problem unless total)", ""]
    lines += _table(["run", "model calls", "honest calls", "forward tokens", "backward tokens", "FLOPs",
                     "run wall s", "wall s / problem"],
                    [[name(r), _fmt(r["model_calls_mean"]), _fmt(r["model_calls_honest_mean"]),
                      _fmt(r["forward_tokens_mean"]), _fmt(r["backward_tokens_mean"]), _fmt(r["flops_mean"], True),
                      _fmt(r["run_wall_s"]), _fmt(r["wall_s_per_result"])] for r in rows])
    lines += ["## ∇-Reasoner statistics", "",
              "rejection rate = rejected / compared proposals; cache skip = inner steps served by the gradient "
              "cache / inner steps; selection skip = response tokens committed without optimization / response "
              "tokens; rollouts saved by reuse = optimized positions whose resampled token kept the rollout "
              "(per problem; the tokens a regeneration would have cost are not recorded).", ""]
    lines += _table(["run", "rejection rate", "cache skip rate", "selection skip rate", "rollouts saved by reuse"],
                    [[name(r), _fmt(r["rejection_rate"]), _fmt(r["cache_skip_rate"]), _fmt(r["selection_skip_rate"]),
                      _fmt(r["rollouts_saved_by_reuse_mean"])] for r in rows if r["method"] == "nabla"]
                    or [["(no ∇-Reasoner run)", "—", "—", "—", "—"]])
    lines += ["## Accuracy against log compute", "",
              "Least squares per curve: avg@k = a + b·log10(compute); b is the accuracy gained per tenfold "
              "compute. Points re-scored at smaller N are included.", ""]
    lines += _table(["compute", "curve", "a (intercept)", "b (per decade)", "points", "R²"],
                    [[f["measure"], f["curve"], f"{f['intercept']:.4f}", f"{f['slope']:.4f}", str(f["points"]),
                      _fmt(f["r2"])] for f in fit_rows]
                    or [["—", "(fewer than two budgets per curve)", "", "", "", ""]])
    lines += ["## Pareto fronts (all methods)", ""]
    for measure, (column, _, _) in MEASURES.items():
        front = pareto_front(_points(rows, column))
        lines.append(f"- {measure}: " + (" → ".join(f"{name(r)} ({_fmt(x, measure == 'FLOPs')}, {_fmt(y)})"
                                                      for x, y, r in front) or "—"))
    count = lambda role: ", ".join(f"{path}: {_fmt(p)}" for path, p in runs["params"][role].items()) or "—"  # noqa
    lines += ["", "## FLOP estimate", "",
              "FLOPs per problem = 2·P·forward tokens + 2·P·backward tokens (a forward pass is 2·P per token; the "
              "backward passes go to the input embeddings with frozen weights: activation gradients only, ≈ 2·P). "
              "P = policy parameters less an untied input embedding table; attention-score FLOPs left out. "
              "Reward-model tokens are charged at the policy's P (the records do not split tokens by model).", "",
              f"- P (policy): {count('policy')}", f"- P (reward, for comparison): {count('reward')}", "",
              "## Plots", ""]
    lines += [f"![{stem}]({stem}.png)" for stem in plots]
    lines += ["", "Filled markers: runs; open markers: re-scored at smaller N from a larger-N run's candidates. "
              "Dotted lines: the fits above. Dashed black steps: the Pareto front over all methods.", ""]
    if notes:
        lines += ["## Notes", "", *[f"- {n}" for n in notes], ""]
    path.write_text("\n".join(lines))


def curve_colors(rows: list[dict]) -> dict[str, str]:
    """A method's first curve gets the method's color, further curves (other policies, …) C4, C5, …"""
    colors, spare = {}, iter(f"C{i % 10}" for i in range(4, 1000))
    for r in rows:
        if r["curve"] not in colors:
            taken = COLORS.get(r["method"]) in colors.values()
            colors[r["curve"]] = next(spare) if taken or r["method"] not in COLORS else COLORS[r["method"]]
    return colors


def _figure():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=FIGSIZE, dpi=DPI)
    return plt, fig, ax


def plot_accuracy(path: Path, rows: list[dict], column: str, xlabel: str, fit_rows: list[dict], runs: dict,
                  measure: str) -> None:
    plt, fig, ax = _figure()
    colors = curve_colors(rows)
    for curve in colors:
        points = sorted(_points([r for r in rows if r["curve"] == curve], column), key=lambda p: p[0])
        if not points:
            continue
        color, marker = colors[curve], MARKERS.get(points[0][2]["method"], "o")
        size = 14 if marker == "*" else 8
        top = 4 if len(points) == 1 else 3  # a lone point (greedy) stays visible over a curve's
        xs, ys = [p[0] for p in points], [p[1] for p in points]
        ax.plot(xs, ys, "-", color=color, alpha=0.6)
        ax.plot([], [], "-" + marker, color=color, markersize=size * 0.8, label=curve)
        for x, y, r in points:
            low, high = r.get("avg@k_ci_low"), r.get("avg@k_ci_high")
            if low is not None:
                ax.errorbar(x, y, yerr=[[y - low], [high - y]], color=color, alpha=0.25, capsize=2)
            ax.plot(x, y, marker, color=color, markersize=size, zorder=top, alpha=0.9,
                    markerfacecolor=color if r["source"] == "run" else "none")
        fit = next((f for f in fit_rows if f["curve"] == curve and f["measure"] == measure), None)
        if fit:
            grid = np.geomspace(min(xs), max(xs), 50)
            ax.plot(grid, fit["intercept"] + fit["slope"] * np.log10(grid), ":", color=color, linewidth=1.5)
    front = pareto_front(_points(rows, column))
    if front:
        ax.step([p[0] for p in front], [p[1] for p in front], "--", where="post", color="black", linewidth=1,
                label="Pareto front (all methods)")
        ax.plot([p[0] for p in front], [p[1] for p in front], "o", markersize=14, markerfacecolor="none",
                markeredgecolor="black", linewidth=0)
    if any(r["source"] != "run" for r in rows if r.get(column) is not None):
        ax.plot([], [], "o", color="gray", markerfacecolor="none", label="open marker: re-scored from larger N")
    if any(f["measure"] == measure for f in fit_rows):
        ax.plot([], [], ":", color="gray", label="dotted: fit a + b·log10(compute)")
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
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def plot_rejection(path: Path, rows: list[dict], runs: dict) -> None:
    plt, fig, ax = _figure()
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
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def _log_wandb(out: Path, rows: list[dict], fit_rows: list[dict], plots: list[str], runs: dict, mode: str | None):
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
    columns = list(dict.fromkeys(k for r in rows for k in r))
    logged = {"report/summary": wandb.Table(columns=columns, data=[[r.get(c) for c in columns] for r in rows])}
    if fit_rows:
        fit_columns = list(fit_rows[0])
        logged["report/fits"] = wandb.Table(columns=fit_columns, data=[[f[c] for c in fit_columns] for f in fit_rows])
    logged.update({f"report/{stem}": wandb.Image(str(out / f"{stem}.png")) for stem in plots})
    run.log(logged)
    run.finish()


def write_report(dirs: list[Path], out: Path | None = None, params: int | None = None,
                 wandb_mode: str | None = None) -> dict:
    """summary.csv, fits.csv, report.md and the plots in `out`; returns {"rows", "fits", "out"}."""
    dirs = [Path(d) for d in dirs]
    out = Path(out) if out else (dirs[0] / "report" if len(dirs) == 1 else Path("report"))
    rows, notes, runs = collect(dirs, params)
    if not rows:
        raise FileNotFoundError(f"no finished run (summary.json) under {', '.join(map(str, dirs))}")
    out.mkdir(parents=True, exist_ok=True)
    fit_rows = fits(rows)
    write_csv(out / "summary.csv", rows)
    write_csv(out / "fits.csv", fit_rows or [{"measure": None, "curve": None, "intercept": None, "slope": None}])
    plots = []
    for measure, (column, xlabel, stem) in MEASURES.items():
        if column == "flops_mean":
            xlabel += f", P = {', '.join(sorted({_fmt(r['params']) for r in rows if r['params']}))}"
        plot_accuracy(out / f"{stem}.png", rows, column, xlabel, fit_rows, runs, measure)
        plots.append(stem)
    plot_rejection(out / "rejection_rate.png", rows, runs)
    plots.append("rejection_rate")
    write_markdown(out / "report.md", rows, fit_rows, notes, runs, plots)
    _log_wandb(out, rows, fit_rows, plots, runs, wandb_mode)
    return {"rows": rows, "fits": fit_rows, "out": out}


def _report_command(args) -> int:
    report = write_report(args.dirs, args.out, args.params, args.wandb)
    print(f"{len(report['rows'])} rows; report: {report['out']}/report.md  table: {report['out']}/summary.csv")
    return 0


def add_report_command(subparsers) -> None:
    report = subparsers.add_parser("report", help="table, fits and plots of accuracy against compute over run "
                                   "or sweep directories")
    report.add_argument("dirs", nargs="+", type=Path, help="run directories and/or sweep directories")
    report.add_argument("--out", type=Path, help="output folder (default: DIR/report, or ./report for several)")
    report.add_argument("--params", type=lambda v: int(float(v)), help="policy parameter count for the FLOP estimate "
                        "(default: from the config of policy.path)")
    report.add_argument("--wandb", choices=("disabled", "offline", "online"),
                        help="log the report to W&B (default: the runs' wandb.mode, in their group)")
    report.set_defaults(func=_report_command)
