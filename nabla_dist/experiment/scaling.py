"""Scaling analysis per compute measure: fits with intervals, methods at equal compute, extrapolation.

A curve (one method, see collect.py) gives one series per compute measure: its points'
compute (mean per problem) and per-problem accuracy. Every number here is computed once on
the problems as they are and again on each bootstrap resample of the problems (fits.py); the
same resamples serve every curve, so two curves on the same problems are compared paired
(a difference's interval is over resamples of the problems both solved or failed). A
point's compute is held at its observed mean: the bootstrap varies accuracy, not cost.

- fits: every form that the curve's distinct computes allow (fits.FORMS), the chosen one
  marked (held-out error, fits.choose_form), each coefficient with its 95% interval.
- predictions: each curve's accuracy at the measure's report budgets (`budget_grid`) inside
  its own range (no extrapolation), with intervals.
- comparisons: for each pair of curves, the difference of their chosen fits at the report
  budgets inside both ranges (a one-budget curve, e.g. greedy: at its own compute), with a
  paired interval; distinguishable from zero when the interval excludes 0.
- extrapolation: each form fitted to every budget but the largest, predicting the largest.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from itertools import combinations

import numpy as np

from nabla_dist.experiment.fits import FORMS, choose_form, fit_resampled, interval, resampled_means

SAME_COMPUTE = 1e-9  # relative tolerance for "the same compute"


@dataclass
class Series:
    """One curve's points along one compute measure, sorted by compute."""

    curve: str
    method: str
    labels: list[str]  # the points' run names
    budgets: list  # the points' budgets: N, max_rollouts, 1 for greedy
    compute: np.ndarray  # [n] mean per problem
    correct: np.ndarray  # [n, problems] accuracy per problem (0 where not graded)
    graded: np.ndarray  # [n, problems] bool

    @property
    def mean(self) -> np.ndarray:  # [n]
        return (self.correct * self.graded).sum(1) / self.graded.sum(1)

    @property
    def u(self) -> np.ndarray:
        return np.log10(self.compute)

    @property
    def distinct(self) -> int:
        return len(np.unique(self.u))

    def point(self, j: int) -> str:
        """A point's name in tables: the curve and its budget (SC N=4, ∇-Reasoner rollouts=8)."""
        key = {"self_consistency": "N", "best_of_n": "N", "nabla": "rollouts"}.get(self.method)
        return f"{self.curve} {key}={self.budgets[j]}" if key else self.curve


def series(rows: list[dict], verdicts: dict, problems: list[str], column: str) -> list[Series]:
    """The series of every curve along `column`: points with a positive compute and graded problems."""
    index = {p: i for i, p in enumerate(problems)}
    out = []
    for curve in dict.fromkeys(r["curve"] for r in rows):
        mine = [r for r in rows if r["curve"] == curve and r.get(column) and r[column] > 0
                and verdicts.get((r["run"], r["method"]))]
        if not mine:
            continue
        mine.sort(key=lambda r: r[column])
        correct, graded = np.zeros((len(mine), len(problems))), np.zeros((len(mine), len(problems)), bool)
        for j, r in enumerate(mine):
            for problem, accuracy in verdicts[r["run"], r["method"]].items():
                correct[j, index[problem]], graded[j, index[problem]] = accuracy, True
        out.append(Series(curve, mine[0]["method"], [r["run"] for r in mine], [r["budget"] for r in mine],
                          np.array([float(r[column]) for r in mine]), correct, graded))
    return out


def budget_grid(low: float, high: float, most: int = 6) -> list[float]:
    """Report budgets in [low, high]: the round values 1, 2, 5 × 10^k there (at most `most`, spread
    evenly), or four log-spaced values when fewer than three round ones fit."""
    if not 0 < low <= high:
        return []
    decades = range(math.floor(math.log10(low)) - 1, math.ceil(math.log10(high)) + 1)
    round_values = [float(f"{m}e{k}") for k in decades for m in (1, 2, 5)
                    if low * (1 - SAME_COMPUTE) <= float(f"{m}e{k}") <= high * (1 + SAME_COMPUTE)]
    if len(round_values) < 3:
        return sorted({float(f"{c:.3g}") if low <= float(f"{c:.3g}") <= high else c
                       for c in np.geomspace(low, high, 4 if high > low else 1)})
    if len(round_values) > most:
        round_values = [round_values[i] for i in np.unique(np.linspace(0, len(round_values) - 1, most).round()
                                                             .astype(int))]
    return round_values


@dataclass
class CurveFit:
    """A series with its fits (observed and per resample) and the chosen form ("point" for one compute)."""

    series: Series
    resampled: np.ndarray  # [resamples, n] mean accuracy per resample
    chosen: str = "point"
    heldout: dict = field(default_factory=dict)  # form -> held-out RMSE or None
    coefficients: dict = field(default_factory=dict)  # form -> [k]
    samples: dict = field(default_factory=dict)  # form -> [resamples, k]

    @property
    def u0(self) -> float:
        return float(self.series.u.min())

    def covers(self, c: float) -> bool:
        low, high = self.series.compute.min(), self.series.compute.max()
        return low * (1 - SAME_COMPUTE) <= c <= high * (1 + SAME_COMPUTE)

    def at(self, c: float, form: str | None = None) -> tuple[float, np.ndarray] | None:
        """(accuracy, per resample) at compute c on the chosen (or named) form; None outside the range."""
        if not self.covers(c):
            return None
        form = form or self.chosen
        if form == "point":
            j = int(np.argmin(np.abs(self.series.compute - c)))
            return float(self.series.mean[j]), self.resampled[:, j]
        u = np.array([math.log10(c)])
        return (float(FORMS[form].predict(self.coefficients[form], u, self.u0)[0]),
                FORMS[form].predict(self.samples[form], u, self.u0)[:, 0])


def fit_curve(s: Series, weights: np.ndarray) -> CurveFit:
    fit = CurveFit(s, resampled_means(s.correct, s.graded, weights))
    if s.distinct < 2:
        return fit
    fit.chosen, fit.heldout = choose_form(s.u, s.mean)
    for name, form in FORMS.items():
        if s.distinct >= form.min_points:
            fit.coefficients[name] = form.fit(s.u, s.mean)
            fit.samples[name] = fit_resampled(form, s.u, fit.resampled)
    return fit


def _coefficient_columns(name: str, fit: CurveFit) -> dict:
    """Every form's coefficient columns (blank where `name` has no such coefficient), with intervals."""
    columns = dict.fromkeys(c for form in FORMS.values() for c in form.coefficients)
    out = {}
    for column in columns:
        if column in FORMS[name].coefficients:
            i = FORMS[name].coefficients.index(column)
            low, high = interval(fit.samples[name][:, i])
            value, low, high = float(fit.coefficients[name][i]), float(low), float(high)
        else:
            value = low = high = None
        out.update({column: value, f"{column}_ci_low": low, f"{column}_ci_high": high})
    return out


def fit_rows(measure: str, fits: list[CurveFit]) -> list[dict]:
    """fits.csv: one row per curve and fitted form."""
    out = []
    for fit in fits:
        s = fit.series
        for name in fit.coefficients:
            predicted = FORMS[name].predict(fit.coefficients[name], s.u, fit.u0)
            spread = float(((s.mean - s.mean.mean()) ** 2).sum())
            out.append({"measure": measure, "curve": fit.series.curve, "form": name, "chosen": name == fit.chosen,
                        "equation": FORMS[name].equation, "points": len(s.compute),
                        "problems": int(s.graded.any(0).sum()), "c0": float(s.compute.min()),
                        **_coefficient_columns(name, fit), "heldout_rmse": fit.heldout.get(name),
                        "r2": 1 - float(((s.mean - predicted) ** 2).sum()) / spread if spread > 0 else None})
    return out


def _estimate(value: float, samples: np.ndarray) -> dict:
    low, high = interval(samples)
    return {"value": value, "ci_low": float(low), "ci_high": float(high)}


def prediction_rows(measure: str, fits: list[CurveFit], budgets: list[float]) -> list[dict]:
    """Each fitted form's accuracy at the report budgets inside the curve's range."""
    out = []
    for fit in fits:
        for name in fit.coefficients:
            for c in budgets:
                got = fit.at(c, name)
                if got:
                    e = _estimate(*got)
                    out.append({"measure": measure, "curve": fit.series.curve, "form": name,
                                "chosen": name == fit.chosen, "compute": c, "accuracy": e["value"],
                                "accuracy_ci_low": e["ci_low"], "accuracy_ci_high": e["ci_high"]})
    return out


def comparison_rows(measure: str, fits: list[CurveFit], budgets: list[float]) -> list[dict]:
    """Curve A − curve B at matched compute, paired over resamples of the problems."""
    out = []
    for a, b in combinations(fits, 2):
        if a.chosen == "point" and b.chosen == "point":
            shared = [a.series.compute[0]] if b.covers(a.series.compute[0]) else []
        elif a.chosen == "point" or b.chosen == "point":
            single = a if a.chosen == "point" else b
            shared = [float(single.series.compute[0])]
        else:
            shared = budgets
        for c in shared:
            got_a, got_b = a.at(c), b.at(c)
            if got_a is None or got_b is None:
                continue
            e = _estimate(got_a[0] - got_b[0], got_a[1] - got_b[1])
            out.append({"measure": measure, "curve_a": a.series.curve, "curve_b": b.series.curve,
                        "form_a": a.chosen, "form_b": b.chosen, "compute": float(c), "difference": e["value"],
                        "difference_ci_low": e["ci_low"], "difference_ci_high": e["ci_high"],
                        "distinguishable": bool(e["ci_low"] > 0 or e["ci_high"] < 0)})
    return out


def extrapolation_rows(measure: str, fits: list[CurveFit]) -> list[dict]:
    """Each form fitted below the largest compute, predicting it: error = predicted − observed."""
    out = []
    for fit in fits:
        s = fit.series
        top = s.compute >= s.compute.max() * (1 - SAME_COMPUTE)
        train = ~top
        if len(np.unique(s.u[train])) < 2:
            continue
        u_train, u_top = s.u[train], float(s.u[top][0])
        observed = float(s.mean[top].mean()), np.nanmean(fit.resampled[:, top], axis=1)
        for name, form in FORMS.items():
            if len(np.unique(u_train)) < form.min_points:
                continue
            coefficients = form.fit(u_train, s.mean[train])
            samples = fit_resampled(form, u_train, fit.resampled[:, train])
            predicted = (float(form.predict(coefficients, [u_top], u_train.min())[0]),
                         form.predict(samples, [u_top], u_train.min())[:, 0])
            p, o = _estimate(*predicted), _estimate(*observed)
            error = _estimate(predicted[0] - observed[0], predicted[1] - observed[1])
            out.append({"measure": measure, "curve": s.curve, "form": name, "chosen": name == fit.chosen,
                        "fitted_up_to": float(s.compute[train].max()), "points_fitted": int(train.sum()),
                        "target": float(s.compute[top][0]), "decades_beyond": u_top - float(u_train.max()),
                        "predicted": p["value"], "predicted_ci_low": p["ci_low"], "predicted_ci_high": p["ci_high"],
                        "observed": o["value"], "observed_ci_low": o["ci_low"], "observed_ci_high": o["ci_high"],
                        "error": error["value"], "error_ci_low": error["ci_low"], "error_ci_high": error["ci_high"]})
    return out


def band(fit: CurveFit, points: int = 60) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray] | None:
    """(compute, fitted accuracy, 95% low, high) along the chosen form over the curve's range."""
    if fit.chosen == "point":
        return None
    form = FORMS[fit.chosen]
    grid = np.geomspace(fit.series.compute.min(), fit.series.compute.max(), points)
    low, high = interval(form.predict(fit.samples[fit.chosen], np.log10(grid), fit.u0))
    return grid, form.predict(fit.coefficients[fit.chosen], np.log10(grid), fit.u0), low, high


@dataclass
class MeasureAnalysis:
    measure: str
    budgets: list[float]
    fits: list[CurveFit]
    fit_rows: list[dict]
    predictions: list[dict]
    comparisons: list[dict]
    extrapolation: list[dict]


def analyze(measure: str, curves: list[Series], weights: np.ndarray) -> MeasureAnalysis:
    fits = [fit_curve(s, weights) for s in curves]
    computes = np.concatenate([s.compute for s in curves]) if curves else np.array([])
    budgets = budget_grid(float(computes.min()), float(computes.max())) if len(computes) else []
    return MeasureAnalysis(measure, budgets, fits, fit_rows(measure, fits), prediction_rows(measure, fits, budgets),
                           comparison_rows(measure, fits, budgets), extrapolation_rows(measure, fits))
