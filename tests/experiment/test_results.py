"""The output directory: torn lines, duplicates, the resume rule, the lock, summary.json."""

from __future__ import annotations

import json

import pytest

from nabla_dist.experiment.config import ConfigError, ExperimentConfig, load_config, to_yaml
from nabla_dist.experiment.results import (
    OutputBusy,
    OutputLock,
    ResultsFile,
    resume_conflicts,
)
from nabla_dist.experiment.run import Experiment
from nabla_dist.experiment.summary import WALL_TIME_KEYS, summarize_results


def record(pid="p0", repeat=0, method="greedy", **fields):
    base = {"problem_id": pid, "repeat": repeat, "method": method, "gold": "4", "pred": "4", "correct": True,
            "response_tokens": 3, "counts": {"model_calls": 3, "model_calls_honest": 4}, "wall_s": 0.5,
            "error": None, "model_calls": 3}
    return {**base, **fields}


# -- results.jsonl ---------------------------------------------------------------------
def test_torn_last_line_is_dropped_and_cut_so_the_next_append_is_clean(tmp_path, caplog):
    path = tmp_path / "results.jsonl"
    results = ResultsFile(path)
    results.append(record("a"))
    results.append(record("b"))
    with open(path, "ab") as f:
        f.write(b'{"problem_id": "c", "repeat": 0, "meth')  # the process died mid-write
    assert [r["problem_id"] for r in results.read()] == ["a", "b"]
    assert "torn last line" in caplog.text
    assert path.read_bytes().endswith(b"}\n")
    results.append(record("c"))
    assert [r["problem_id"] for r in results.read()] == ["a", "b", "c"]


def test_a_complete_json_without_newline_is_torn_too(tmp_path):
    path = tmp_path / "results.jsonl"
    path.write_text(json.dumps(record("a")) + "\n" + json.dumps(record("b")))
    assert [r["problem_id"] for r in ResultsFile(path).read()] == ["a"]


def test_a_corrupt_line_in_the_middle_is_refused_with_its_number(tmp_path):
    path = tmp_path / "results.jsonl"
    path.write_text(json.dumps(record("a")) + "\n{garbage\n" + json.dumps(record("b")) + "\n")
    with pytest.raises(ValueError, match="line 2 is corrupt"):
        ResultsFile(path).read()


def test_duplicate_keys_keep_the_first_result(tmp_path):
    results = ResultsFile(tmp_path / "results.jsonl")
    results.append(record("a", pred="1"))
    results.append(record("a", pred="2"))
    results.append(record("a", repeat=1, pred="3"))
    assert [r["pred"] for r in results.read()] == ["1", "3"]
    assert results.done() == {("a", 0, "greedy"), ("a", 1, "greedy")}


# -- the resume rule -------------------------------------------------------------------
def conflicts(saved: list[str], now: list[str]) -> list[str]:
    return resume_conflicts(to_yaml(load_config("tiny", saved)), to_yaml(load_config("tiny", now)),
                            ExperimentConfig)


def test_keys_that_do_not_change_results_may_change_on_resume():
    assert conflicts(
        ["output_dir=a", "data.limit=2", "data.repeats=1", "runtime.max_batch_size=4", "wandb.mode=disabled"],
        ["output_dir=b", "data.limit=9", "data.repeats=3", "runtime.max_batch_size=1", "runtime.max_in_flight=1",
         "wandb.mode=offline", "wandb.tags=[x]", "wandb.project=other"],
    ) == []


def test_keys_that_change_results_are_named_with_both_values():
    found = conflicts(["seed=0", "method.n=4"], ["seed=1", "method.n=8", "method.rollout.temperature=0.9"])
    assert [line.split(":")[0] for line in found] == ["method.n", "method.rollout.temperature", "seed"]
    assert "4 → 8" in found[0]


def test_a_field_added_after_the_run_started_counts_as_unchanged_at_its_default():
    saved = to_yaml(load_config("tiny", []))
    saved = "\n".join(line for line in saved.splitlines() if "reuse_selector_grad" not in line)
    assert resume_conflicts(saved, to_yaml(load_config("tiny", [])), ExperimentConfig) == []


def test_experiment_refuses_a_different_config_before_loading_models(tmp_path):
    (tmp_path / "config.yaml").write_text(to_yaml(load_config("tiny", [f"output_dir={tmp_path}", "seed=3"])))
    ResultsFile(tmp_path / "results.jsonl").append(record())
    cfg = load_config("tiny", [f"output_dir={tmp_path}", "seed=4", "method.name=greedy"])
    with pytest.raises(ConfigError) as error:
        Experiment(cfg, runtime="never built")
    assert "seed: 3 → 4" in str(error.value) and "method.name: 'nabla' → 'greedy'" in str(error.value)
    OutputLock(tmp_path).release()  # the refused session let go of the directory


def test_a_directory_without_results_takes_any_config(tmp_path):
    (tmp_path / "config.yaml").write_text(to_yaml(load_config("tiny", ["policy.path=/typo"])))
    with pytest.raises(AttributeError):  # got past the resume check to the (fake) runtime
        Experiment(load_config("tiny", [f"output_dir={tmp_path}"]), runtime="fake")
    assert "/typo" not in (tmp_path / "config.yaml").read_text()


def test_one_writer_per_output_dir(tmp_path):
    first = OutputLock(tmp_path)
    with pytest.raises(OutputBusy, match="another run"):
        OutputLock(tmp_path)
    first.release()
    OutputLock(tmp_path).release()


# -- summary.json ----------------------------------------------------------------------
def test_summary_counts_errors_as_wrong_and_votes_maj_over_repeats():
    rows = [
        record("p", 0, pred="4", correct=True), record("p", 1, pred="5", correct=False),
        record("p", 2, pred="4", correct=True),
        record("q", 0, pred="7", correct=False), record("q", 1, pred="7", correct=False),
        record("q", 2, pred=None, correct=None, error="RuntimeError: boom", counts={}, response_tokens=0),
    ]
    summary = summarize_results(rows, repeats=3)["greedy"]
    accuracy = summary["accuracy"]
    assert accuracy["k"] == 3 and accuracy["n_problems"] == 2
    assert accuracy["avg@3"] == pytest.approx((2 / 3 + 0) / 2)
    assert accuracy["pass@1"] == pytest.approx((2 / 3 + 0) / 2)
    assert accuracy["pass@3"] == 0.5
    assert accuracy["maj@3"] == 0.5  # p: "4" twice; q: "7"
    assert accuracy["maj@3_ci_low"] <= 0.5 <= accuracy["maj@3_ci_high"]
    assert summary["errors"] == 1 and summary["results"] == 6
    assert summary["model_calls_total"] == 15 and summary["model_calls_mean"] == 3
    assert summary["model_calls_honest_mean"] == 4
    assert summary["rejection_rate"] is None and summary["selection_skip_rate"] is None


def test_summary_rates_and_run_wall_time_over_sessions():
    counts = {"model_calls": 10, "model_calls_honest": 12, "comparisons": 4, "rejections": 1,
              "inner_steps": 10, "grad_cache_hits": 6, "positions_optimized": 2}
    rows = [
        record("a", method="nabla", counts=counts, response_tokens=8, session=100.0, finished_at=103.0),
        record("b", method="nabla", counts=counts, response_tokens=8, session=100.0, finished_at=104.0),
        record("c", method="nabla", counts=counts, response_tokens=8, session=200.0, finished_at=202.0),
    ]
    summary = summarize_results(rows)["nabla"]
    assert summary["rejection_rate"] == 0.25
    assert summary["cache_skip_rate"] == 0.6
    assert summary["selection_skip_rate"] == 1 - 6 / 24
    assert summary["run_wall_s"] == 6.0 and summary["problems_per_s"] == 0.5
    assert set(WALL_TIME_KEYS) <= set(summary)


def test_summary_of_problems_without_gold_has_no_accuracy():
    assert summarize_results([record(gold=None, correct=None)])["greedy"]["accuracy"] is None
