"""The baselines as programs over the same requests, so they are counted the same way.

Greedy: one rollout at temperature 0. Self-consistency: N sampled rollouts; the vote over
their answers happens in the experiment layer, where answers are graded. Best-of-N: N
sampled rollouts, each scored by the reward model (N reward calls); the best is returned.
"""

from __future__ import annotations

from dataclasses import dataclass

from nabla_dist.algorithm.accounting import Accounting
from nabla_dist.algorithm.checks import check
from nabla_dist.algorithm.program import Candidate, DecodingConfig, Program, ProgramOutput, Prompt
from nabla_dist.algorithm.requests import Reward, Rollout, SamplingParams


@dataclass(frozen=True)
class SampleConfig(DecodingConfig):
    """Self-consistency and Best-of-N: `n` rollouts with the rollout sampler."""

    n: int = 8

    def __post_init__(self):
        super().__post_init__()
        check(self.n >= 1, "n", self.n, "use ≥ 1")


def _sample(prompt: Prompt, cfg: SampleConfig, seed: int, count: Accounting) -> list[Candidate]:
    """N rollouts from P, sample j seeded by seed + j·1000 (distinct streams per sample)."""
    results = yield [
        Rollout(prompt.ids, cfg.max_new_tokens, cfg.rollout, seed + 1000 * j) for j in range(cfg.n)
    ]
    for result in results:
        count.rollout(result)
    return [Candidate.from_rollout(result) for result in results]


def greedy(prompt: Prompt, max_new_tokens: int, seed: int) -> Program:
    count = Accounting()
    result = yield Rollout(prompt.ids, max_new_tokens, SamplingParams(temperature=0.0), seed)
    count.rollout(result)
    return ProgramOutput(result.tokens, result.stopped, count)


def self_consistency(prompt: Prompt, cfg: SampleConfig, seed: int) -> Program:
    count = Accounting()
    candidates = yield from _sample(prompt, cfg, seed, count)
    return ProgramOutput(candidates[0].tokens, candidates[0].stopped, count, candidates)


def best_of_n(prompt: Prompt, cfg: SampleConfig, seed: int) -> Program:
    count = Accounting()
    candidates = yield from _sample(prompt, cfg, seed, count)
    scores = yield [Reward(prompt.text, c.tokens) for c in candidates]
    for candidate, score in zip(candidates, scores):
        count.reward_score(score.tokens)
        candidate.reward, candidate.reward_tokens = score.reward, score.tokens
    best = max(range(len(candidates)), key=lambda j: candidates[j].reward)  # first of equal maxima
    return ProgramOutput(candidates[best].tokens, candidates[best].stopped, count, candidates)
