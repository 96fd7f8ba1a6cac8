"""Fitted forms: the bounded least squares against brute force, recovery of known parameters,
the held-out choice, and bootstrap intervals that cover the truth."""

from __future__ import annotations

import numpy as np
import pytest

from nabla_dist.experiment.fits import (FORMS, _box_lstsq2, choose_form, fit_resampled, interval, resample_weights,
                                        resampled_means)

COMPUTE = np.array([10.0, 20, 40, 80, 160])  # five budgets, doubling: SC / BoN at N = 1 … 16
U = np.log10(COMPUTE)
TRUTH = {"log-linear": np.array([0.25, 0.3]),  # a at c0 = 10, +0.3 per decade
         "power": np.array([0.15, 0.75, 0.9])}  # a, ceiling A, rate α per decade


def problems_at(form: str, problems: int, rng: np.random.Generator) -> np.ndarray:
    """[..., problems, budgets] verdicts whose mean over problems is exactly the form at each budget:
    half the problems keep one difficulty across budgets (a problem solved at a small budget stays
    solved), half draw afresh, as correlated as real sweeps, without bias."""
    target = FORMS[form].predict(TRUTH[form], U, U[0])  # [budgets]
    shared = rng.random((*np.atleast_1d(problems), 1))
    fresh = rng.random(shared.shape[:-1] + (len(U),))
    keep = rng.random(shared.shape) < 0.5
    return (np.where(keep, shared, fresh) < target).astype(float)


def test_box_least_squares_is_the_minimum_a_brute_force_search_of_the_box_finds():
    rng = np.random.default_rng(1)
    grid = np.linspace(0, 1, 401)
    p, q = np.meshgrid(grid, grid, indexing="ij")
    for _ in range(20):
        f, g = rng.random(5), rng.random(5)
        y = rng.normal(0.5, 0.8, 5)  # often pulls the optimum outside the box
        best_p, best_q, sse = _box_lstsq2(f @ f, g @ g, f @ g, y @ f, y @ g, y @ y)
        brute = ((y - p[..., None] * f - q[..., None] * g) ** 2).sum(-1)
        i, j = np.unravel_index(np.argmin(brute), brute.shape)
        assert sse == pytest.approx(((y - best_p * f - best_q * g) ** 2).sum(), abs=1e-9)
        assert sse <= brute.min() + 1e-12
        assert abs(best_p - grid[i]) <= 0.01 and abs(best_q - grid[j]) <= 0.01


@pytest.mark.parametrize("form", FORMS)
def test_each_form_recovers_its_parameters_from_points_on_it(form):
    y = FORMS[form].predict(TRUTH[form], U, U[0])
    np.testing.assert_allclose(FORMS[form].fit(U, y), TRUTH[form], atol=1e-5)
    # the same with coefficients relative to another smallest compute: the form shifts, not the fit
    shifted = U + 3.0
    np.testing.assert_allclose(FORMS[form].predict(FORMS[form].fit(shifted, y), shifted, shifted[0]), y, atol=1e-6)


@pytest.mark.parametrize("form", FORMS)
def test_each_form_recovers_its_parameters_from_many_problems_drawn_from_it(form):
    verdicts = problems_at(form, 20000, np.random.default_rng(2))  # [problems, budgets]
    fitted = FORMS[form].fit(U, verdicts.mean(0))
    np.testing.assert_allclose(fitted, TRUTH[form], atol=0.02 if form == "log-linear" else 0.1)
    assert FORMS[form].predict(fitted, U, U[0]) == pytest.approx(FORMS[form].predict(TRUTH[form], U, U[0]), abs=0.01)


def test_fits_keep_accuracy_in_the_unit_interval_where_a_free_line_would_leave_it():
    flops = np.log10([1.3e8, 2e8, 1e9, 2e9])
    y = np.array([0.0, 0.0, 1.0, 1.0])  # a free line through these is negative at 1.3e8 and above 1 at 2e9
    slope, intercept = np.polyfit(flops, y, 1)
    assert intercept + slope * flops[0] < 0 and intercept + slope * flops[-1] > 1 and intercept < -2
    for form in FORMS.values():
        coefficients = form.fit(flops, y)
        assert 0 <= coefficients[0] <= 1  # a: the accuracy at the smallest FLOPs, not at 1 FLOP
        curve = form.predict(coefficients, np.linspace(flops[0] - 2, flops[-1] + 2, 200), flops[0])
        assert curve.min() >= 0 and curve.max() <= 1


def test_held_out_error_chooses_the_form_the_points_came_from():
    saturating = FORMS["power"].predict(np.array([0.1, 0.6, 2.0]), U, U[0])  # flat after the second budget
    chosen, scores = choose_form(U, saturating)
    assert chosen == "power" and scores["power"] < scores["log-linear"]
    straight = FORMS["log-linear"].predict(TRUTH["log-linear"], U, U[0])
    assert choose_form(U, straight)[0] == "log-linear"
    # three budgets judge the line only; two judge nothing: the line is kept either way
    chosen, scores = choose_form(U[:3], saturating[:3])
    assert chosen == "log-linear" and scores["log-linear"] > 0 and scores["power"] is None
    assert choose_form(U[:2], saturating[:2]) == ("log-linear", {"log-linear": None, "power": None})


def test_resampled_means_weigh_each_point_over_the_problems_it_graded():
    correct = np.array([[1.0, 0.0, 1.0, 0.5], [1.0, 1.0, 0.0, 0.0]])
    graded = np.array([[True, True, True, True], [True, True, False, False]])
    weights = np.array([[1.0, 1, 1, 1], [0, 2, 1, 1], [0, 0, 4, 0]])
    means = resampled_means(correct, graded, weights)
    np.testing.assert_allclose(means[:2], [[2.5 / 4, 2 / 2], [1.5 / 4, 2 / 2]])
    assert means[2, 0] == 1.0 and np.isnan(means[2, 1])  # point 2 graded none of the drawn problems
    assert resample_weights(7, 3, seed=0).sum(1).tolist() == [7, 7, 7]
    np.testing.assert_array_equal(resample_weights(7, 3, seed=0), resample_weights(7, 3, seed=0))


@pytest.mark.parametrize("form", FORMS)
def test_bootstrap_intervals_cover_the_true_coefficients_in_at_least_90_of_100_trials(form):
    """100 independent seeded sweeps of 300 problems, 400 resamples each (measured over 1000 trials:
    94–95% coverage per coefficient, so 100 trials fall below 90 only by bad luck)."""
    trials, problems, resamples = 100, 300, 400
    rng = np.random.default_rng(0)
    verdicts = problems_at(form, (trials, problems), rng)  # [trials, problems, budgets]
    means = np.stack([resample_weights(problems, resamples, seed=trial) @ verdicts[trial] / problems
                      for trial in range(trials)])  # [trials, resamples, budgets]
    samples = fit_resampled(FORMS[form], U, means.reshape(-1, len(U))).reshape(trials, resamples, -1)
    low, high = interval(np.moveaxis(samples, 1, 0))  # [trials, coefficients]
    covered = ((low <= TRUTH[form]) & (TRUTH[form] <= high)).sum(0)
    assert (covered >= 90).all(), f"{form}: coverage per coefficient {dict(zip(FORMS[form].coefficients, covered))}"
    # and the accuracy predicted at a budget between the points, the quantity users read
    middle = np.log10([30.0])
    predicted = FORMS[form].predict(samples.reshape(-1, samples.shape[-1]), middle, U[0]).reshape(trials, resamples)
    low, high = interval(predicted.T)
    truth = FORMS[form].predict(TRUTH[form], middle, U[0])[0]
    assert ((low <= truth) & (truth <= high)).sum() >= 90
