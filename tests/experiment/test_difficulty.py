"""Difficulty bins and the compute-optimal choice, on hand-made curves with known answers."""

from __future__ import annotations

import numpy as np
import pytest

from nabla_dist.experiment.difficulty import assign, bin_curves, bin_uppers, compute_optimal, make_bins
from nabla_dist.experiment.fits import resample_weights
from nabla_dist.experiment.scaling import Series


def curve(name: str, method: str, compute: list[float], correct: list[list[float]], budgets=None) -> Series:
    correct = np.array(correct, float)
    return Series(name, method, [f"{name}-{c}" for c in compute], budgets or list(range(1, len(compute) + 1)),
                  np.array(compute, float), correct, np.ones(correct.shape, bool))


def test_bins_are_quantiles_of_the_base_with_ties_sharing_a_bin_and_bin_one_easiest():
    scores = np.array([0, 0, 0, 0.25, 0.5, 0.5, 0.75, 1, 1, 1, np.nan])
    # quantiles at 0.2, 0.4, …, 1 of the ten scores (each an observed score): 0, 0.25, 0.5, 1, 1
    np.testing.assert_array_equal(bin_uppers(scores[:-1], 5), [0, 0.25, 0.5, 1])
    bins = make_bins("hand", scores, bins=5)
    assert bins.labels.tolist() == [4, 4, 4, 3, 2, 2, 1, 1, 1, 1, 0]  # [0, 0], (0, .25], (.25, .5], (.5, 1]; NaN: none
    assert bins.ranges() == [(1, "(0.5, 1]"), (2, "(0.25, 0.5]"), (3, "(0, 0.25]"), (4, "[0, 0]")]
    # greedy's 0/1 verdicts give two bins whatever is asked
    assert assign(np.array([1.0, 0, 1, 0]), bin_uppers(np.array([1.0, 0, 1, 0]), 5)).tolist() == [1, 2, 1, 2]
    with pytest.raises(ValueError, match="bins=0"):
        bin_uppers(scores[:-1], 0)


def hand_curves() -> list[Series]:
    """Four problems, the first two easy. A (10 per problem) solves the easy ones, B (10) one hard one,
    C (100) all four."""
    return [curve("A", "greedy", [10], [[1, 1, 0, 0]]), curve("B", "self_consistency", [10], [[0, 0, 1, 0]], [4]),
            curve("C", "best_of_n", [100], [[1, 1, 1, 1]], [16])]


def test_the_choice_per_bin_takes_the_best_affordable_option_of_each_bin_against_the_best_single_one():
    bins = make_bins("hand", np.array([1.0, 1, 0, 0]), bins=2)
    weights = resample_weights(4, 300, seed=0)
    rows = {r["compute"]: r for r in compute_optimal("model calls", hand_curves(), bins, [10, 100], weights)}
    at_10 = rows[10]  # C costs 100: not an option
    assert (at_10["bin1"], at_10["bin2"]) == ("A", "B N=4") and (at_10["bin1_accuracy"], at_10["bin2_accuracy"]) == (1, 0.5)
    assert at_10["choice"] == 0.75 and at_10["single"] == 0.5 and at_10["single_option"] == "A"
    assert at_10["gain"] == pytest.approx(0.25) and at_10["evaluation"] == "in-sample"
    assert at_10["choice_ci_low"] <= 0.75 <= at_10["choice_ci_high"]
    at_100 = rows[100]
    assert (at_100["bin1"], at_100["bin2"], at_100["single_option"]) == ("A", "C N=16", "C N=16")  # ties: the cheaper
    assert at_100["choice"] == at_100["single"] == 1 and at_100["gain"] == 0
    per_bin = {(r["bin"], r["point"]): r["accuracy"] for r in bin_curves(hand_curves(), bins, weights)}
    assert per_bin == {(1, "A"): 1, (1, "B N=4"): 0, (1, "C N=16"): 1, (2, "A"): 0, (2, "B N=4"): 0.5,
                       (2, "C N=16"): 1}


def random_curves(problems: int, seed: int) -> tuple[list[Series], np.ndarray]:
    rng = np.random.default_rng(seed)
    skill = rng.random(problems)
    curves = [curve(name, method, list(compute), (rng.random((len(compute), problems)) < skill * lift).astype(float))
              for name, method, compute, lift in (("SC", "self_consistency", [10, 20, 40, 80], 1.0),
                                                   ("BoN", "best_of_n", [10, 20, 40, 80], 1.1),
                                                   ("greedy", "greedy", [10], 0.9))]
    return curves, (rng.random((16, problems)) < skill).mean(0)  # a base run: 16 samples per problem


def test_bins_and_choice_are_deterministic_for_a_fixed_seed_and_the_split_follows_the_seed():
    curves, scores = random_curves(60, seed=1)
    weights = resample_weights(60, 200, seed=0)
    first, again = (make_bins("base", scores, bins=4, split=True, seed=3) for _ in range(2))
    np.testing.assert_array_equal(first.labels, again.labels)
    np.testing.assert_array_equal(first.select, again.select)
    assert compute_optimal("c", curves, first, [10, 30, 80], weights) == \
        compute_optimal("c", curves, again, [10, 30, 80], weights)
    assert not (first.select & first.evaluate).any() and (first.select | first.evaluate).all()
    assert abs(int(first.select.sum()) - int(first.evaluate.sum())) <= 1
    other = make_bins("base", scores, bins=4, split=True, seed=4)
    assert not np.array_equal(first.select, other.select)


def test_held_out_choices_come_from_one_half_and_are_measured_on_the_other():
    curves, scores = random_curves(80, seed=2)
    bins = make_bins("base", scores, bins=3, split=True, seed=0)
    (row,) = compute_optimal("c", curves, bins, [40], resample_weights(80, 100, seed=0))
    assert row["evaluation"] == "held-out half"
    options = [(s.point(j), s.correct[j]) for s in curves for j in range(len(s.compute)) if s.compute[j] <= 40]
    options.sort(key=lambda o: next(s.compute[j] for s in curves for j in range(len(s.compute)) if s.point(j) == o[0]))
    select, evaluate = bins.select, bins.evaluate

    def best(mask):  # first of the highest accuracy, options cheapest first
        return max(options, key=lambda o: (o[1][mask].mean(), -options.index(o)))

    single = best(select)
    chosen = {n: best(select & (bins.labels == n)) for n in (1, 2, 3)}
    assert row["single_option"] == single[0] and [row[f"bin{n}"] for n in (1, 2, 3)] == [chosen[n][0] for n in (1, 2, 3)]
    by_problem = np.array([chosen[n][1][p] for p, n in enumerate(bins.labels)])
    assert row["choice"] == pytest.approx(by_problem[evaluate].mean())
    assert row["single"] == pytest.approx(single[1][evaluate].mean())
