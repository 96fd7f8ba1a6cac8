"""Compute accounting, kept the same way for every method (ALGORITHM.md).

Paper count ("model calls"), as the reference implementation counts:
  rollout token: 1; inner-loop gradient (re)computation: 4 (policy and reward, forward
  and backward); rejection comparison: 2; Best-of-N reward score: 1.
Honest count: the passes that actually ran, a forward or a backward of one model over one
sequence each — an n-token rollout is n forwards (the prefill makes the first token), a
gradient pass 2 per model, a prefix-KV build 1 forward, a comparison 1 reward forward per
response scored (at most 2; a response already scored is not scored again). A
probe or inner gradient served from the gradient memory ran nothing and costs 0; one the
reference would compute and we reuse from the probe counts in the paper count only.
Passes and tokens are also kept per model (policy, reward), so FLOPs follow from them, and
every charge is appended to `events`, so the totals can be recomputed by hand.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from nabla_dist.algorithm.requests import PolicyGradResult, RewardGradResult, RolloutResult

GRAD_CALLS = 4  # policy fwd, reward fwd, policy bwd, reward bwd
COMPARE_CALLS = 2  # two reward forwards
# Counters of what ran: they depend on what the engines' gradient memory and prefix caches
# held (batching, earlier problems, the replica that served), not only on the decisions.
EXECUTED = ("model_calls_honest", "grads_from_memory", "prefix_builds", "forward_tokens", "backward_tokens",
            *(f"{m}_{x}" for m in ("policy", "reward")
              for x in ("forwards", "backwards", "forward_tokens", "backward_tokens")))


@dataclass
class Accounting:
    model_calls: int = 0  # the paper's count
    rollouts: int = 0
    rollout_tokens: int = 0
    grad_evaluations: int = 0  # inner-loop gradients asked of the engines
    grad_reused: int = 0  # inner-loop first gradients taken from the probe
    grad_cache_hits: int = 0
    grads_from_memory: int = 0  # probes and inner gradients the engines served without a pass
    inner_steps: int = 0
    probes: int = 0
    comparisons: int = 0
    rejections: int = 0
    reward_scores: int = 0
    positions_optimized: int = 0
    prefix_builds: int = 0  # prefix-KV forwards (either model)
    policy_forwards: int = 0
    policy_backwards: int = 0
    reward_forwards: int = 0
    reward_backwards: int = 0
    policy_forward_tokens: int = 0
    policy_backward_tokens: int = 0
    reward_forward_tokens: int = 0
    reward_backward_tokens: int = 0
    events: list[dict] = field(default_factory=list)

    @property
    def model_calls_honest(self) -> int:
        """Passes run: policy and reward forwards and backwards."""
        return self.policy_forwards + self.policy_backwards + self.reward_forwards + self.reward_backwards

    @property
    def forward_tokens(self) -> int:  # both models
        return self.policy_forward_tokens + self.reward_forward_tokens

    @property
    def backward_tokens(self) -> int:  # both models
        return self.policy_backward_tokens + self.reward_backward_tokens

    def _run(self, model: str, forwards: int, backwards: int, forward_tokens: int, backward_tokens: int) -> None:
        """Passes that ran on `model` ("policy" or "reward")."""
        for name, value in (("forwards", forwards), ("backwards", backwards),
                            ("forward_tokens", forward_tokens), ("backward_tokens", backward_tokens)):
            setattr(self, f"{model}_{name}", getattr(self, f"{model}_{name}") + value)

    def rollout(self, result: RolloutResult) -> None:
        n = len(result.tokens)
        self.rollouts += 1
        self.rollout_tokens += n
        self.model_calls += n
        self._run("policy", n, 0, result.forward_tokens, 0)
        self.events.append({"event": "rollout", "tokens": n, "forward_tokens": result.forward_tokens})

    def gradient(self, policy: PolicyGradResult, reward: RewardGradResult | None, kind: str) -> None:
        """kind: "probe" (selector's gradient-norm pass) or "inner" (DTO recomputation)."""
        passes = {"policy": policy.passes, "reward": reward.passes if reward else 0}
        for model, result in (("policy", policy), ("reward", reward)):
            if result is None:
                continue
            tokens = result.forward_tokens if model == "policy" else result.tokens
            built = int(result.prefix_tokens > 0)
            self.prefix_builds += built
            self._run(model, result.passes + built, result.passes, tokens + result.prefix_tokens, tokens)
        self.grads_from_memory += policy.passes == 0
        if kind == "probe":
            self.probes += 1
        else:
            self.grad_evaluations += 1
            self.model_calls += GRAD_CALLS
        self.events.append({"event": f"grad_{kind}", **{f"{m}_passes": p for m, p in passes.items()},
                            "prefix_builds": int(policy.prefix_tokens > 0) + int(bool(reward and reward.prefix_tokens))})

    def reused_first_gradient(self) -> None:
        self.grad_reused += 1
        self.model_calls += GRAD_CALLS
        self.events.append({"event": "grad_reused"})

    def comparison(self, scored: list[int], rejected: bool) -> None:
        """`scored`: tokens of each response the reward model read for it (a response whose
        reward the program already had is not scored again)."""
        self.comparisons += 1
        self.rejections += rejected
        self.model_calls += COMPARE_CALLS
        self._run("reward", len(scored), 0, sum(scored), 0)
        self.events.append({"event": "compare", "scored": len(scored), "tokens": sum(scored), "rejected": rejected})

    def reward_score(self, tokens: int) -> None:
        self.reward_scores += 1
        self.model_calls += 1
        self._run("reward", 1, 0, tokens, 0)
        self.events.append({"event": "reward", "tokens": tokens})

    def totals(self) -> dict:
        """Every counter, the sums over both models included, except the event log, for results.jsonl."""
        out = asdict(self)
        del out["events"]
        return {**out, "model_calls_honest": self.model_calls_honest, "forward_tokens": self.forward_tokens,
                "backward_tokens": self.backward_tokens}

    def decisions(self) -> dict:
        """The counters fixed by the program's decisions alone (the paper count among them)."""
        return {k: v for k, v in self.totals().items() if k not in EXECUTED}
