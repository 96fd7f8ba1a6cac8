"""The baselines as programs over the same requests, so they are counted the same way.

Greedy: one rollout at temperature 0. Self-consistency: N sampled rollouts; the vote over
their answers happens in the experiment layer, where answers are graded. Best-of-N: N
sampled rollouts, each scored by the reward model (N reward calls); the best is returned.
"""

from __future__ import annotations

from dataclasses import dataclass

from nabla_dist.algorithm.accounting import Accounting
from nabla_dist.algorithm.nabla import Program, ProgramOutput, Prompt
from nabla_dist.algorithm.requests import Reward, Rollout, SamplingParams


@dataclass(frozen=True)
class SampleConfig:
    n: int = 8
    sampling: SamplingParams = SamplingParams(temperature=0.6, top_p=0.95)
    max_new_tokens: int = 256


def _sample(prompt: Prompt, cfg: SampleConfig, seed: int, count: Accounting):
    """N rollouts from P, sample j seeded by seed + j·1000 (distinct streams per sample)."""
    results = yield [
        Rollout(prompt.ids, cfg.max_new_tokens, cfg.sampling, seed + 1000 * j) for j in range(cfg.n)
    ]
    for result in results:
        count.rollout(result)
    return results


def greedy(prompt: Prompt, max_new_tokens: int, seed: int) -> Program:
    count = Accounting()
    result = yield Rollout(prompt.ids, max_new_tokens, SamplingParams(temperature=0.0), seed)
    count.rollout(result)
    return ProgramOutput(result.tokens, result.stopped, count)


def self_consistency(prompt: Prompt, cfg: SampleConfig, seed: int) -> Program:
    count = Accounting()
    results = yield from _sample(prompt, cfg, seed, count)
    return ProgramOutput(
        results[0].tokens, results[0].stopped, count, candidates=[r.tokens for r in results]
    )


def best_of_n(prompt: Prompt, cfg: SampleConfig, seed: int) -> Program:
    count = Accounting()
    results = yield from _sample(prompt, cfg, seed, count)
    scores = yield [Reward(prompt.text, r.tokens) for r in results]
    for score in scores:
        count.reward_score(score.tokens)
    rewards = [s.reward for s in scores]
    best = max(range(len(results)), key=rewards.__getitem__)  # first of equal maxima
    return ProgramOutput(
        results[best].tokens,
        results[best].stopped,
        count,
        candidates=[r.tokens for r in results],
        candidate_rewards=rewards,
    )
