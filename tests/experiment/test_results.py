"""The output directory: torn lines, duplicates, the resume rule, the lock, summary.json."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest

from nabla_dist.experiment.config import ConfigError, ExperimentConfig, load_config, to_yaml
from nabla_dist.experiment.results import (
    OutputBusy,
    OutputError,
    OutputLock,
    ResultsCorrupt,
    ResultsFile,
    open_output_dir,
    resume_conflicts,
    write_json_atomic,
)
from nabla_dist.experiment.run import Experiment
from nabla_dist.experiment.summary import WALL_TIME_KEYS, summarize_results


def record(pid="p0", repeat=0, method="greedy", **fields):
    base = {"problem_id": pid, "repeat": repeat, "method": method, "gold": "4", "pred": "4", "correct": True,
            "response_tokens": 3, "counts": {"model_calls": 3, "model_calls_honest": 4}, "wall_s": 0.5,
            "error": None, "model_calls": 3}
    return {**base, **fields}


# -- results.jsonl ---------------------------------------------------------------------
def test_a_reader_skips_a_torn_last_line_and_leaves_the_file_as_it_is(tmp_path):
    path = tmp_path / "results.jsonl"
    results = ResultsFile(path)
    results.append(record("a"))
    results.append(record("b"))
    with open(path, "ab") as f:
        f.write(b'{"problem_id": "c", "repeat": 0, "meth')  # the process died mid-write
    before = path.read_bytes()
    assert [r["problem_id"] for r in results.read()] == ["a", "b"]
    assert results.done() == {("a", 0, "greedy"), ("b", 0, "greedy")}
    assert path.read_bytes() == before  # reading never writes


def test_only_the_writer_cuts_a_torn_tail_so_the_next_append_is_clean(tmp_path, caplog):
    path = tmp_path / "results.jsonl"
    results = ResultsFile(path)
    results.append(record("a"))
    with open(path, "ab") as f:
        f.write(b'{"problem_id": "c", "rep')
    results.repair()
    assert "torn last line (24 bytes)" in caplog.text
    assert path.read_bytes() == (json.dumps(record("a")) + "\n").encode()
    results.append(record("c"))
    assert [r["problem_id"] for r in results.read()] == ["a", "c"]


def test_a_complete_json_without_newline_is_torn_too(tmp_path):
    path = tmp_path / "results.jsonl"
    path.write_text(json.dumps(record("a")) + "\n" + json.dumps(record("b")))
    assert [r["problem_id"] for r in ResultsFile(path).read()] == ["a"]


@pytest.mark.parametrize("where", ["last", "middle"])
def test_a_complete_line_that_does_not_parse_is_an_error_naming_it_and_the_file_is_kept(tmp_path, where):
    path = tmp_path / "results.jsonl"
    broken = json.dumps(record("b"))[:-1]  # one brace missing, newline present: not a torn write
    lines = [json.dumps(record("a")), broken] + ([json.dumps(record("c"))] if where == "middle" else [])
    path.write_text("\n".join(lines) + "\n")
    before = path.read_bytes()
    for action in (ResultsFile(path).read, ResultsFile(path).repair):
        with pytest.raises(ResultsCorrupt, match=rf"results\.jsonl, line 2: a complete line that is not a result"):
            action()
    assert path.read_bytes() == before


def test_a_line_that_parses_but_is_not_a_result_is_refused(tmp_path):
    path = tmp_path / "results.jsonl"
    path.write_text(json.dumps(record("a")) + "\n[1, 2]\n")
    with pytest.raises(ResultsCorrupt, match="line 2: .*not a result object with problem_id, repeat, method"):
        ResultsFile(path).read()


@pytest.mark.parametrize("name", [".lock", "results.jsonl", "summary.json"])
def test_a_link_in_place_of_an_output_file_is_refused_and_its_target_untouched(tmp_path, name):
    out, target = tmp_path / "out", tmp_path / "precious.txt"
    out.mkdir()
    target.write_text("keep me\n")
    (out / name).symlink_to(target)
    with pytest.raises(OutputError, match=rf"{re.escape(name)} is a symbolic link \(to .*precious\.txt\) — "):
        open_output_dir(out)
    with pytest.raises(OutputError, match="symbolic link"):  # and each writer refuses it on its own
        {".lock": lambda: OutputLock(out), "results.jsonl": lambda: ResultsFile(out / name).append(record()),
         "summary.json": lambda: write_json_atomic(out / name, {})}[name]()
    if name == "results.jsonl":
        with pytest.raises(OutputError, match="symbolic link"):
            ResultsFile(out / name).read()
    assert target.read_text() == "keep me\n"


def test_atomic_writes_fsync_the_file_before_the_rename_and_the_directory_after(tmp_path, monkeypatch):
    """A spy on os.fsync (the real call still runs) records what each fsync'd descriptor was."""
    synced, real_fsync = [], os.fsync

    def spy(fd):
        synced.append((os.readlink(f"/proc/self/fd/{fd}"), (tmp_path / "summary.json").exists()))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", spy)
    write_json_atomic(tmp_path / "summary.json", {"a": 1})
    (temp, renamed_yet), (directory, renamed) = synced
    assert Path(temp).parent == tmp_path and Path(temp).name.startswith(".summary.json.") and not renamed_yet
    assert directory == str(tmp_path) and renamed
    assert json.loads((tmp_path / "summary.json").read_text()) == {"a": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["summary.json"]  # no temporary file left

    synced.clear()
    ResultsFile(tmp_path / "results.jsonl").append(record("a"))  # new file: its directory entry too
    ResultsFile(tmp_path / "results.jsonl").append(record("b"))
    assert [path for path, _ in synced] == [str(tmp_path / "results.jsonl"), str(tmp_path),
                                            str(tmp_path / "results.jsonl")]


def test_temporary_names_are_unique_so_two_writers_never_share_one(tmp_path, monkeypatch):
    names, real_replace = [], os.replace
    monkeypatch.setattr(os, "replace", lambda src, dst: (names.append(Path(src).name), real_replace(src, dst)))
    for value in range(3):
        write_json_atomic(tmp_path / "summary.json", value)
    assert len(set(names)) == 3 and json.loads((tmp_path / "summary.json").read_text()) == 2


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
