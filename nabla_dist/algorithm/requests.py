"""The few kinds of model work a decoding program can ask for, and their answers.

A program (see `nabla.py`, `baselines.py`) is a generator: it yields one request, or a
list of requests that may run concurrently, and receives the matching result(s). Any
runtime — in-process (`runtime/local.py`) or Ray — serves these, batching requests of
the same type across problems. Token ids are plain lists; tensors are CPU tensors.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import torch

from nabla_dist.algorithm.checks import check


@dataclass(frozen=True)
class SamplingParams:
    """temperature 0 means greedy; top_k 0 and top_p 1.0 disable those filters; top_k None:
    the policy's generation config decides (experiment/build.py resolves it; off if unset)."""

    temperature: float = 1.0
    top_p: float = 1.0
    top_k: Optional[int] = None

    def __post_init__(self):
        check(self.temperature >= 0, "temperature", self.temperature, "use ≥ 0 (0 = greedy)")
        check(0 < self.top_p <= 1, "top_p", self.top_p, "use a value in (0, 1]")
        check(self.top_k is None or self.top_k >= 0, "top_k", self.top_k,
              "use ≥ 0 (0 = off), or null for the model's generation config")


@dataclass
class Rollout:
    """Continue `prompt_ids` (prompt ‖ committed ‖ forced prefix) by sampling.

    `latents`: which per-token vectors to keep for the generated tokens: "logits" (the raw
    next-token logits, [V]), "hidden" (the last hidden state, [H]) or "none". When
    `latents_max_confidence` is set, vectors are kept only where the max softmax
    probability is at most that value (the only positions token selection can pick).
    """

    prompt_ids: list[int]
    max_new_tokens: int
    sampling: SamplingParams
    seed: int
    latents: str = "none"
    latents_max_confidence: float | None = None


@dataclass
class RolloutResult:
    tokens: list[int]  # generated ids, including the stop token if one was hit
    stopped: bool  # True if EOS or a stop string ended the rollout
    confidence: torch.Tensor  # [m] max softmax probability of each generated step
    entropy: torch.Tensor  # [m] entropy of each generated step's distribution
    argmax: list[int] = field(default_factory=list)  # [m] argmax of each step's logits (the ST forward)
    latent_positions: list[int] = field(default_factory=list)
    latents: torch.Tensor | None = None  # [k, V] or [k, H] at latent_positions
    forward_tokens: int = 0  # tokens run through the model: prefill + fed-back samples


@dataclass
class RewardGrad:
    """Reward of prompt ‖ response in the reward model's template, and ∂R/∂(embedding)
    at the response positions `ahead_start:` (embedding space of the reward model)."""

    prompt_text: str
    response_ids: list[int]  # policy token ids (committed ‖ ahead)
    ahead_start: int


@dataclass
class RewardGradResult:
    reward: float
    embedding_grad: torch.Tensor  # [m, H_R], m = len(response_ids) - ahead_start
    tokens: int  # tokens run with gradient (see PolicyGradResult.forward_tokens)
    passes: int = 1  # forward+backward passes run for it: 0 when served from the gradient memory
    prefix_tokens: int = 0  # tokens of a prefix-KV build it triggered (one forward, no gradient)


@dataclass
class Reward:
    """Score only (rejection sampling, Best-of-N)."""

    prompt_text: str
    response_ids: list[int]


@dataclass
class RewardResult:
    reward: float
    tokens: int


@dataclass
class PolicyGrad:
    """Vocabulary-space gradient ∂L/∂y_i of the DTO objective at ahead positions.

    L = −(λ_nll · Σ_i ⟨log π(·|P, C, y_<i), y_i⟩ + λ_R · R). The reward's embedding
    gradient (from a `RewardGrad`) is projected here, where the aligned reward embedding
    matrix lives. With `norm_threshold` set, the gradient is returned only at the first of
    `positions` whose norm ‖∂L/∂y_i‖₂ reaches it (norms are computed in order until one
    does); otherwise at every one of `positions`. `want_norms` asks for every ahead
    position's norm as well (diagnostics and tests: it projects the whole ahead).
    """

    ids: list[int]  # prompt ‖ committed ‖ ahead
    ahead_start: int
    positions: list[int]  # ahead indices (0 = first ahead token)
    lambda_nll: float
    lambda_reward: float
    reward_embedding_grad: torch.Tensor | None = None  # [m, H_R]
    norm_threshold: float | None = None
    want_norms: bool = False


@dataclass
class PolicyGradResult:
    positions: list[int]  # where `grads` were taken
    grads: torch.Tensor  # [len(positions), V] ∂L/∂y at those positions
    norms: torch.Tensor | None  # [m] ‖∂L/∂y_i‖₂ for every ahead position, if asked
    logprob: float  # Σ_i log π(a_i | ...) over the ahead tokens
    # tokens run forward and backward for this request: the whole sequence, or only the
    # ahead tokens when the engine serves the prefix from its KV cache; 0 from the memory
    forward_tokens: int
    passes: int = 1  # forward+backward passes run for it: 0 when served from the gradient memory
    prefix_tokens: int = 0  # tokens of a prefix-KV build it triggered (one forward, no gradient)


Request = Rollout | PolicyGrad | RewardGrad | Reward
