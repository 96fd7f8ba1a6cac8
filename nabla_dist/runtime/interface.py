"""What every runtime offers the experiment layer, and which engine serves which request.

`LocalRuntime` (engines in this process) and `RayRuntime` (replicas on a Ray cluster) both
implement `Runtime`; the experiment layer runs either without knowing which.
"""

from __future__ import annotations

from typing import Protocol

import torch

from nabla_dist.algorithm.requests import PolicyGrad, Reward, RewardGrad, Rollout
from nabla_dist.engines.prompt import PromptEncoder
from nabla_dist.runtime.scheduler import OnFinish, Programs

# request type -> (the model that serves it, the engine method that answers a batch of it)
SERVED_BY: dict[type, tuple[str, str]] = {
    Rollout: ("policy", "rollout"),
    PolicyGrad: ("policy", "grad"),
    RewardGrad: ("reward", "grad"),
    Reward: ("reward", "score"),
}


def model_for(request) -> str:
    """"policy" or "reward": the model a request needs."""
    return SERVED_BY[type(request)][0]


def serve(engine, requests: list) -> list:
    """Answer a batch of one request type with the engine method `SERVED_BY` names."""
    _, method = SERVED_BY[type(requests[0])]
    return getattr(engine, method)(requests)


class Runtime(Protocol):
    prompts: PromptEncoder  # the policy's chat template, context and stop tokens

    def run(self, programs: Programs, on_finish: OnFinish, max_in_flight: int | None = None) -> None:
        """Drive programs to completion; `on_finish(key, output, error)` as each ends."""

    def head_matrix(self) -> torch.Tensor:
        """The policy's W_head [V, H] (fp32, CPU), for the `latents` parametrization."""

    def shutdown(self) -> None:
        """Release engines, replicas and a Ray cluster this runtime started."""
