"""Shared fixtures: the offline tiny model suite, engines built from it."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("WANDB_MODE", "disabled")


@pytest.fixture(scope="session")
def tiny_paths():
    from nabla_dist.engines.loading import cache_dir
    from nabla_dist.engines.tiny import build_tiny_suite

    return build_tiny_suite(cache_dir() / "tiny")


@pytest.fixture(scope="session")
def tiny_tokenizer(tiny_paths):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_paths["tokenizer"])


def make_policy(tiny_paths, name="policy", **options):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from nabla_dist.engines.policy import PolicyEngine
    from nabla_dist.engines.spec import PolicySpec

    model = AutoModelForCausalLM.from_pretrained(tiny_paths[name])
    spec = PolicySpec(path=str(tiny_paths[name]), **options)
    return PolicyEngine(model, AutoTokenizer.from_pretrained(tiny_paths[name]), spec)


def make_reward(tiny_paths, policy_tokenizer, name="reward", **options):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from nabla_dist.engines.reward import RewardEngine
    from nabla_dist.engines.spec import RewardSpec

    model = AutoModelForSequenceClassification.from_pretrained(tiny_paths[name])
    spec = RewardSpec(path=str(tiny_paths[name]), **options)
    return RewardEngine(model, AutoTokenizer.from_pretrained(tiny_paths[name]), policy_tokenizer, spec)


def read_results(out) -> dict:
    """results.jsonl keyed by (problem, repeat), without what two equal runs may differ in:
    timings, and the counters of what ran (accounting.EXECUTED: they depend on what the
    engines' gradient memory and prefix caches held). A result written twice fails."""
    import json

    from nabla_dist.algorithm.accounting import EXECUTED

    records = {}
    for line in (out / "results.jsonl").read_text().splitlines():
        record = {k: v for k, v in json.loads(line).items() if k not in ("wall_s", "session", "finished_at")}
        record["counts"] = {k: v for k, v in record["counts"].items() if k not in EXECUTED}
        record.pop("model_calls_honest")
        key = (record["problem_id"], record["repeat"])
        assert key not in records, f"{key} written twice"
        records[key] = record
    return records
