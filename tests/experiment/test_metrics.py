import json
from math import comb

import pytest

from nabla_dist.experiment.metrics import (
    avg_at_k,
    maj_at_k,
    majority_vote,
    pass_at_k,
    summarize,
)


def exact_string_match(a: str, b: str) -> bool:
    return a == b


@pytest.mark.parametrize(
    "n, c, k, expected",
    [
        (5, 2, 2, 0.7),  # 1 - C(3,2)/C(5,2) = 1 - 3/10
        (5, 2, 1, 0.4),  # pass@1 is the fraction correct
        (5, 0, 3, 0.0),
        (5, 5, 1, 1.0),
        (5, 3, 3, 1.0),  # only 2 wrong, so any 3 include a correct one
        (4, 1, 2, 0.5),  # 1 - C(3,2)/C(4,2) = 1 - 3/6
        (10, 3, 5, 1 - 21 / 252),  # 1 - C(7,5)/C(10,5)
    ],
)
def test_pass_at_k_matches_hand_computed_values(n, c, k, expected):
    assert pass_at_k(n, c, k) == pytest.approx(expected)


def test_pass_at_k_is_stable_for_large_n():
    # C(1000, 500) overflows a float; the running product must not.
    expected = 1 - comb(990, 500) / comb(1000, 500)
    assert pass_at_k(1000, 10, 500) == pytest.approx(expected)


@pytest.mark.parametrize("n, c, k", [(5, 6, 1), (5, -1, 1), (5, 2, 0), (5, 2, 6)])
def test_pass_at_k_rejects_impossible_counts(n, c, k):
    with pytest.raises(ValueError):
        pass_at_k(n, c, k)


def test_avg_at_k_is_the_fraction_correct():
    assert avg_at_k([True, False, False, True]) == 0.5
    assert avg_at_k([False, False, True]) == pytest.approx(1 / 3)
    with pytest.raises(ValueError):
        avg_at_k([])


def test_majority_vote_groups_equivalent_answers():
    # 0.5 and \frac{1}{2} are one answer (count 2) and beat 3 (count 1).
    assert majority_vote(["3", "0.5", "\\frac{1}{2}"]) == "0.5"


def test_majority_vote_breaks_ties_by_earliest_first_occurrence():
    assert majority_vote(["b", "a", "a", "b"], exact_string_match) == "b"
    assert majority_vote(["a", "b", "b", "a"], exact_string_match) == "a"


def test_majority_vote_never_lets_none_win():
    assert majority_vote([None, None, None, "7"], exact_string_match) == "7"
    assert majority_vote([None, None]) is None
    assert majority_vote([]) is None


def test_maj_at_k_judges_the_majority_answer_against_gold():
    assert maj_at_k(["4", "5", "5"], "5", exact_string_match) is True
    assert maj_at_k(["4", "4", "5"], "5", exact_string_match) is False
    # a tie goes to "5", the earlier answer
    assert maj_at_k(["5", "4", "4", "5"], "5", exact_string_match) is True
    assert maj_at_k([None, None], "5", exact_string_match) is False


def test_maj_at_k_uses_math_equivalence_by_default():
    assert maj_at_k(["1/2", "0.5", "3"], "\\frac{1}{2}") is True


CORRECT = {
    "p1": [True, True, False, False],
    "p2": [False, False, False, False],
    "p3": [True, True, True, True],
    "p4": [True, False, False, False],
}
MAJORITY = {"p1": True, "p2": False, "p3": True, "p4": False}


def test_summarize_means_match_hand_computed_values():
    summary = summarize(CORRECT, MAJORITY, pass_ks=[1, 2])
    assert summary["n_problems"] == 4
    assert summary["k"] == 4
    assert summary["avg@4"] == pytest.approx((0.5 + 0 + 1 + 0.25) / 4)
    assert summary["pass@1"] == pytest.approx(summary["avg@4"])
    # pass@2 per problem: 1 - C(2,2)/C(4,2) = 5/6, 0, 1, 1 - C(3,2)/C(4,2) = 1/2
    assert summary["pass@2"] == pytest.approx((5 / 6 + 0 + 1 + 0.5) / 4)
    assert summary["maj@4"] == pytest.approx(0.5)


def test_summarize_defaults_pass_at_k_to_all_samples():
    summary = summarize(CORRECT)
    assert summary["pass@4"] == pytest.approx(3 / 4)
    assert "maj@4" not in summary


def test_summarize_intervals_are_ordered_and_contain_the_mean():
    summary = summarize(CORRECT, MAJORITY, pass_ks=[1, 2])
    for name in ("avg@4", "pass@1", "pass@2", "maj@4"):
        low, mean, high = summary[f"{name}_ci_low"], summary[name], summary[f"{name}_ci_high"]
        assert 0.0 <= low <= mean <= high <= 1.0
        assert low < high  # the problems disagree, so the interval has width


def test_summarize_interval_collapses_when_every_problem_scores_the_same():
    summary = summarize({"a": [True, True], "b": [True, True]})
    assert summary["avg@2_ci_low"] == summary["avg@2_ci_high"] == 1.0


def test_summarize_is_deterministic_and_json_serialisable():
    first = summarize(CORRECT, MAJORITY, seed=3)
    assert first == summarize(CORRECT, MAJORITY, seed=3)
    assert json.loads(json.dumps(first)) == first


def test_summarize_intervals_depend_on_the_seed():
    wide = {f"p{i}": [i % 3 == 0, i % 2 == 0] for i in range(40)}
    bounds = {
        seed: (summarize(wide, seed=seed)["avg@2_ci_low"], summarize(wide, seed=seed)["avg@2_ci_high"])
        for seed in (0, 1, 2)
    }
    assert len(set(bounds.values())) > 1


def test_summarize_rejects_uneven_samples_and_missing_majority():
    with pytest.raises(ValueError, match="same number of samples"):
        summarize({"a": [True], "b": [True, False]})
    with pytest.raises(ValueError, match="lacks"):
        summarize(CORRECT, {"p1": True})
    with pytest.raises(ValueError):
        summarize({})
