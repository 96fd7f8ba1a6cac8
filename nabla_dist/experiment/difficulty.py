"""Difficulty bins and the compute-optimal choice of method per bin (Snell et al. 2024).

Problems are binned by a base score: by default the fraction of correct candidates of the
sweep's largest SC / BoN run (each problem's pass@1 estimated from N samples, the oracle
difficulty of Snell et al.), else greedy's per-problem accuracy. Edges are quantiles of the
scores (taken at observed scores, so no bin is empty; tied scores share a bin, so fewer
bins than asked can come out); bin 1 holds the easiest problems.

At a budget c of a compute measure, the options are the report's points costing at most c
(mean per problem): every method at every budget it was run or re-scored at. The choice
per bin is the option of highest accuracy on that bin's problems (ties to the cheaper);
the best single method is the option of highest accuracy on all problems. Both spend at
most c per problem on average (a point's compute is its mean over all problems; how cost
differs between bins is not modelled). Choices are made on the observed accuracies and held
fixed; intervals are over bootstrap resamples of the problems they are evaluated on.

Evaluated on the problems the choices were made on ("in-sample"), the per-bin choice can
only gain: that is optimism, not evidence. With `split`, problems are halved at random
(seeded): edges and choices come from one half, accuracies are measured on the other
("held-out half"), where the per-bin choice can lose to the single method.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from nabla_dist.experiment.collect import candidate_accuracy
from nabla_dist.experiment.fits import interval, resampled_means
from nabla_dist.experiment.scaling import SAME_COMPUTE, Series


@dataclass
class Bins:
    base: str  # what the scores are, in words
    scores: np.ndarray  # [problems] base score, NaN where the base has none
    uppers: np.ndarray  # ascending: each bin's highest score, from the `select` problems
    labels: np.ndarray  # [problems] bin number, 1 = easiest; 0 where no score
    select: np.ndarray  # [problems] bool: problems the edges and choices come from
    evaluate: np.ndarray  # [problems] bool: problems the choices are measured on

    @property
    def count(self) -> int:
        return len(self.uppers)

    def ranges(self) -> list[tuple[int, str]]:
        """(bin, its scores in words), easiest first: bin 1 is (uppers[-2], uppers[-1]]."""
        low = float(np.nanmin(self.scores[self.select]))
        bounds = [f"[{low:.3g}, {self.uppers[0]:.3g}]"] + [f"({a:.3g}, {b:.3g}]" for a, b in
                                                          zip(self.uppers[:-1], self.uppers[1:])]
        return [(self.count - i, text) for i, text in enumerate(bounds)][::-1]


def bin_uppers(scores: np.ndarray, bins: int) -> np.ndarray:
    """Each bin's highest score: the distinct quantiles of `scores` at 1/bins, 2/bins, …, 1, each an
    observed score, so no bin is empty and tied scores share a bin."""
    if bins < 1:
        raise ValueError(f"bins={bins}: use at least one difficulty bin")
    ordered = np.sort(scores)
    n = len(ordered)
    # the i/bins quantile is the smallest score with at least i·n/bins scores at or below it (integer
    # arithmetic: a float 0.6 would land on the next score)
    return np.unique(ordered[[-(-i * n // bins) - 1 for i in range(1, bins + 1)]])


def assign(scores: np.ndarray, uppers: np.ndarray) -> np.ndarray:
    """Bin numbers (1 = the highest scores): a score goes to the first bin whose upper score it does
    not exceed (beyond the last, to the last); NaN scores to 0."""
    below = np.searchsorted(uppers[:-1], np.nan_to_num(scores, nan=0.0), side="left")  # 0 = lowest bin
    return np.where(np.isnan(scores), 0, len(uppers) - below)


def base_scores(rows: list[dict], runs: dict, problems: list[str], base: str = "auto") -> tuple[str, np.ndarray] | None:
    """(description, scores [problems]) of the bins' base; None where the report has none.

    `base`: "auto" (the largest SC / BoN run's candidates, else greedy), "greedy", or a run name
    (its candidates if it kept them, else its per-problem accuracy)."""
    candidates = runs.get("candidates", {})
    verdicts = runs.get("verdicts", {})
    chosen = None
    samples = lambda records: max(len(r.get("candidates") or []) for r in records)  # noqa: E731
    if base == "auto" and candidates:
        (run, _), records = max(candidates.items(), key=lambda item: samples(item[1]))
        chosen = (f"fraction of correct candidates in {run} ({samples(records)} samples per result)",
                  candidate_accuracy(records))
    elif base in ("auto", "greedy"):
        key = next(((r["run"], r["method"]) for r in rows if r["method"] == "greedy" and verdicts.get((r["run"], "greedy"))),
                   None)
        chosen = key and (f"greedy accuracy per problem in {key[0]}", verdicts[key])
    else:
        key = next(((r["run"], r["method"]) for r in rows if r["run"] == base), None)
        if key is None:
            raise ValueError(f"bins from {base!r}: no such run in the report; use auto, greedy or one of "
                             f"{sorted({r['run'] for r in rows})}")
        chosen = ((f"fraction of correct candidates in {base}", candidate_accuracy(candidates[key]))
                  if key in candidates else (f"accuracy per problem in {base}", verdicts.get(key, {})))
    if not chosen or not chosen[1]:
        return None
    description, by_problem = chosen
    return description, np.array([by_problem.get(p, np.nan) for p in problems])


def make_bins(description: str, scores: np.ndarray, bins: int = 5, split: bool = False, seed: int = 0) -> Bins:
    """Bins over the problems with a score; with `split`, edges from a seeded random half."""
    scored = np.flatnonzero(~np.isnan(scores))
    if not len(scored):
        raise ValueError("no problem has a base score to bin by")
    select = np.zeros(len(scores), bool)
    evaluate = np.zeros(len(scores), bool)
    if split:
        order = np.random.default_rng(seed).permutation(scored)
        half = (len(order) + 1) // 2
        select[order[:half]], evaluate[order[half:]] = True, True
    else:
        select[scored], evaluate[scored] = True, True
    uppers = bin_uppers(scores[select], bins)
    return Bins(description, scores, uppers, assign(scores, uppers), select, evaluate)


def _options(curves: list[Series]) -> tuple[list[str], list[str], np.ndarray, np.ndarray, np.ndarray]:
    """(names, curves, compute [J], correct [J, problems], graded [J, problems]) of every point, cheapest first."""
    names = [s.point(j) for s in curves for j in range(len(s.compute))]
    owners = [s.curve for s in curves for _ in s.compute]
    compute = np.concatenate([s.compute for s in curves])
    correct, graded = np.concatenate([s.correct for s in curves]), np.concatenate([s.graded for s in curves])
    order = np.argsort(compute, kind="stable")
    return [names[i] for i in order], [owners[i] for i in order], compute[order], correct[order], graded[order]


def _mean(correct: np.ndarray, graded: np.ndarray, mask: np.ndarray) -> np.ndarray:
    with np.errstate(invalid="ignore", divide="ignore"):
        return (correct * graded * mask).sum(-1) / (graded * mask).sum(-1)


def bin_curves(curves: list[Series], bins: Bins, weights: np.ndarray) -> list[dict]:
    """Per bin and point: accuracy on the bin's problems (all problems with a score), with intervals."""
    out = []
    for number, scores in bins.ranges():
        mask = bins.labels == number
        for s in curves:
            means = _mean(s.correct, s.graded, mask)
            lows, highs = interval(resampled_means(s.correct, s.graded & mask, weights))
            for j in range(len(s.compute)):
                out.append({"bin": number, "base_scores": scores, "problems": int(mask.sum()),
                            "curve": s.curve, "point": s.point(j), "run": s.labels[j], "compute": float(s.compute[j]),
                            "accuracy": float(means[j]), "accuracy_ci_low": float(lows[j]),
                            "accuracy_ci_high": float(highs[j])})
    return out


def compute_optimal(measure: str, curves: list[Series], bins: Bins, budgets: list[float],
                    weights: np.ndarray) -> list[dict]:
    """Per budget: the choice per bin against the best single option, both evaluated on `bins.evaluate`."""
    if not curves:
        return []
    names, owners, compute, correct, graded = _options(curves)
    numbers = [number for number, _ in bins.ranges()]
    in_bin = np.stack([bins.labels == number for number in numbers])  # [bins, problems]
    on_select = _mean(correct[:, None], graded[:, None], (in_bin & bins.select)[None])  # [J, bins]
    overall = _mean(correct, graded, (bins.labels > 0) & bins.select)  # [J]
    evaluation = "in-sample" if np.array_equal(bins.select, bins.evaluate) else "held-out half"
    out = []
    for c in budgets:
        affordable = (compute <= c * (1 + SAME_COMPUTE)) & ~np.isnan(overall)  # options that graded the problems
        if not affordable.any():
            continue
        single = int(np.argmax(np.where(affordable, overall, -np.inf)))  # the first maximum: the cheapest
        score = np.where(affordable[:, None], np.nan_to_num(on_select, nan=-1), -np.inf)  # [J, bins]
        per_bin = np.argmax(score, axis=0)  # [bins]
        per_bin = np.where(np.isnan(on_select[per_bin, np.arange(len(numbers))]), single, per_bin)
        chosen = per_bin[np.argmax(in_bin, axis=0)]  # [problems]: each problem's option
        rows = np.arange(correct.shape[1])
        mask = bins.evaluate & (bins.labels > 0)
        y, g = correct[chosen, rows] * mask, graded[chosen, rows] & mask
        ys, gs = correct[single] * mask, graded[single] & mask
        with np.errstate(invalid="ignore", divide="ignore"):
            choice_samples, single_samples = (weights @ (y * g)) / (weights @ g), (weights @ (ys * gs)) / (weights @ gs)
            choice_value, single_value = float((y * g).sum() / g.sum()), float((ys * gs).sum() / gs.sum())
        row = {"measure": measure, "evaluation": evaluation, "compute": c}
        row.update({f"bin{number}": names[per_bin[i]] for i, number in enumerate(numbers)})
        row.update({f"bin{number}_accuracy": float(on_select[per_bin[i], i]) for i, number in enumerate(numbers)})
        for name, value, samples in (("choice", choice_value, choice_samples),
                                     ("single", single_value, single_samples),
                                     ("gain", choice_value - single_value, choice_samples - single_samples)):
            low, high = interval(samples)
            row.update({name: value, f"{name}_ci_low": float(low), f"{name}_ci_high": float(high)})
        row["single_option"] = names[single]
        row["single_curve"] = owners[single]
        out.append(row)
    return out
