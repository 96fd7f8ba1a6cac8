"""Each setting is defined once (in the layer that reads it) and checked with its full key."""

from __future__ import annotations

import ast
import logging
from pathlib import Path

import pytest

from nabla_dist.algorithm.baselines import SampleConfig
from nabla_dist.algorithm.nabla import NablaConfig
from nabla_dist.experiment.build import preflight
from nabla_dist.experiment.config import ConfigError, MethodConfig, load_config

PACKAGE = Path(__file__).resolve().parents[2] / "nabla_dist"


def test_method_section_is_the_algorithms_own_settings():
    cfg = load_config(None, ["method.max_iters=7", "method.rollout.top_k=3", "method.n=5"])
    assert isinstance(cfg.method, NablaConfig) and isinstance(cfg.method, SampleConfig)
    assert (cfg.method.max_iters, cfg.method.rollout.top_k, cfg.method.n) == (7, 3, 5)
    # no field of the method section is redefined with another default on the way
    assert {f: getattr(MethodConfig(), f) for f in NablaConfig.__dataclass_fields__} == NablaConfig().__dict__


@pytest.mark.parametrize(
    "override, message",
    [
        ("method.rollout.top_p=2.0", "method.rollout.top_p=2.0 is invalid"),
        ("method.resample.top_p=2.0", "method.resample.top_p=2.0 is invalid"),
        ("method.lambda_nll=-5", "method.lambda_nll=-5.0 is invalid"),
        ("method.lambda_reward=-1", "method.lambda_reward=-1.0 is invalid"),
        ("method.grad_norm_threshold=-1", "method.grad_norm_threshold=-1.0 is invalid"),
        ("method.entropy_threshold=-3", "method.entropy_threshold=-3.0 is invalid"),
        ("method.max_iters=0", "method.max_iters=0 is invalid"),
        ("policy.dtype=int8", "policy.dtype='int8' is invalid"),
        ("reward.dtype=int8", "reward.dtype='int8' is invalid"),
        ("reward.kind=judge", "reward.kind='judge' is invalid"),
        ("policy.norm_chunk=0", "policy.norm_chunk=0 is invalid"),
        ("runtime.sharding=tp", "runtime.sharding='tp' is invalid"),  # refused on the local runtime too
        ("runtime.tp_size=0", "runtime.tp_size=0 is invalid"),
        ("runtime.device=gpu", "runtime.device='gpu' is invalid"),
        ("runtime.batch_patience=-1", "runtime.batch_patience=-1 is invalid"),
        ("wandb.mode=cloud", "wandb.mode='cloud' is invalid"),
    ],
)
def test_an_out_of_range_value_is_refused_with_its_full_key(override, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(".", r"\.")):
        load_config(None, ["runtime.kind=local", override])


def test_a_ray_only_value_on_the_local_runtime_is_named(caplog, tiny_paths):
    cfg = load_config(None, ["runtime.kind=local", "runtime.policy_replicas=2", "method.name=greedy"])
    with caplog.at_level(logging.WARNING, logger="nabla_dist.experiment.build"):
        preflight(cfg)
    assert "runtime.policy_replicas=2 has no effect with runtime.kind=local" in caplog.text


def test_a_removed_key_names_why_and_the_switch_to_use():
    with pytest.raises(ConfigError, match=r"reward\.lazy_probe no longer exists .*policy\.lazy_probe"):
        load_config(None, ["reward.lazy_probe=false"])


def test_no_lower_layer_imports_the_experiment_layer():
    upward = []
    for layer in ("algorithm", "engines", "runtime"):
        for path in (PACKAGE / layer).glob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                names = [node.module or ""] if isinstance(node, ast.ImportFrom) else (
                    [a.name for a in node.names] if isinstance(node, ast.Import) else [])
                upward += [f"{path.name}: {n}" for n in names if n.startswith("nabla_dist.experiment")]
    assert not upward


def test_a_run_saved_with_a_removed_key_still_resumes(tmp_path):
    from nabla_dist.experiment.config import to_yaml
    from nabla_dist.experiment.run import check_resume

    cfg = load_config(None, [f"output_dir={tmp_path}"])
    saved = to_yaml(cfg).replace("reward:\n", "reward:\n  lazy_probe: true\n", 1)
    (tmp_path / "config.yaml").write_text(saved)
    (tmp_path / "results.jsonl").write_text('{"problem_id": "a", "repeat": 0, "method": "nabla"}\n')
    check_resume(tmp_path, cfg)  # the old key had no effect: nothing to refuse
    with pytest.raises(ConfigError, match="method.max_iters: 20 → 3"):
        check_resume(tmp_path, load_config(None, [f"output_dir={tmp_path}", "method.max_iters=3"]))
