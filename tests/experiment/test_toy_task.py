import json
import re
from importlib.resources import files

import pytest

from nabla_dist.experiment import toy_task
from nabla_dist.experiment.toy_task import generate, solution_steps, split_of

STEP = re.compile(r"(\d+) ([-+*/]) (\d+) = (\d+)\.")
BOXED = re.compile(r"The answer is \\boxed\{(\d+)\}\.$")


def _check_steps(solution: str) -> int:
    """Checks every "a op b = c." step with Python integers; returns the boxed answer."""
    steps = STEP.findall(solution)
    assert steps, solution
    for a, op, b, c in map(lambda s: (int(s[0]), s[1], int(s[2]), int(s[3])), steps):
        if op == "/":
            assert b != 0 and a % b == 0, f"inexact division {a} / {b} in {solution!r}"
        expected = {"+": a + b, "-": a - b, "*": a * b, "/": a // b if b else None}[op]
        assert c == expected, f"{a} {op} {b} = {c} is wrong in {solution!r}"
        assert c >= 1
    boxed = BOXED.search(solution)
    assert boxed, solution
    assert int(boxed.group(1)) == int(steps[-1][3])
    return int(boxed.group(1))


def test_same_seed_same_problems_other_seed_others():
    assert generate(50, seed=3, split="train") == generate(50, seed=3, split="train")
    assert generate(50, seed=3, split="train") != generate(50, seed=4, split="train")


def test_a_shorter_run_is_a_prefix_of_a_longer_one():
    assert generate(20, seed=1, split="test") == generate(60, seed=1, split="test")[:20]


def test_train_and_test_are_disjoint_across_seeds():
    train = {p.question for seed in (0, 1) for p in generate(2000, seed, "train")}
    test = {p.question for seed in (0, 1) for p in generate(1000, seed, "test")}
    assert len(train) > 3000 and len(test) > 1500
    assert not train & test


def test_problems_of_a_split_are_distinct_and_labelled_by_their_hash():
    problems = generate(500, seed=0, split="test")
    assert len({p.question for p in problems}) == 500
    assert len({p.id for p in problems}) == 500
    assert all(split_of(p.question[len("Compute "):-1]) == "test" for p in problems)


def test_every_reference_step_is_correct_and_the_boxed_answer_is_the_answer():
    for p in generate(1000, seed=7, split="train"):
        assert _check_steps(p.solution) == int(p.answer)
        assert p.solution == solution_steps(p.question)


def test_number_of_steps_and_operands_follow_the_arguments():
    for p in generate(200, seed=2, split="train", min_steps=4, max_steps=5, operand_range=(3, 9)):
        n_steps = len(STEP.findall(p.solution))
        assert 4 <= n_steps <= 5
        operands = [int(x) for x in re.findall(r"\d+", p.question)]
        assert all(3 <= x <= 9 for x in operands), p.question


def test_solution_lengths_fit_a_small_policy():
    lengths = [len(p.solution) for p in generate(2000, seed=0, split="train")]
    assert min(lengths) >= 50 and max(lengths) <= 250
    assert 70 <= sum(lengths) / len(lengths) <= 150


def test_solution_steps_follows_precedence_and_parentheses():
    assert solution_steps("Compute ((17 + 25) * 3 - 48) / 6.") == (
        "17 + 25 = 42. 42 * 3 = 126. 126 - 48 = 78. 78 / 6 = 13. The answer is \\boxed{13}."
    )
    assert solution_steps("2 + 3 * 4") == "3 * 4 = 12. 2 + 12 = 14. The answer is \\boxed{14}."


@pytest.mark.parametrize("bad", ["Compute 7 / 2.", "Compute 2 ** 3.", "Compute x + 1.", "1 +"])
def test_solution_steps_rejects_what_is_not_exact_integer_arithmetic(bad):
    with pytest.raises(ValueError):
        solution_steps(bad)


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(split="dev"),
        dict(min_steps=0),
        dict(min_steps=5, max_steps=3),
        dict(operand_range=(0, 5)),
    ],
)
def test_bad_arguments_are_refused(kwargs):
    with pytest.raises(ValueError):
        generate(5, seed=0, **kwargs)


def test_too_small_a_space_of_problems_says_how_to_widen_it():
    with pytest.raises(ValueError, match="widen the operand range"):
        generate(500, seed=0, split="train", min_steps=1, max_steps=1, operand_range=(2, 3))


def test_builtin_asset_is_what_the_generator_writes():
    text = (files("nabla_dist") / "assets" / "problems" / "builtin.jsonl").read_text()
    rows = [json.loads(line) for line in text.splitlines()]
    assert rows == list(toy_task.builtin_rows())
    assert len(rows) <= 50


def test_first_error_is_the_first_character_off_the_reference():
    question = "Compute (17 + 25) * 3."
    reference = solution_steps(question)  # "17 + 25 = 42. 42 * 3 = 126. The answer is \boxed{126}."
    assert toy_task.first_error(question, reference) is None
    assert toy_task.first_error(question, reference[:20]) is None  # on the reference so far
    assert toy_task.first_error(question, "17 + 25 = 43. 43 * 3 = 129.") == len("17 + 25 = 4")
    assert toy_task.first_error(question, "17 - 25") == len("17 ")
    assert toy_task.first_error(question, reference + " And more.") == len(reference)


def test_right_continuation_is_the_rest_of_the_reference_until_the_response_leaves_it():
    question = "Compute (17 + 25) * 3."
    reference = solution_steps(question)
    assert toy_task.right_continuation(question, "17 + 25 = 4") == reference[len("17 + 25 = 4") :]
    assert toy_task.right_continuation(question, "")[:2] == "17"
    assert toy_task.right_continuation(question, reference) == ""
    assert toy_task.right_continuation(question, "17 + 25 = 43") is None
