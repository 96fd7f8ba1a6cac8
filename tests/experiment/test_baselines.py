"""Greedy, self-consistency and Best-of-N through the experiment: rollouts made and counts kept."""

from __future__ import annotations

from collections import Counter

import pytest

from nabla_dist.algorithm.requests import Reward, Rollout
from nabla_dist.experiment.config import load_config
from nabla_dist.experiment.results import ResultsFile
from nabla_dist.experiment.build import build_runtime
from nabla_dist.experiment.run import Experiment
from nabla_dist.runtime.local import LocalRuntime

N = 3
BASE = ["wandb.mode=disabled", "data.limit=2", "method.max_new_tokens=10", f"method.n={N}"]


class CountingRuntime(LocalRuntime):
    """The local runtime, counting the requests it serves by type."""

    def __init__(self, runtime: LocalRuntime):
        super().__init__(runtime.policy, runtime.reward, runtime.options)
        self.requests: Counter = Counter()

    def serve(self, requests):
        self.requests[type(requests[0]).__name__] += len(requests)
        return super().serve(requests)


@pytest.fixture(scope="module")
def runtime(tiny_paths):
    return build_runtime(load_config("tiny", BASE + ["method.name=best_of_n"]))


def run(method: str, tmp_path, runtime):
    counting = CountingRuntime(runtime)
    cfg = load_config("tiny", BASE + [f"method.name={method}", f"output_dir={tmp_path / method}"])
    summary = Experiment(cfg, counting).run()[method]
    return ResultsFile(tmp_path / method / "results.jsonl").read(), summary, counting.requests


@pytest.mark.parametrize("method", ["self_consistency", "best_of_n"])
def test_sampling_baselines_make_exactly_n_rollouts_per_problem_and_count_by_the_rules(method, tmp_path, runtime):
    records, summary, served = run(method, tmp_path, runtime)
    assert len(records) == 2
    assert served[Rollout.__name__] == N * len(records)
    assert served[Reward.__name__] == (N * len(records) if method == "best_of_n" else 0)
    assert served["PolicyGrad"] == served["RewardGrad"] == 0
    for r in records:
        counts, candidates = r["counts"], r["candidates"]
        tokens = sum(c["tokens"] for c in candidates)
        assert counts["rollouts"] == len(candidates) == N
        assert counts["rollout_tokens"] == tokens
        reward_calls = N if method == "best_of_n" else 0
        assert r["model_calls"] == counts["model_calls"] == tokens + reward_calls  # paper
        assert r["model_calls_honest"] == counts["model_calls_honest"] == tokens + reward_calls  # n forwards each
        assert counts["reward_scores"] == reward_calls
        assert counts["forward_tokens"] == sum(c["forward_tokens"] + c.get("reward_tokens", 0) for c in candidates)
        assert counts["backward_tokens"] == 0
        best = candidates[r["chosen"]]
        assert (r["response"], r["pred"], r["response_tokens"]) == (best["response"], best["answer"], best["tokens"])
        if method == "best_of_n":
            assert best["reward"] == max(c["reward"] for c in candidates)
    assert summary["rollouts_mean"] == N
    assert summary["model_calls_total"] == sum(r["model_calls"] for r in records)


def test_greedy_is_one_rollout_at_temperature_zero(tmp_path, runtime):
    records, summary, served = run("greedy", tmp_path, runtime)
    assert served == Counter({Rollout.__name__: 2})
    for r in records:
        assert r["counts"]["rollouts"] == 1
        assert r["model_calls"] == r["response_tokens"] and r["model_calls_honest"] == r["response_tokens"]
    again, _, _ = run("greedy", tmp_path / "again", runtime)
    assert [r["response"] for r in again] == [r["response"] for r in records]
