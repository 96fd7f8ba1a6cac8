"""The experiment end to end: killed and resumed, and the four methods side by side."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from nabla_dist.cli import main
from nabla_dist.experiment.config import load_config
from nabla_dist.experiment.results import ResultsFile
from nabla_dist.experiment.build import build_runtime
from nabla_dist.experiment.run import Experiment
from nabla_dist.experiment.summary import WALL_TIME_KEYS

PROBLEMS = 6
# one problem at a time, so results.jsonl grows line by line while the process is killed
RESUME = ["wandb.mode=disabled", f"data.limit={PROBLEMS}", "method.name=self_consistency", "method.n=2",
          "method.max_new_tokens=8", "runtime.max_in_flight=1", "seed=7"]
TIMING = ("wall_s", "session", "finished_at")


def result_set(path) -> set[str]:
    return {json.dumps({k: v for k, v in r.items() if k not in TIMING}, sort_keys=True)
            for r in ResultsFile(path).read()}


def without_wall_time(summary: dict) -> dict:
    return {m: {k: v for k, v in s.items() if k not in WALL_TIME_KEYS} for m, s in summary.items()}


def test_a_killed_run_resumes_to_the_same_results_and_summary(tmp_path, tiny_paths):
    killed = tmp_path / "killed"
    log = open(tmp_path / "killed.log", "w")
    process = subprocess.Popen([sys.executable, "-m", "nabla_dist", "run", "tiny", *RESUME, f"output_dir={killed}"],
                               stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "WANDB_MODE": "disabled"})
    results = killed / "results.jsonl"
    deadline = time.monotonic() + 120
    while not (results.exists() and results.read_bytes().count(b"\n") >= 2):
        assert process.poll() is None, f"the run ended before it was killed: {(tmp_path / 'killed.log').read_text()}"
        assert time.monotonic() < deadline, "no two results within 120 s"
        time.sleep(0.01)
    process.send_signal(signal.SIGKILL)  # no clean stop: the process dies wherever it is
    process.wait()
    finished_before_kill = len(ResultsFile(results).read())
    assert 2 <= finished_before_kill < PROBLEMS

    cfg = load_config("tiny", RESUME + [f"output_dir={killed}"])
    runtime = build_runtime(cfg)
    resumed = Experiment(cfg, runtime).run()
    whole = tmp_path / "whole"
    uninterrupted = Experiment(load_config("tiny", RESUME + [f"output_dir={whole}"]), runtime).run()

    assert results.read_bytes().count(b"\n") == PROBLEMS  # nothing redone, nothing lost
    assert result_set(results) == result_set(whole / "results.jsonl")
    assert without_wall_time(resumed) == without_wall_time(uninterrupted)
    assert resumed["self_consistency"]["results"] == PROBLEMS
    assert json.loads((killed / "summary.json").read_text()) == resumed
    sessions = {r["session"] for r in ResultsFile(results).read()}
    assert len(sessions) == 2  # the run's wall time adds both sessions


@pytest.fixture(scope="module")
def runtime(tiny_paths):
    return build_runtime(load_config("tiny", ["method.name=best_of_n"]))


METHODS = {
    "greedy": [],
    "self_consistency": ["method.n=3"],
    "best_of_n": ["method.n=3"],
    "nabla": ["method.max_iters=3", "method.max_rollouts=2", "method.lr=0.5"],
}


def test_the_four_methods_give_comparable_summaries(tmp_path, runtime):
    summaries = {}
    for method, extra in METHODS.items():
        cfg = load_config("tiny", ["wandb.mode=disabled", "data.limit=2", "method.max_new_tokens=8",
                                      f"method.name={method}", f"output_dir={tmp_path / method}", *extra])
        summaries[method] = Experiment(cfg, runtime).run()[method]
    keys = {method: set(s) for method, s in summaries.items()}
    assert all(k == keys["greedy"] for k in keys.values())
    for method, s in summaries.items():
        assert s["results"] == 2 and s["errors"] == 0
        assert {"avg@1", "pass@1", "maj@1"} <= set(s["accuracy"])
        assert s["model_calls_honest_total"] >= s["model_calls_total"] > 0
    assert summaries["greedy"]["model_calls_mean"] == 8  # 8 tokens, no prefill in the paper count
    assert summaries["best_of_n"]["model_calls_mean"] == summaries["self_consistency"]["model_calls_mean"] + 3
    assert summaries["nabla"]["backward_tokens_total"] > 0
    assert summaries["nabla"]["selection_skip_rate"] is not None


def test_a_grown_limit_runs_only_the_new_problems(tmp_path, runtime):
    args = ["wandb.mode=disabled", "method.name=greedy", "method.max_new_tokens=4", f"output_dir={tmp_path}"]
    Experiment(load_config("tiny", args + ["data.limit=2"]), runtime).run()
    first = {r["problem_id"]: r for r in ResultsFile(tmp_path / "results.jsonl").read()}
    summary = Experiment(load_config("tiny", args + ["data.limit=3", "data.repeats=2"]), runtime).run()
    records = ResultsFile(tmp_path / "results.jsonl").read()
    assert len(records) == 6
    assert all(r == first[r["problem_id"]] for r in records if r["repeat"] == 0 and r["problem_id"] in first)
    assert summary["greedy"]["accuracy"]["k"] == 2 and summary["greedy"]["results"] == 6
    small = Experiment(load_config("tiny", args + ["data.limit=1"]), runtime).run()  # the summary follows the config
    assert small["greedy"]["results"] == 1


def test_cli_run_prints_the_summary_and_refuses_a_changed_config(tmp_path, capsys):
    args = ["run", "tiny", "wandb.mode=disabled", "method.name=greedy", "data.limit=1", "method.max_new_tokens=4",
            f"output_dir={tmp_path}"]
    assert main(args) == 0
    assert '"greedy"' in capsys.readouterr().out
    assert main(args + ["method.max_new_tokens=5"]) == 2
    assert "method.max_new_tokens: 4 → 5" in capsys.readouterr().err


def test_compare_configs_differ_only_in_the_method():
    from nabla_dist.experiment.config import to_yaml
    from nabla_dist.experiment.results import resume_conflicts

    configs = {m: load_config(f"compare/{m}") for m in METHODS}
    assert all(cfg.method.name == m and cfg.wandb.mode == "offline" for m, cfg in configs.items())
    reference = to_yaml(configs["greedy"])
    for cfg in configs.values():
        differing = resume_conflicts(reference, to_yaml(cfg), type(cfg))
        assert all(line.startswith("method.") for line in differing), differing


def test_the_acceleration_switches_reach_the_engines_and_leave_results_unchanged(tmp_path, tiny_paths):
    args = ["wandb.mode=disabled", "data.limit=2", "method.name=nabla", "method.max_new_tokens=8",
            "method.max_rollouts=2", "method.max_iters=3", "method.grad_norm_threshold=1e-4"]
    responses = {}
    for size, lazy in ((64, True), (0, False)):
        out = tmp_path / str(size)
        cfg = load_config("tiny", args + [f"output_dir={out}", f"policy.prefix_cache={size}",
                                             f"reward.prefix_cache={size}", f"policy.lazy_probe={lazy}"])
        runtime = build_runtime(cfg)
        assert runtime.policy.spec.prefix_cache == runtime.reward.spec.prefix_cache == size
        assert runtime.policy.spec.lazy_probe is lazy
        Experiment(cfg, runtime).run()
        responses[size] = {r["problem_id"]: r["response"] for r in ResultsFile(out / "results.jsonl").read()}
    assert responses[64] == responses[0] and len(responses[0]) == 2
