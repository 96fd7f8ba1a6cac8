"""AIME is graded as integers: `data.grade` (default: the source's own) decides a record's
`correct`, the SC/BoN decision and maj@k, and a gold answer integer grading cannot judge is
refused before the problems run."""

from __future__ import annotations

import json

import pytest

from nabla_dist.experiment.config import ConfigError, load_config
from nabla_dist.experiment.data import grade_kind
from nabla_dist.experiment.rescore import decide, rescore_record
from nabla_dist.experiment.run import Experiment
from nabla_dist.experiment.summary import summarize_results

FAST = ["method.name=greedy", "method.max_new_tokens=4", "wandb.mode=disabled"]


def candidate(answer: str) -> dict:
    return {"response": f"\\boxed{{{answer}}}", "answer": answer, "tokens": 3, "forward_tokens": 3, "stopped": True}


def test_the_grade_is_the_sources_unless_set():
    assert grade_kind(load_config(None, ["data.name=aime2024"]).data) == "integer"
    assert grade_kind(load_config(None, ["data.name=aime2025"]).data) == "integer"
    assert grade_kind(load_config(None, ["data.name=math500"]).data) == "math"
    assert grade_kind(load_config(None, ["data.name=aime2024", "data.grade=math"]).data) == "math"
    with pytest.raises(ConfigError, match="data.grade='exact' is invalid — use one of math, integer"):
        load_config(None, ["data.grade=exact"])


def test_an_equation_is_right_by_math_equivalence_and_wrong_as_an_integer():
    """`x = 33` names 33 for math-verify, but states no integer: AIME wants the number."""
    votes = [candidate("x = 33"), candidate("x = 33"), candidate("34")]
    assert decide("self_consistency", votes, "33", "math")["correct"] is True
    assert decide("self_consistency", votes, "33", "integer")["correct"] is False
    leading_zero = [candidate("033"), candidate("12")]
    assert decide("self_consistency", leading_zero, "33", "integer")["correct"] is True
    # a record keeps its grade, so re-scoring judges the same way as the run did
    record = {"problem_id": "p", "method": "self_consistency", "gold": "33", "grade": "integer", "candidates": votes}
    assert rescore_record(record, 2)["correct"] is False


def test_maj_at_k_follows_each_records_grade():
    records = [{"problem_id": "p", "repeat": r, "method": "greedy", "gold": "33", "pred": pred, "correct": ok,
                "grade": "integer", "counts": {}, "response_tokens": 1, "wall_s": 0.1}
               for r, (pred, ok) in enumerate([("x = 33", False), ("x = 33", False), ("33", True)])]
    assert summarize_results(records, 3)["greedy"]["accuracy"]["maj@3"] == 0.0
    as_math = [{**r, "grade": "math"} for r in records]
    assert summarize_results(as_math, 3)["greedy"]["accuracy"]["maj@3"] == 1.0


def write_problems(path, golds):
    path.write_text("".join(json.dumps({"id": f"p{i}", "problem": f"What is {g}?", "answer": g}) + "\n"
                            for i, g in enumerate(golds)))
    return path


def test_an_aime_run_records_integer_grading(tiny_paths, tmp_path):
    data = write_problems(tmp_path / "aime.jsonl", ["33", "204"])
    cfg = load_config("tiny", [*FAST, "data.name=aime2024", f"data.path={data}", f"output_dir={tmp_path / 'out'}"])
    Experiment(cfg).run()
    records = [json.loads(line) for line in (tmp_path / "out" / "results.jsonl").read_text().splitlines()]
    assert len(records) == 2 and all(r["grade"] == "integer" and isinstance(r["correct"], bool) for r in records)


def test_a_gold_answer_that_is_no_integer_is_refused_naming_the_problem(tiny_paths, tmp_path):
    data = write_problems(tmp_path / "aime.jsonl", ["33", "\\frac{1}{2}"])
    cfg = load_config("tiny", [*FAST, "data.name=aime2024", f"data.path={data}", f"output_dir={tmp_path / 'out'}"])
    with pytest.raises(ConfigError, match=r"problem p1: integer grading needs an integer gold answer.*data.grade=math"):
        Experiment(cfg).run()
    results = tmp_path / "out" / "results.jsonl"
    assert not results.exists() or not results.read_text()  # no problem ran
