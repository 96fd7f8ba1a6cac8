"""Compute accounting, kept the same way for every method (ALGORITHM.md).

Paper count ("model calls"), as the reference implementation counts:
  rollout token: 1; inner-loop gradient (re)computation: 4 (policy and reward, forward
  and backward); rejection comparison: 2; Best-of-N reward score: 1.
Honest count adds what the paper leaves out: each gradient-norm probe (4), each rollout's
prefill (1); an inner-loop gradient served by reusing the probe's counts in the paper
count (the reference recomputes it) but not again in the honest count (the probe paid).
Every charge is also appended to `events`, so the totals can be recomputed by hand.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from nabla_dist.algorithm.requests import PolicyGradResult, RewardGradResult, RolloutResult

GRAD_CALLS = 4  # policy fwd, reward fwd, policy bwd, reward bwd
COMPARE_CALLS = 2  # two reward forwards


@dataclass
class Accounting:
    model_calls: int = 0  # the paper's count
    model_calls_honest: int = 0
    rollouts: int = 0
    rollout_tokens: int = 0
    grad_evaluations: int = 0  # inner-loop gradients actually computed
    grad_reused: int = 0  # inner-loop first gradients taken from the probe
    grad_cache_hits: int = 0
    inner_steps: int = 0
    probes: int = 0
    comparisons: int = 0
    rejections: int = 0
    reward_scores: int = 0
    positions_optimized: int = 0
    forward_tokens: int = 0
    backward_tokens: int = 0
    events: list[dict] = field(default_factory=list)

    def rollout(self, result: RolloutResult) -> None:
        n = len(result.tokens)
        self.rollouts += 1
        self.rollout_tokens += n
        self.model_calls += n
        self.model_calls_honest += n + 1
        self.forward_tokens += result.forward_tokens
        self.events.append({"event": "rollout", "tokens": n, "forward_tokens": result.forward_tokens})

    def gradient(
        self, policy: PolicyGradResult, reward: RewardGradResult | None, kind: str
    ) -> None:
        """kind: "probe" (selector's gradient-norm pass) or "inner" (DTO recomputation)."""
        tokens = policy.forward_tokens + (reward.tokens if reward else 0)
        self.forward_tokens += tokens
        self.backward_tokens += tokens
        self.model_calls_honest += GRAD_CALLS
        if kind == "probe":
            self.probes += 1
        else:
            self.grad_evaluations += 1
            self.model_calls += GRAD_CALLS
        self.events.append({"event": f"grad_{kind}", "tokens": tokens})

    def reused_first_gradient(self) -> None:
        self.grad_reused += 1
        self.model_calls += GRAD_CALLS
        self.events.append({"event": "grad_reused"})

    def comparison(self, tokens: int, rejected: bool) -> None:
        self.comparisons += 1
        self.rejections += rejected
        self.model_calls += COMPARE_CALLS
        self.model_calls_honest += COMPARE_CALLS
        self.forward_tokens += tokens
        self.events.append({"event": "compare", "tokens": tokens, "rejected": rejected})

    def reward_score(self, tokens: int) -> None:
        self.reward_scores += 1
        self.model_calls += 1
        self.model_calls_honest += 1
        self.forward_tokens += tokens
        self.events.append({"event": "reward", "tokens": tokens})

    def totals(self) -> dict:
        """Every counter except the event log, for results.jsonl."""
        out = asdict(self)
        del out["events"]
        return out
