"""∇-Reasoner as a per-problem program (ALGORITHM.md, "The decoding loop").

Reads like the paper's algorithm box: roll out, `select_position`, `optimize_position`
(dto.py), `resample`, regenerate, `accept`, commit. The program yields model requests
(requests.py) and never touches a model, so any runtime can serve and batch it.

The straight-through forward is the paper's (Alg. 2, and the reference implementation):
every gradient is taken on P ‖ C ‖ argmax(z_0) … argmax(z_{m-1}), which differs from the
rollout's text wherever it sampled another token; committed tokens, the comparison with
the resampled token and rejection sampling use the rollout's sampled tokens.

One reading the design notes leave open, fixed here: every optimized position commits
exactly one token — `a_0` when the resampled token equals it or the proposal is rejected,
the new token `t` (followed by the proposal as the new ahead) when it is accepted — so
each optimization makes progress.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Generator, Optional

import torch

from nabla_dist.algorithm.accounting import Accounting
from nabla_dist.algorithm.checks import check, check_optional
from nabla_dist.algorithm.dto import DTOConfig, optimize_position
from nabla_dist.algorithm.program import DecodingConfig, Program, ProgramOutput, Prompt
from nabla_dist.algorithm.requests import (
    PolicyGrad,
    Reward,
    RewardGrad,
    Rollout,
    RolloutResult,
    SamplingParams,
)
from nabla_dist.algorithm.sampling import make_generator, sample_token

PARAMETRIZATIONS = ("logits", "latents")


@dataclass(frozen=True)
class NablaConfig(DTOConfig, DecodingConfig):
    """∇-Reasoner's settings (ALGORITHM.md defaults, the paper's MATH-500 script); the inner
    loop's (max_iters, lr, …) and the rollout sampler come from the two bases."""

    parametrization: str = "logits"  # "logits": z ∈ R^V; "latents": z ∈ R^H, logits = W_head z
    lambda_nll: float = 1e-3
    lambda_reward: float = 1.0
    confidence_threshold: Optional[float] = 0.97
    grad_norm_threshold: Optional[float] = 4.0
    entropy_threshold: Optional[float] = None
    resample: SamplingParams = SamplingParams(temperature=0.5, top_p=0.95)
    rejection_sampling: bool = True
    max_rollouts: int = 8
    reuse_selector_grad: bool = True  # the inner loop's first gradient is the probe's (exact)
    # Rejection sampling scores a response once per problem: the current response after a
    # comparison is the one just scored (kept, or the accepted proposal), so only the
    # proposal needs the reward model (exact; the paper count still charges two).
    reuse_rewards: bool = True

    def __post_init__(self):
        DTOConfig.__post_init__(self)
        DecodingConfig.__post_init__(self)
        check(self.parametrization in PARAMETRIZATIONS, "parametrization", self.parametrization,
              "use 'logits' or 'latents'")
        check(self.lambda_nll >= 0, "lambda_nll", self.lambda_nll, "use ≥ 0 (the likelihood term's weight)")
        check(self.lambda_reward >= 0, "lambda_reward", self.lambda_reward, "use ≥ 0 (the reward term's weight)")
        check_optional(self.confidence_threshold, "confidence_threshold", lambda v: 0 < v <= 1, "use a value in (0, 1]")
        check_optional(self.grad_norm_threshold, "grad_norm_threshold", lambda v: v >= 0, "use ≥ 0")
        check_optional(self.entropy_threshold, "entropy_threshold", lambda v: v >= 0, "use ≥ 0")
        check(self.max_rollouts >= 1, "max_rollouts", self.max_rollouts, "use ≥ 1")


@dataclass
class Ahead:
    """The current rollout continuation A after the committed tokens, with its latents."""

    tokens: list[int]  # the sampled tokens A (what is committed)
    argmax: list[int]  # argmax z_i at each position: the straight-through forward sequence
    stopped: bool
    confidence: torch.Tensor  # [m]
    entropy: torch.Tensor  # [m]
    latents: dict[int, torch.Tensor]  # ahead index -> z_i ([V] or [H])

    @classmethod
    def from_rollout(cls, result: RolloutResult, forced: list[int]) -> "Ahead":
        """`forced`: tokens placed before the rollout's own (the resampled token t)."""
        k = len(forced)
        latents = {k + p: z for p, z in zip(result.latent_positions, [] if result.latents is None else result.latents)}
        pad = torch.zeros(k)
        return cls(
            tokens=forced + result.tokens,
            argmax=forced + result.argmax,
            stopped=result.stopped,
            confidence=torch.cat([pad + 1.0, result.confidence]),
            entropy=torch.cat([pad, result.entropy]),
            latents=latents,
        )

    def drop(self, n: int) -> "Ahead":
        """The ahead after committing its first n tokens."""
        return Ahead(
            tokens=self.tokens[n:],
            argmax=self.argmax[n:],
            stopped=self.stopped,
            confidence=self.confidence[n:],
            entropy=self.entropy[n:],
            latents={i - n: z for i, z in self.latents.items() if i >= n},
        )


class NablaReasoner:
    """The program for one problem × repeat; `run()` is the generator a runtime drives."""

    def __init__(self, prompt: Prompt, cfg: NablaConfig, seed: int, head: torch.Tensor | None = None):
        if cfg.parametrization == "latents" and head is None:
            raise ValueError("the 'latents' parametrization needs the policy's LM head matrix [V, H]")
        self.prompt, self.cfg, self.seed, self.head = prompt, cfg, seed, head
        self.committed: list[int] = []
        self.count = Accounting()
        self.rewards: dict[tuple[int, ...], float] = {}  # response -> its reward, once scored

    # -- model work -----------------------------------------------------------------
    def rollout(self, forced: list[int]) -> Generator[Any, Any, RolloutResult]:
        """Sample a continuation of P ‖ C ‖ forced up to the length limit."""
        budget = self.cfg.max_new_tokens - len(self.committed) - len(forced)
        result = yield Rollout(
            prompt_ids=self.prompt.ids + self.committed + forced,
            max_new_tokens=max(budget, 0),
            sampling=self.cfg.rollout,
            seed=self.seed + len(self.committed) + len(forced),
            latents="logits" if self.cfg.parametrization == "logits" else "hidden",
            latents_max_confidence=self.cfg.confidence_threshold,
        )
        self.count.rollout(result)
        return result

    def gradient(self, ahead: list[int], positions: list[int], kind: str, norm_threshold=None):
        """∂L/∂y at ahead `positions` for the sequence P ‖ C ‖ ahead (PolicyGradResult)."""
        cfg = self.cfg
        reward = None
        if cfg.lambda_reward != 0:
            reward = yield RewardGrad(self.prompt.text, self.committed + ahead, len(self.committed))
        policy = yield PolicyGrad(
            ids=self.prompt.ids + self.committed + ahead,
            ahead_start=len(self.prompt.ids) + len(self.committed),
            positions=positions,
            lambda_nll=cfg.lambda_nll,
            lambda_reward=cfg.lambda_reward,
            reward_embedding_grad=reward.embedding_grad if reward else None,
            norm_threshold=norm_threshold,
        )
        self.count.gradient(policy, reward, kind)
        return policy

    # -- the steps of the algorithm box -----------------------------------------------
    def select_position(self, ahead: Ahead) -> Generator[Any, Any, tuple[int, torch.Tensor | None] | None]:
        """First uncertain ahead position, and its gradient if the gradient-norm test ran."""
        cfg = self.cfg
        uncertain = torch.ones(len(ahead.tokens), dtype=torch.bool)
        if cfg.confidence_threshold is not None:
            uncertain &= ahead.confidence <= cfg.confidence_threshold
        if cfg.entropy_threshold is not None:
            uncertain &= ahead.entropy >= cfg.entropy_threshold
        candidates = [i for i in uncertain.nonzero().flatten().tolist() if i in ahead.latents]
        if not candidates:
            return None
        if cfg.grad_norm_threshold is None:
            return candidates[0], None
        probe = yield from self.gradient(ahead.argmax, candidates, "probe", cfg.grad_norm_threshold)
        if not probe.positions:
            return None
        return probe.positions[0], probe.grads[0]

    def grad_for_token(self, ahead: Ahead):
        """Sub-program for the inner loop: G at position 0 with token t there (and argmax z_i after)."""

        def grad(token: int):
            result = yield from self.gradient([token] + ahead.argmax[1:], [0], "inner")
            return result.grads[0]

        return grad

    def resample(self, logits: torch.Tensor) -> int:
        return sample_token(logits, self.cfg.resample, make_generator(self.seed + len(self.committed)))

    def accept(self, ahead: Ahead, proposal: Ahead) -> Generator[Any, Any, bool]:
        """Rejection sampling: both complete responses scored in the same template."""
        if not self.cfg.rejection_sampling:
            return True
        current, proposed = tuple(self.committed + ahead.tokens), tuple(self.committed + proposal.tokens)
        known = self.rewards if self.cfg.reuse_rewards else {}
        missing = list(dict.fromkeys(r for r in (current, proposed) if r not in known))
        scores = (yield [Reward(self.prompt.text, list(r)) for r in missing]) if missing else []
        rewards = {**known, **{r: s.reward for r, s in zip(missing, scores)}}
        self.rewards.update(rewards)
        accepted = rewards[proposed] > rewards[current]
        self.count.comparison([s.tokens for s in scores], rejected=not accepted)
        return accepted

    def commit(self, ahead: Ahead, n: int) -> Ahead:
        self.committed += ahead.tokens[:n]
        return ahead.drop(n)

    # -- the loop ---------------------------------------------------------------------
    def run(self) -> Program:
        cfg = self.cfg
        ahead = Ahead.from_rollout((yield from self.rollout([])), forced=[])
        while ahead.tokens:
            if self.count.rollouts >= cfg.max_rollouts:
                break
            picked = yield from self.select_position(ahead)
            if picked is None:
                break
            position, probe_grad = picked
            # The probe ran on argmax(A); the inner loop runs on the committed (sampled) tokens
            # before `position`: its G equals the probe's only where those agree.
            reusable = ahead.tokens[:position] == ahead.argmax[:position]
            known = (ahead.argmax[position], probe_grad) if reusable and probe_grad is not None else None
            ahead = self.commit(ahead, position)
            outcome = yield from optimize_position(
                ahead.latents[0], known if cfg.reuse_selector_grad else None, self.grad_for_token(ahead), cfg, self.head
            )
            if outcome.used_known:
                self.count.reused_first_gradient()
            self.count.positions_optimized += 1
            self.count.grad_cache_hits += outcome.cache_hits
            self.count.inner_steps += len(outcome.tokens_visited)
            t = self.resample(outcome.logits)
            if t != ahead.tokens[0]:
                if t in self.prompt.stop_token_ids or len(self.committed) + 1 >= cfg.max_new_tokens:
                    proposal = Ahead([t], [t], True, torch.ones(1), torch.zeros(1), {})
                    proposal.stopped = t in self.prompt.stop_token_ids
                    self.count.rollouts += 1  # a regeneration with nothing left to generate
                else:
                    proposal = Ahead.from_rollout((yield from self.rollout([t])), forced=[t])
                if (yield from self.accept(ahead, proposal)):
                    ahead = proposal
            ahead = self.commit(ahead, 1)
        self.committed += ahead.tokens
        return ProgramOutput(response_ids=self.committed, stopped=ahead.stopped, count=self.count)
