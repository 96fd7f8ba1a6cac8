"""Experiments and sweeps ship inside the package: found by name from any install, user files
and the old `configs/` paths still work, and every packaged file validates."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from nabla_dist.experiment.config import CONFIGS, ConfigError, known_names, load_config
from nabla_dist.experiment.data import grade_kind
from nabla_dist.experiment.sweep import SWEEPS, load_sweep

REPO = Path(__file__).resolve().parents[2]
PAPER = ("paper/math500", "paper/aime2024", "paper/aime2025", "paper/amc", "paper/qwen72b_tp")


def test_every_packaged_experiment_and_sweep_loads_and_validates():
    experiments, sweeps = known_names(CONFIGS), known_names(SWEEPS)
    assert {"default", "toy", "compare/nabla", *PAPER} <= set(experiments)
    assert {"budget", "demo", "model_size"} <= set(sweeps)
    for name in experiments:
        load_config(name)
    for name in sweeps:
        assert load_sweep(name).points


def test_paper_experiments_use_the_hub_models_and_grade_aime_as_integers():
    for name in PAPER:
        cfg = load_config(name)
        assert cfg.reward.path == "hf:Skywork/Skywork-Reward-V2-Qwen3-4B" and cfg.runtime.kind == "ray"
        assert grade_kind(cfg.data) == ("integer" if cfg.data.name.startswith("aime") else "math")
    assert load_config("paper/math500").policy.path == "hf:Qwen/Qwen2.5-7B-Instruct"
    big = load_config("paper/qwen72b_tp")
    assert (big.policy.path, big.runtime.tp_size, big.runtime.sharding) == ("hf:Qwen/Qwen2.5-72B-Instruct", 4, "autotp")
    # a local copy replaces a hub id with one override
    assert load_config("paper/math500", ["policy.path=/models/qwen7b"]).policy.path == "/models/qwen7b"


def test_the_model_size_sweep_runs_the_paper_experiment_at_every_size():
    sweep = load_sweep("model_size")
    assert all(p.cfg.data.name == "math500" and p.cfg.reward.path.startswith("hf:Skywork/") for p in sweep.points)
    tp = {p.cfg.policy.path: p.cfg.runtime.tp_size for p in sweep.points}
    assert tp["hf:Qwen/Qwen2.5-72B-Instruct"] == 4 and tp["hf:Qwen/Qwen2.5-7B-Instruct"] == 1


def test_an_old_configs_path_names_the_packaged_file_and_a_user_file_is_read(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no configs/ folder here
    assert load_config("configs/toy.yaml") == load_config("toy")
    assert load_sweep("configs/sweep/budget.yaml").name == "budget"
    mine = tmp_path / "mine.yaml"
    mine.write_text("base: toy\noutput_dir: runs/mine\nmethod: {max_iters: 3}\n")
    cfg = load_config(str(mine))
    assert (cfg.data.name, cfg.method.max_iters, cfg.output_dir) == ("toy", 3, "runs/mine")


def test_unknown_names_list_the_packaged_ones_and_a_base_cycle_is_refused(tmp_path):
    with pytest.raises(ConfigError, match=r"unknown experiment 'nope'.*paper/math500"):
        load_config("nope")
    with pytest.raises(ConfigError, match=r"unknown sweep 'nope'.*model_size"):
        load_sweep("nope")
    (tmp_path / "a.yaml").write_text("base: b.yaml\n")
    (tmp_path / "b.yaml").write_text("base: a.yaml\n")
    with pytest.raises(ConfigError, match="loops back to itself"):
        load_config(str(tmp_path / "a.yaml"))
    (tmp_path / "bad.yaml").write_text("method: {max_iters: 3\n")
    with pytest.raises(ConfigError, match="bad.yaml is not valid YAML"):
        load_config(str(tmp_path / "bad.yaml"))


def test_a_wheel_installed_in_a_fresh_venv_finds_and_runs_the_packaged_experiments(tmp_path):
    """Not editable: the experiments come from the installed wheel, not from this checkout.
    The fresh venv borrows this venv's dependencies through a .pth file (no download). ~30 s."""
    source = tmp_path / "src"
    shutil.copytree(REPO, source, ignore=shutil.ignore_patterns(
        ".git", ".venv", "runs", "build", "*.egg-info", "__pycache__", "wandb", "tests", "benchmarks"))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "--no-index",
                    "-w", str(tmp_path / "dist"), str(source)], check=True, capture_output=True)
    [wheel] = (tmp_path / "dist").glob("nabla_dist-*.whl")
    venv = tmp_path / "fresh"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    subprocess.run([sys.executable, "-m", "pip", "--python", str(venv / "bin" / "python"), "install", "-q",
                    "--no-deps", "--no-index", str(wheel)], check=True, capture_output=True)
    purelib = subprocess.run([str(venv / "bin" / "python"), "-c",
                              "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                             check=True, capture_output=True, text=True).stdout.strip()
    Path(purelib, "borrowed_deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    outside = tmp_path / "elsewhere"  # no checkout on the path
    outside.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    where = subprocess.run([str(venv / "bin" / "python"), "-c",
                            "import nabla_dist; from nabla_dist.experiment.config import CONFIGS, known_names; "
                            "print(nabla_dist.__file__); print(' '.join(known_names(CONFIGS)))"],
                           cwd=outside, env=env, check=True, capture_output=True, text=True).stdout.splitlines()
    assert where[0].startswith(str(venv))
    assert {"default", "toy", "paper/math500", "paper/aime2024"} <= set(where[1].split())
    run = subprocess.run([str(venv / "bin" / "nabla-dist"), "run", "toy", "data.size=1", "method.name=greedy",
                          "method.max_new_tokens=8", "wandb.mode=disabled", f"output_dir={outside / 'run'}"],
                         cwd=outside, env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-2000:]
    [record] = [json.loads(line) for line in (outside / "run" / "results.jsonl").read_text().splitlines()]
    assert record["error"] is None and record["response_tokens"] > 0
