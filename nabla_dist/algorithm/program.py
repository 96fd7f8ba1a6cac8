"""What every decoding method is: a program over model requests, and what it returns.

A program (∇-Reasoner in nabla.py, the baselines in baselines.py) is a generator: it
yields one request or a list of requests (requests.py), receives the answers, and returns
a `ProgramOutput`. Runtimes drive programs and never look inside them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Generator

from nabla_dist.algorithm.accounting import Accounting
from nabla_dist.algorithm.checks import check
from nabla_dist.algorithm.requests import RolloutResult, SamplingParams

Program = Generator[Any, Any, "ProgramOutput"]


@dataclass(frozen=True)
class Prompt:
    """One problem as the policy sees it."""

    ids: list[int]  # P: chat-templated prompt, generation prompt added
    text: str  # the question, for the reward model's own template
    stop_token_ids: tuple[int, ...]


@dataclass(frozen=True)
class DecodingConfig:
    """Settings every sampling method shares: the response length limit and the rollout sampler."""

    max_new_tokens: int = 256
    rollout: SamplingParams = SamplingParams(temperature=0.6, top_p=0.95)

    def __post_init__(self):
        check(self.max_new_tokens >= 1, "max_new_tokens", self.max_new_tokens, "use ≥ 1")


@dataclass
class Candidate:
    """One sampled response of self-consistency / Best-of-N, with what it cost."""

    tokens: list[int]
    stopped: bool  # ended by EOS / a stop string (False: length limit)
    forward_tokens: int  # tokens the rollout ran through the policy
    reward: float | None = None  # Best-of-N: the reward model's score
    reward_tokens: int | None = None  # tokens the reward model read to score it

    @classmethod
    def from_rollout(cls, result: RolloutResult) -> "Candidate":
        return cls(result.tokens, result.stopped, result.forward_tokens)


@dataclass
class ProgramOutput:
    response_ids: list[int]
    stopped: bool  # ended by EOS / stop string (False: length limit)
    count: Accounting
    candidates: list[Candidate] = field(default_factory=list)  # SC / BoN samples, in sample order
