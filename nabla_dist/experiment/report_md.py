"""report.md: the runs' numbers, the scaling fits, the comparisons and the choice by difficulty,
in tables and sentences (the analyses are scaling.py's and difficulty.py's)."""

from __future__ import annotations

import math
from pathlib import Path

from nabla_dist.experiment.collect import MEASURES, pareto_front, points, title
from nabla_dist.experiment.fits import ALPHA_MAX, ALPHA_MIN, FORMS


def fmt(value, flops: bool = False) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return str(value)
    if abs(value) < 5e-5 and not flops:
        value = 0  # no "-0" from a bound's last bit
    if flops:
        return f"{value:.3e}"
    if isinstance(value, int) or float(value).is_integer():
        return f"{int(value):,}"
    return f"{value:,.1f}" if abs(value) >= 1000 else f"{value:.4f}".rstrip("0").rstrip(".")


def _ci(row: dict, key: str, signed: bool = False) -> str:
    """value [low, high] of `key` (`key`_ci_low / _ci_high)."""
    if row.get(key) is None:
        return "—"
    value = fmt(row[key])
    if signed and row[key] > 0 and value != "0":
        value = "+" + value
    return f"{value} [{fmt(row.get(key + '_ci_low'))}, {fmt(row.get(key + '_ci_high'))}]"


def _table(header: list[str], lines: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header),
            *["| " + " | ".join(line) + " |" for line in lines], ""]


def _budgets(values: list[float], flops: bool) -> str:
    return ", ".join(fmt(v, flops) for v in values)


def _runs_section(rows: list[dict], runs: dict) -> list[str]:
    swept = [k for k in runs["swept"] if k != "method.name"]
    name = lambda r: r["run"] + ("" if r["source"] == "run" else f" ({r['source']})")  # noqa: E731
    rescored = sum(r["source"] != "run" for r in rows)
    lines = [f"# Report: {title(runs)}", "",
             f"{len(rows) - rescored} runs" + (f" and {rescored} rows re-scored at smaller N from an SC / BoN run's "
                                               "candidates, marked \"rescored from N\"" if rescored else "")
             + ". The numbers of a run are its summary.json's; 95% bootstrap intervals in brackets; "
             "k = repeats per problem; per problem = mean over results.", "", "## Accuracy", ""]
    lines += _table(["run", "method", *swept, "problems", "k", "avg@k", "pass@k", "maj@k"],
                    [[name(r), r["method"], *[fmt(r.get(k)) for k in swept], fmt(r["problems"]), fmt(r["k"]),
                      _ci(r, "avg@k"), _ci(r, "pass@k"), _ci(r, "maj@k")] for r in rows])
    lines += ["## Compute (per problem unless total)", ""]
    lines += _table(["run", "model calls", "honest calls", "forward tokens", "backward tokens", "FLOPs",
                     "run wall s", "wall s / problem"],
                    [[name(r), fmt(r["model_calls_mean"]), fmt(r["model_calls_honest_mean"]),
                      fmt(r["forward_tokens_mean"]), fmt(r["backward_tokens_mean"]), fmt(r["flops_mean"], True),
                      fmt(r["run_wall_s"]), fmt(r["wall_s_per_result"])] for r in rows])
    lines += ["## ∇-Reasoner statistics", "",
              "rejection rate = rejected / compared proposals; cache skip = inner steps served by the gradient "
              "cache / inner steps; selection skip = response tokens committed without optimization / response "
              "tokens; rollouts saved by reuse = optimized positions whose resampled token kept the rollout "
              "(per problem; the tokens a regeneration would have cost are not recorded).", ""]
    lines += _table(["run", "rejection rate", "cache skip rate", "selection skip rate", "rollouts saved by reuse"],
                    [[name(r), fmt(r["rejection_rate"]), fmt(r["cache_skip_rate"]), fmt(r["selection_skip_rate"]),
                      fmt(r["rollouts_saved_by_reuse_mean"])] for r in rows if r["method"] == "nabla"]
                    or [["(no ∇-Reasoner run)", "—", "—", "—", "—"]])
    return lines


def _fits_section(analysis: dict) -> list[str]:
    problems, measures = len(analysis["problems"]), analysis["measures"]
    lines = ["## Fits with uncertainty", "",
             "Per curve and compute measure c, least squares of the points' mean accuracy on two forms, with "
             "c0 = the curve's smallest compute: **log-linear** acc = a + b·log10(c/c0) (a: accuracy at c0, b: "
             "accuracy gained per tenfold compute) and **power** (saturating) acc = A − (A − a)·(c/c0)^(−α) = "
             f"A − B·c^(−α) (A: the level approached as compute grows, a ceiling when the curve rises; α: the rate; "
             "B = (A − a)·c0^α follows from them and is not tabulated, in FLOPs it spans tens of orders of "
             "magnitude). Bounds: a, A and the line's values "
             f"over the fitted range in [0, 1], α in [{ALPHA_MIN}, {ALPHA_MAX}], so no fit predicts an accuracy "
             "outside [0, 1]. **Chosen by held-out error**: leave one budget out (each but the smallest, where the "
             "forms are anchored), fit the others, predict it; "
             "the form of lowest root-mean-square error wins (ties to log-linear). A form is judged only with "
             "one budget more than its coefficients (log-linear 3, power 4); with none judged, log-linear is "
             f"kept. Brackets: 95% percentile intervals over {analysis['bootstrap']} bootstrap resamples of the "
             f"{problems} problems (seed {analysis['seed']}), the same resamples for every curve, each form refitted "
             "on each resample (the choice of form is not redone); a point's compute is held at its mean. A curve "
             "with one budget (greedy) has no fit.", ""]
    table = []
    for m in measures.values():
        flops = m.measure == "FLOPs"
        for f in m.fit_rows:
            coefficients = "; ".join(f"{c} = {_ci(f, c)}" for c in FORMS[f["form"]].coefficients)
            table.append([m.measure, f["curve"], f["form"] + (" ✓" if f["chosen"] else ""), fmt(f["c0"], flops),
                          coefficients, fmt(f["heldout_rmse"]), fmt(f["r2"]), str(f["points"])])
    lines += _table(["compute", "curve", "form (✓ chosen)", "c0", "coefficients [95% CI]", "held-out RMSE", "R²",
                     "points"], table or [["—", "(fewer than two budgets per curve)", "", "", "", "", "", ""]])
    lines += ["### Predicted accuracy at report budgets", "",
              "The chosen fit of each curve at round budgets of each measure, inside the curve's own range only.", ""]
    for m in measures.values():
        chosen = [p for p in m.predictions if p["chosen"]]
        if not chosen:
            continue
        flops = m.measure == "FLOPs"
        lines += [f"{m.measure}:", ""]
        curves = list(dict.fromkeys(p["curve"] for p in chosen))
        cell = {(p["curve"], p["compute"]): _ci(p, "accuracy") for p in chosen}
        lines += _table(["curve (form)", *[fmt(c, flops) for c in m.budgets]],
                        [[f"{c} ({next(p['form'] for p in chosen if p['curve'] == c)})",
                          *[cell.get((c, b), "—") for b in m.budgets]] for c in curves])
    return lines


def _comparison_sentence(rows: list[dict], flops: bool) -> str:
    a, b = rows[0]["curve_a"], rows[0]["curve_b"]
    above = [r["compute"] for r in rows if r["difference_ci_low"] > 0]
    below = [r["compute"] for r in rows if r["difference_ci_high"] < 0]
    same = [r["compute"] for r in rows if not r["distinguishable"]]
    parts = []
    if above:
        parts.append(f"{a} is above {b} at {_budgets(above, flops)}")
    if below:
        parts.append(f"{a} is below {b} at {_budgets(below, flops)}")
    if same:
        parts.append(f"the difference is not distinguishable from zero at {_budgets(same, flops)}")
    widest = max(rows, key=lambda r: abs(r["difference"]))
    return (f"{a} − {b}: " + "; ".join(parts) + f" (largest: {_ci(widest, 'difference', True)} at "
            f"{fmt(widest['compute'], flops)}).")


def _comparisons_section(analysis: dict) -> list[str]:
    lines = ["## Methods at equal compute", "",
             "For each pair of curves, the difference of their chosen fits at the report budgets inside both ranges "
             "(a one-budget curve: at its own compute, against the other's fit there), with a paired 95% interval "
             "(the same resampled problems for both). Distinguishable from zero when the interval excludes 0.", ""]
    table = []
    for m in analysis["measures"].values():
        flops = m.measure == "FLOPs"
        pairs = list(dict.fromkeys((c["curve_a"], c["curve_b"]) for c in m.comparisons))
        if pairs:
            lines.append(f"{m.measure}:")
            lines += [f"- {_comparison_sentence([c for c in m.comparisons if (c['curve_a'], c['curve_b']) == p], flops)}"
                      for p in pairs]
            lines.append("")
        table += [[m.measure, f"{c['curve_a']} − {c['curve_b']}", fmt(c["compute"], flops),
                   _ci(c, "difference", True), "yes" if c["distinguishable"] else "no"] for c in m.comparisons]
    lines += _table(["compute", "pair", "budget", "difference [95% CI]", "distinguishable"],
                    table or [["—", "(no two curves share a compute range)", "", "", ""]])
    return lines


def _extrapolation_section(analysis: dict) -> list[str]:
    lines = ["## Extrapolation check", "",
             "Each form fitted to every budget but the largest, then asked for the largest: error = predicted − "
             "observed, with a paired 95% interval. An error whose interval excludes 0 says the fit should not be "
             "trusted that far (\"decades\": how far beyond the fitted range the target lies).", ""]
    table = []
    for m in analysis["measures"].values():
        flops = m.measure == "FLOPs"
        table += [[m.measure, e["curve"], e["form"] + (" ✓" if e["chosen"] else ""), fmt(e["fitted_up_to"], flops),
                   fmt(e["target"], flops), f"{e['decades_beyond']:.2f}", _ci(e, "predicted"), _ci(e, "observed"),
                   _ci(e, "error", True)] for e in m.extrapolation]
    lines += _table(["compute", "curve", "form (✓ chosen on all)", "fitted up to", "target", "decades", "predicted",
                     "observed", "error"], table or [["—", "(no curve has three budgets)", "", "", "", "", "", "", ""]])
    return lines


def _difficulty_section(analysis: dict, plots: list[str]) -> list[str]:
    bins, half = analysis["bins"], analysis["split_bins"]
    lines = ["## Difficulty bins and the compute-optimal choice", ""]
    if bins is None:
        return lines + ["No base for difficulty bins: the report has neither an SC / BoN run with candidates nor a "
                        "greedy run with graded results.", ""]
    sizes = {number: int((bins.labels == number).sum()) for number, _ in bins.ranges()}
    lines += [f"Base score: {bins.base}. {bins.count} bin{'s' if bins.count > 1 else ''} (of {analysis['bins_asked']} "
              "asked: quantiles of the "
              "scores; tied scores share a bin); bin 1 is the easiest.", ""]
    lines += _table(["bin", "base score", "problems"], [[str(n), scores, str(sizes[n])] for n, scores in bins.ranges()])
    if half is not None:
        lines += ["Held-out rows' bins (edges from the selecting half): " + "; ".join(
            f"bin {n} {scores}: {int(((half.labels == n) & half.select).sum())} + "
            f"{int(((half.labels == n) & half.evaluate).sum())} problems" for n, scores in half.ranges())
            + " (selecting + evaluating half).", ""]
    lines += ["At each budget the options are the report's points (every method at every budget it was run or "
              "re-scored at) whose mean compute per problem is at most the budget; the choice per bin takes the "
              "option of highest accuracy on that bin, the best single method the option of highest accuracy "
              "on all problems (ties to the cheaper). Both spend at most the budget per problem on average (a "
              "point's compute is its mean over all problems; cost differences between bins are not modelled). "
              "Choices are held fixed; intervals are over resamples of the problems they are evaluated on.", "",
              "**Optimism.** In-sample, the bins and the choices are made on the same problems the accuracy is "
              "measured on, so the per-bin choice cannot lose: its gain there is an upper bound, not evidence. "
              "The base score is also an oracle (it uses the gold answers), and when it comes from an SC / BoN "
              "run's candidates, those are the very samples SC and BoN are scored on. "
              + (f"The held-out rows (--split, seed {analysis['seed']}) take edges and choices from a random half "
                 f"({int(half.select.sum())} problems) and measure them on the other ({int(half.evaluate.sum())}), "
                 "where the choice can lose." if half is not None else
                 "Run `nabla-dist report … --split` to take edges and choices from a random half of the problems "
                 "and measure them on the other half."), ""]
    for measure in analysis["measures"]:
        choices = [c for c in analysis["choices"] if c["measure"] == measure]
        if not choices:
            continue
        flops = measure == "FLOPs"
        # the held-out rows' bins come from the selecting half: their count can differ from the in-sample one
        numbers = sorted({int(k[3:]) for c in choices for k in c if k[3:].isdigit() and k.startswith("bin")})
        lines += [f"{measure}:", ""]
        lines += _table(["evaluation", "budget", *[f"bin {n}" for n in numbers], "per-bin choice", "best single",
                         "gain"],
                        [[c["evaluation"], fmt(c["compute"], flops),
                          *[f"{c[f'bin{n}']} ({fmt(c[f'bin{n}_accuracy'])})" if f"bin{n}" in c else "—"
                            for n in numbers],
                          _ci(c, "choice"), f"{c['single_option']}: {_ci(c, 'single')}", _ci(c, "gain", True)]
                         for c in choices])
    lines += [f"![{stem}]({stem}.png)" for stem in plots if stem.startswith("difficulty_vs_")]
    return lines + [""]


def write_markdown(path: Path, rows: list[dict], analysis: dict, notes: list[str], runs: dict,
                   plots: list[str]) -> None:
    lines = _runs_section(rows, runs)
    if analysis["problems"]:
        lines += _fits_section(analysis) + _comparisons_section(analysis) + _extrapolation_section(analysis)
        lines += _difficulty_section(analysis, plots)
    else:
        lines += ["## Fits, comparisons and difficulty", "",
                  "No run has graded per-problem results (results.jsonl with gold answers): nothing to fit.", ""]
    lines += ["## Pareto fronts (all methods)", ""]
    name = lambda r: r["run"] + ("" if r["source"] == "run" else f" ({r['source']})")  # noqa: E731
    for measure, (column, _, _) in MEASURES.items():
        front = pareto_front(points(rows, column))
        lines.append(f"- {measure}: " + (" → ".join(f"{name(r)} ({fmt(x, measure == 'FLOPs')}, {fmt(y)})"
                                                      for x, y, r in front) or "—"))
    count = lambda role: ", ".join(f"{path}: {fmt(p)}" for path, p in runs["params"][role].items()) or "—"  # noqa
    lines += ["", "## FLOP estimate", "",
              "FLOPs per problem = 2·P·forward tokens + 2·P·backward tokens (a forward pass is 2·P per token; the "
              "backward passes go to the input embeddings with frozen weights: activation gradients only, ≈ 2·P). "
              "P = policy parameters less an untied input embedding table; attention-score FLOPs left out. "
              "Reward-model tokens are charged at the policy's P (the records do not split tokens by model).", "",
              f"- P (policy): {count('policy')}", f"- P (reward, for comparison): {count('reward')}", "",
              "## Plots", ""]
    lines += [f"![{stem}]({stem}.png)" for stem in plots if not stem.startswith("difficulty_vs_")]
    lines += ["", "Filled markers: runs; open markers: re-scored at smaller N from a larger-N run's candidates. "
              "Lines and shaded bands: each curve's chosen fit and its 95% bootstrap band. Dashed black steps: the "
              "Pareto front over all methods.", ""]
    if notes:
        lines += ["## Notes", "", *[f"- {n}" for n in notes], ""]
    path.write_text("\n".join(lines))
