import threading

import pytest

from nabla_dist.experiment.grading import (
    GradeResult,
    extract_answer,
    extract_boxed,
    grade,
    is_equivalent,
)


@pytest.mark.parametrize(
    "text, expected",
    [
        ("so the result is \\boxed{42}.", "42"),
        ("\\boxed{\\frac{1}{2}}", "\\frac{1}{2}"),
        ("\\boxed{\\left\\{1, \\sqrt{\\frac{a}{b}}\\right\\}}", "\\left\\{1, \\sqrt{\\frac{a}{b}}\\right\\}"),
        ("first \\boxed{1}, then \\boxed{2}, finally \\boxed{3}", "3"),
        ("$\\boxed 5$.", "5"),
        ("hence \\boxed 7.", "7"),
        ("\\fbox{12}", "12"),
        ("\\boxed{1} and \\fbox{2}", "2"),
        ("\\boxed {  9 }", "9"),
        ("\\boxed{3} then the output stopped at \\boxed{4", "3"),
        ("no box here, the answer is 5", None),
        ("\\boxeds{3}", None),
        ("", None),
    ],
)
def test_extract_boxed_takes_last_complete_box(text, expected):
    assert extract_boxed(text) == expected


@pytest.mark.parametrize(
    "text, expected",
    [
        ("Thus \\boxed{17}. The answer is 12.", "17"),
        ("So the answer is 12.", "12"),
        ("The final answer is $\\frac{3}{4}$. Done.", "\\frac{3}{4}"),
        ("**Answer:** 42\nsome trailing text 7", "42"),
        ("answer: 0.5", "0.5"),
        ("The answer is 5. Then we check 7.", "5"),
        ("We first get 3 and then 1,250 apples in total", "1250"),
        ("ratio is 3/4 overall", "3/4"),
        ("\\boxed{} but the answer is 8", "8"),
        ("I cannot solve this.", None),
        ("", None),
    ],
)
def test_extract_answer_falls_back_from_box_to_phrase_to_last_number(text, expected):
    assert extract_answer(text) == expected


@pytest.mark.parametrize(
    "pred, gold, expected",
    [
        # fractions and decimals
        ("0.5", "\\frac{1}{2}", True),
        ("1/2", "0.5", True),
        ("\\frac12", "\\dfrac{1}{2}", True),
        ("\\frac{2}{4}", "\\frac{1}{2}", True),
        ("0.33", "\\frac{1}{3}", False),
        ("-\\frac{3}{2}", "-1.5", True),
        ("1,000", "1000", True),
        # percentages: the percent sign is a unit
        ("50\\%", "50", True),
        ("50", "50\\%", True),
        ("50%", "50\\%", True),
        ("0.5", "50\\%", False),
        # radicals
        ("2\\sqrt{2}", "\\sqrt{8}", True),
        ("\\sqrt2", "\\sqrt{2}", True),
        ("\\frac{\\sqrt{3}}{2}", "\\sqrt{3}/2", True),
        ("\\sqrt{3}", "\\sqrt{2}", False),
        # tuples, sets, intervals
        ("(1, 2)", "(1,2)", True),
        ("(2, 1)", "(1,2)", False),
        ("\\{2, 1\\}", "\\{1,2\\}", True),
        ("[1, 2)", "[1,2)", True),
        ("(1, 2]", "[1,2)", False),
        ("(-\\infty, 3]", "(-\\infty,3]", True),
        # units and text around the answer
        ("5 cm", "5", True),
        ("5\\text{ cm}", "5", True),
        ("\\text{5 apples}", "5", True),
        ("12 m^2", "12", True),
        ("30^\\circ", "30", True),
        ("\\$5", "5", True),
        ("\\text{Monday}", "Monday", True),
        ("\\text{(B)}", "B", True),
        ("6 cm", "5", False),
        # equations and symbolic forms
        ("x = 5", "5", True),
        ("2x + 2", "2(x+1)", True),
        ("\\pi", "3.14", False),
        # junk
        ("}{", "5", False),
        ("", "5", False),
        ("\\frac{", "\\frac{1}{2}", False),
        ("5", "", False),
        ("no idea", "5", False),
    ],
)
def test_is_equivalent_matches_hand_verdicts(pred, gold, expected):
    assert is_equivalent(pred, gold) is expected


@pytest.mark.parametrize("junk", [None, 5, ["5"], b"5"])
def test_is_equivalent_returns_false_for_non_strings(junk):
    assert is_equivalent(junk, "5") is False
    assert is_equivalent("5", junk) is False


@pytest.mark.parametrize(
    "response, gold, correct",
    [
        ("\\boxed{033}", "33", True),
        ("\\boxed{33}", "033", True),
        ("\\boxed{33.0}", "33", True),
        ("\\boxed{33.5}", "33", False),
        ("\\boxed{\\frac{66}{2}}", "33", True),
        ("\\boxed{34}", "33", False),
        ("The answer is 33.", "33", True),
        ("\\boxed{x+1}", "33", False),
        ("I give up.", "33", False),
    ],
)
def test_grade_integer_mode_needs_the_same_integer(response, gold, correct):
    assert grade(response, gold, kind="integer").correct is correct


def test_grade_reports_extracted_prediction_and_verdict():
    assert grade("so \\boxed{\\frac{1}{2}}", "0.5") == GradeResult(pred="\\frac{1}{2}", correct=True)
    assert grade("nothing to see", "0.5") == GradeResult(pred=None, correct=False)


def test_grade_rejects_unknown_kind_and_non_integer_gold():
    with pytest.raises(ValueError, match="kind"):
        grade("\\boxed{1}", "1", kind="multiple_choice")
    with pytest.raises(ValueError, match="integer gold"):
        grade("\\boxed{1}", "\\frac{1}{2}", kind="integer")


def test_is_equivalent_works_off_the_main_thread():
    verdicts = {}

    def judge():
        verdicts["same"] = is_equivalent("\\frac{1}{2}", "0.5")
        verdicts["different"] = is_equivalent("\\frac{1}{3}", "0.5")
        verdicts["graded"] = grade("\\boxed{033}", "33", kind="integer").correct

    worker = threading.Thread(target=judge)
    worker.start()
    worker.join(timeout=30)
    assert verdicts == {"same": True, "different": False, "graded": True}
