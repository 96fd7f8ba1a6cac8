"""Scaling analysis per measure: report budgets, paired comparisons, the extrapolation check."""

from __future__ import annotations

import numpy as np
import pytest

from nabla_dist.experiment.fits import FORMS, resample_weights
from nabla_dist.experiment.scaling import analyze, band, budget_grid
from tests.experiment.test_difficulty import curve

COMPUTE = [10.0, 20, 40, 80, 160]


def test_report_budgets_are_round_values_inside_the_range():
    assert budget_grid(53.1, 866) == [100, 200, 500]
    assert budget_grid(1.3e8, 4.2e9) == [2e8, 5e8, 1e9, 2e9]
    assert budget_grid(3, 2e4) == [5, 20, 100, 1000, 5000, 2e4]  # at most six of the twelve, spread evenly
    narrow = budget_grid(12, 17)  # no three round values inside: four log-spaced ones
    assert len(narrow) == 4 and narrow[0] == 12 and narrow[-1] == 17
    assert budget_grid(5, 5) == [5] and budget_grid(0, 5) == []


def verdicts_on(form: str, coefficients: list[float], problems: int, seed: int) -> list[list[float]]:
    """[budgets, problems]: each budget's verdicts with exactly the form's accuracy (problems sorted by skill)."""
    accuracy = FORMS[form].predict(np.array(coefficients), np.log10(COMPUTE), 1.0)
    rank = np.random.default_rng(seed).permutation(problems)
    return [(rank < round(a * problems)).astype(float) for a in accuracy]


def test_identical_curves_differ_by_exactly_zero_in_every_resample_and_a_dominating_one_is_distinguishable():
    problems = 200
    same = verdicts_on("log-linear", [0.1, 0.2], problems, seed=0)
    better = [np.maximum(v, np.arange(problems) < 60) for v in same]  # also solves problems 0–59 at every budget
    curves = [curve("SC", "self_consistency", COMPUTE, same), curve("BoN", "best_of_n", COMPUTE, same),
              curve("∇", "nabla", COMPUTE, better)]
    analysis = analyze("model calls", curves, resample_weights(problems, 300, seed=0))
    pairs = {(c["curve_a"], c["curve_b"], c["compute"]): c for c in analysis.comparisons}
    assert {c for _, _, c in pairs} == {10, 20, 50, 100}
    for c in (10, 20, 50, 100):
        twin = pairs["SC", "BoN", c]  # paired: the same resampled problems, so no spread at all
        assert twin["difference"] == twin["difference_ci_low"] == twin["difference_ci_high"] == 0
        assert not twin["distinguishable"]
        ahead = pairs["SC", "∇", c]
        assert ahead["difference"] < 0 and ahead["difference_ci_high"] < 0 and ahead["distinguishable"]


def test_the_extrapolation_check_finds_a_line_overshooting_a_saturating_curve():
    problems = 400
    saturating = verdicts_on("power", [0.1, 0.6, 1.5], problems, seed=1)
    straight = verdicts_on("log-linear", [0.2, 0.25], problems, seed=2)
    analysis = analyze("FLOPs", [curve("sat", "best_of_n", COMPUTE, saturating),
                                 curve("line", "self_consistency", COMPUTE, straight)],
                       resample_weights(problems, 300, seed=0))
    rows = {(e["curve"], e["form"]): e for e in analysis.extrapolation}
    assert {e["target"] for e in rows.values()} == {160} and {e["fitted_up_to"] for e in rows.values()} == {80}
    assert rows["sat", "log-linear"]["error"] > 0.02 and rows["sat", "log-linear"]["error_ci_low"] > 0
    assert rows["sat", "power"]["error"] == pytest.approx(0, abs=0.01)
    assert rows["line", "log-linear"]["error"] == pytest.approx(0, abs=0.01)
    assert rows["sat", "power"]["chosen"] and rows["line", "log-linear"]["chosen"]
    assert rows["sat", "log-linear"]["decades_beyond"] == pytest.approx(np.log10(2))


def test_the_plotted_band_brackets_the_chosen_fit_over_the_curves_range():
    problems = 100
    analysis = analyze("model calls", [curve("SC", "self_consistency", COMPUTE,
                                             verdicts_on("log-linear", [0.2, 0.25], problems, seed=3))],
                       resample_weights(problems, 200, seed=0))
    grid, value, low, high = band(analysis.fits[0])
    assert grid[0] == pytest.approx(10) and grid[-1] == pytest.approx(160)
    assert (low <= value + 1e-12).all() and (value <= high + 1e-12).all() and (high - low).min() > 0
    np.testing.assert_allclose(value, FORMS["log-linear"].predict(np.array([0.2, 0.25]), np.log10(grid), 1.0),
                               atol=0.01)
