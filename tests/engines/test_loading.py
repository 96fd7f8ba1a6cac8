"""Model locations: no code from a model's files ever runs, pickle only when allowed, the hub
only when asked, and the tiny suite safe to build from two processes at once."""

from __future__ import annotations

import filecmp
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from nabla_dist.engines.loading import (
    ModelPathError,
    check_weights,
    load_causal_lm,
    load_tokenizer,
    model_config,
    resolve_path,
)

EVIL = "import pathlib\npathlib.Path({marker!r}).write_text('ran')\n"


def copy_model(tiny_paths, target: Path) -> Path:
    shutil.copytree(tiny_paths["policy"], target)
    return target


def with_remote_code(folder: Path, model_type: str) -> Path:
    """A model directory whose config asks for its own Python code (auto_map), which leaves a
    marker file if it is ever imported."""
    marker = folder / "CODE_RAN"
    (folder / "evil_model.py").write_text(EVIL.format(marker=str(marker)))
    config = json.loads((folder / "config.json").read_text())
    config.update(model_type=model_type, auto_map={"AutoConfig": "evil_model.EvilConfig",
                                                   "AutoModelForCausalLM": "evil_model.EvilModel"})
    (folder / "config.json").write_text(json.dumps(config))
    tokenizer_config = json.loads((folder / "tokenizer_config.json").read_text())
    tokenizer_config["auto_map"] = {"AutoTokenizer": ["evil_model.EvilTokenizer", None]}
    (folder / "tokenizer_config.json").write_text(json.dumps(tokenizer_config))
    return marker


def test_a_model_that_needs_its_own_code_is_refused_and_its_code_never_runs(tiny_paths, tmp_path):
    folder = copy_model(tiny_paths, tmp_path / "custom")
    marker = with_remote_code(folder, model_type="evil")
    for load in (model_config, load_causal_lm):
        with pytest.raises(ModelPathError, match="needs its own Python code to load \\(trust_remote_code\\) — "):
            load(str(folder))
    tokenizer = load_tokenizer(str(folder))  # its tokenizer_class is a library one: that is what loads
    assert type(tokenizer).__module__.startswith("transformers.")
    assert not marker.exists()


def test_auto_map_on_a_known_architecture_loads_the_library_class_not_the_files_code(tiny_paths, tmp_path):
    folder = copy_model(tiny_paths, tmp_path / "llama_with_auto_map")
    marker = with_remote_code(folder, model_type="llama")
    model = load_causal_lm(str(folder))
    load_tokenizer(str(folder))
    assert type(model).__module__.startswith("transformers.models.llama")
    assert not marker.exists()


class _RunsCode:
    """Unpickling this calls Path.write_text: what a malicious pytorch_model.bin does."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.write_text, (Path(self.marker), "ran"))


def pickled_copy(tiny_paths, folder: Path, payload=None) -> Path:
    copy_model(tiny_paths, folder)
    weights = load_file(folder / "model.safetensors")
    (folder / "model.safetensors").unlink()
    torch.save(weights if payload is None else {"weights": weights, "payload": payload}, folder / "pytorch_model.bin")
    return folder


def test_pickle_weights_load_only_with_allow_pickle_and_then_equal_the_safetensors(tiny_paths, tmp_path):
    folder = pickled_copy(tiny_paths, tmp_path / "pickled")
    message = "holds its weights only as pickle \\(pytorch_model.bin\\), which can run code when loaded — "
    with pytest.raises(ModelPathError, match=message + ".*policy.allow_pickle=true"):
        load_causal_lm(str(folder))
    with pytest.raises(ModelPathError, match=message + ".*reward.allow_pickle=true"):
        check_weights(str(folder), role="reward")
    loaded = load_causal_lm(str(folder), allow_pickle=True).state_dict()
    reference = load_causal_lm(str(tiny_paths["policy"])).state_dict()
    assert loaded.keys() == reference.keys() and all(torch.equal(loaded[k], reference[k]) for k in loaded)


def test_a_malicious_pickle_is_never_unpickled_by_default(tiny_paths, tmp_path):
    marker = tmp_path / "UNPICKLED"
    folder = pickled_copy(tiny_paths, tmp_path / "malicious", payload=_RunsCode(marker))
    with pytest.raises(ModelPathError, match="only as pickle"):
        load_causal_lm(str(folder))
    assert not marker.exists()
    with pytest.raises(Exception):  # allowed: transformers' restricted unpickler still refuses it
        load_causal_lm(str(folder), allow_pickle=True)
    assert not marker.exists()


def test_the_hub_is_used_only_for_hf_paths(tmp_path, monkeypatch):
    with pytest.raises(ModelPathError, match="no such model directory: 'someorg/somemodel' — .*"
                                             "or hf:someorg/somemodel to download it"):
        resolve_path("someorg/somemodel")
    assert resolve_path("hf:someorg/somemodel") == "someorg/somemodel"
    (tmp_path / "someorg" / "somemodel").mkdir(parents=True)
    monkeypatch.chdir(tmp_path)  # a local directory of that name wins, and no hub is asked
    assert resolve_path("someorg/somemodel") == "someorg/somemodel"


BUILD = ("import logging, sys\nlogging.basicConfig(level=logging.INFO)\n"
         "from nabla_dist.engines.tiny import build_tiny_suite\nbuild_tiny_suite(sys.argv[1])\n")


def test_two_processes_building_the_tiny_suite_at_once_both_get_a_complete_one(tiny_paths, tmp_path):
    root = tmp_path / "cache" / "tiny"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    builders = [subprocess.Popen([sys.executable, "-c", BUILD, str(root)], env=env, stderr=subprocess.PIPE, text=True)
                for _ in range(2)]
    logs = []
    for builder in builders:
        logs.append(builder.communicate(timeout=300)[1])
        assert builder.returncode == 0, logs[-1]
    assert sum(log.count("building the tiny model suite") for log in logs) == 1  # the other waited, then reused it
    assert sorted(p.name for p in root.parent.iterdir()) == [".tiny.lock", "tiny"]  # no staging directory left
    for name in ("tokenizer", "policy", "policy_tied", "reward", "reward_other"):
        comparison = filecmp.dircmp(root / name, tiny_paths[name])
        assert not comparison.diff_files and not comparison.left_only and not comparison.right_only
