"""Sweeps: grids and point names, and a two-point sweep killed, resumed and reported."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import yaml

from nabla_dist.cli import main
from nabla_dist.experiment.config import ConfigError
from nabla_dist.experiment.sweep import expand, load_sweep, point_name

TINY = {"data.limit": 2, "method.max_new_tokens": 8, "method.n": 2, "wandb.mode": "disabled",
        "runtime.max_in_flight": 1}


def write_sweep(path, grids, overrides=TINY, **options) -> str:
    path.write_text(yaml.safe_dump({"base": "tiny", "overrides": overrides, "grids": grids,
                                    "sweep": {"name": "two", "output_dir": str(path.parent / "sweep"), **options}}))
    return str(path)


def test_grids_are_unions_of_products_with_zipped_groups():
    grids = [{"method.name": ["self_consistency", "best_of_n"], "method.n": [1, 4]},
             {"zip": {"method.name": ["greedy", "nabla"], "method.max_rollouts": [1, 8]}, "seed": [0, 1]}]
    points = expand(grids, "test")
    assert points[:4] == [{"method.name": m, "method.n": n} for m in ("self_consistency", "best_of_n") for n in (1, 4)]
    assert points[4:] == [{"method.name": "greedy", "method.max_rollouts": 1, "seed": 0},
                          {"method.name": "greedy", "method.max_rollouts": 1, "seed": 1},
                          {"method.name": "nabla", "method.max_rollouts": 8, "seed": 0},
                          {"method.name": "nabla", "method.max_rollouts": 8, "seed": 1}]
    with pytest.raises(ConfigError, match="lists of one length"):
        expand([{"zip": {"method.name": ["greedy"], "method.n": [1, 2]}}], "test")


def test_point_names_come_from_the_values_and_are_safe_directory_names():
    assert point_name({"method.name": "best_of_n", "method.n": 4}) == "best_of_n__n-4"
    assert point_name({"policy.path": "Qwen/Qwen2.5-1.5B-Instruct", "method.name": "nabla"}) == \
        "path-Qwen2.5-1.5B-Instruct__nabla"
    assert point_name({"policy.path": "tiny:policy", "reward.path": "tiny:reward"}) == \
        "policy_path-tiny_policy__reward_path-tiny_reward"
    assert point_name({"method.confidence_threshold": None, "method.lr": 0.5}) == "confidence_threshold-null__lr-0.5"
    long = point_name({"data.path": "x" * 200})
    assert len(long) <= 96 and long == point_name({"data.path": "x" * 200})


def test_a_sweep_refuses_overriding_a_swept_key_and_sets_the_group(tmp_path):
    path = write_sweep(tmp_path / "s.yaml", [{"method.name": ["greedy", "best_of_n"]}])
    with pytest.raises(ConfigError, match="method.name is swept"):
        load_sweep(path, ["method.name=nabla"])
    sweep = load_sweep(path, ["sweep.parallel=2", "seed=3"])
    assert sweep.parallel == 2 and [p.name for p in sweep.points] == ["greedy", "best_of_n"]
    assert all(p.cfg.wandb.group == "two" and p.cfg.seed == 3 and p.cfg.data.limit == 2 for p in sweep.points)
    assert sweep.points[1].cfg.output_dir == str(tmp_path / "sweep" / "best_of_n")


def test_a_killed_sweep_resumes_without_redoing_a_finished_point_and_reports_both(tmp_path, tiny_paths):
    path = write_sweep(tmp_path / "s.yaml", [{"method.name": ["greedy", "best_of_n"]}])
    out = tmp_path / "sweep"
    log = open(tmp_path / "killed.log", "w")
    process = subprocess.Popen([sys.executable, "-m", "nabla_dist", "sweep", path], stdout=log,
                               stderr=subprocess.STDOUT, env={**os.environ, "WANDB_MODE": "disabled"})
    summaries = [out / name / "summary.json" for name in ("greedy", "best_of_n")]
    deadline = time.monotonic() + 120
    while not any(s.exists() for s in summaries):
        assert process.poll() is None, f"the sweep ended early: {(tmp_path / 'killed.log').read_text()}"
        assert time.monotonic() < deadline, "no point finished within 120 s"
        time.sleep(0.005)
    process.send_signal(signal.SIGKILL)
    process.wait()
    done = [s.parent for s in summaries if s.exists()]
    if len(done) == 2:  # the second point finished before the kill landed: take it back to "never ran"
        for f in done[1].iterdir():
            f.unlink()
        done = done[:1]
    first = done[0]
    before = {f.name: (f.read_bytes(), f.stat().st_mtime_ns) for f in first.iterdir() if f.is_file()}

    assert main(["sweep", path]) == 0
    after = {f.name: (f.read_bytes(), f.stat().st_mtime_ns) for f in first.iterdir() if f.is_file()}
    for name in ("results.jsonl", "summary.json", "config.yaml"):
        assert after[name] == before[name], f"{first.name}/{name} was rewritten"
    index = json.loads((out / "sweep.json").read_text())
    status = {p["name"]: p["status"] for p in index["points"]}
    assert status[first.name] == "skipped" and set(status.values()) == {"skipped", "finished"}
    for point in index["points"]:
        assert point["dir"] == point["name"] and point["values"]["method.name"] == point["name"]

    with open(out / "report" / "summary.csv") as f:
        rows = {r["run"]: r for r in csv.DictReader(f)}
    assert set(rows) == {"greedy", "best_of_n", "best_of_n@1"}  # BoN@1 re-scored from the N=2 run
    for name in ("greedy", "best_of_n"):
        summary = json.loads((out / name / "summary.json").read_text())[name]
        assert int(rows[name]["results"]) == summary["results"] == 2
        assert float(rows[name]["model_calls_mean"]) == summary["model_calls_mean"]
        assert float(rows[name]["avg@k"]) == summary["accuracy"]["avg@1"]
    assert rows["best_of_n@1"]["source"] == "rescored from N=2"
    assert (out / "report" / "accuracy_vs_flops.png").stat().st_size > 0

    # the same directories with a result-changing setting: refused per point, nothing touched
    assert main(["sweep", path, "seed=5", "sweep.report=false"]) == 1
    index = json.loads((out / "sweep.json").read_text())
    assert {p["status"] for p in index["points"]} == {"failed"}
    assert all("seed: 0 → 5" in p["error"] for p in index["points"])
    assert {f.name: (f.read_bytes(), f.stat().st_mtime_ns) for f in first.iterdir() if f.is_file()} == after
