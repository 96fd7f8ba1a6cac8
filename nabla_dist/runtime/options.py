"""How programs are served: the `runtime` section of an experiment config, defined once here.

Both runtimes read this one dataclass. Every field is checked whatever `kind` is, so a
misspelt sharding is refused on the local runtime too; a Ray-only value that the local
runtime would ignore is named by `ignored_by_local` (the experiment layer warns).
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Optional

import torch

from nabla_dist.algorithm.checks import check, check_optional
from nabla_dist.engines.sharding import SHARDINGS
from nabla_dist.runtime.scheduler import DEFAULT_PATIENCE

RUNTIMES = ("local", "ray")
RAY_ONLY = ("address", "num_cpus", "policy_replicas", "reward_replicas", "tp_size", "reward_tp_size", "sharding",
            "gpus_per_actor", "cpus_per_actor", "gpu_memory_gib", "max_restarts", "reply_timeout_s",
            "start_timeout_s")


@dataclass(frozen=True)
class RuntimeOptions:
    kind: str = "local"  # local: engines in this process; ray: replicas on a Ray cluster
    device: str = "cpu"
    max_batch_size: int = 16  # requests per engine call
    max_in_flight: int = 16  # problem programs running at once
    # Serve the request type with the most pending requests first (so ∇-Reasoner's rollouts
    # gather into full batches); a type passed over this many times in a row goes next.
    # null: every pending type each round. Speed only: answers never depend on batching.
    batch_patience: Optional[int] = DEFAULT_PATIENCE
    # -- ray only ------------------------------------------------------------------------
    address: Optional[str] = None  # None starts an embedded loopback cluster; "auto" joins one
    num_cpus: Optional[int] = None  # CPUs of the embedded cluster (None: all)
    policy_replicas: int = 1
    reward_replicas: int = 1
    tp_size: int = 1  # ranks (GPUs) per policy replica, one torch.distributed group
    reward_tp_size: int = 1  # ranks per reward replica
    sharding: str = "none"  # none | autotp | zero3, for every replica of more than one rank
    gpus_per_actor: float = 0.0  # 1 on a GPU cluster
    cpus_per_actor: float = 1.0
    # Memory of one GPU: the placement plan (placement.py) checks each rank's share of the
    # weights against it before any model loads. null: not checked.
    gpu_memory_gib: Optional[float] = None
    max_restarts: int = 3  # rebuilds of one replica before it is retired
    # Deadlines on every wait for a replica; past one the replica is treated as dead (killed,
    # its requests retried elsewhere, rebuilt). Generous: a hung worker is caught, a slow
    # batch on a big model is not. null: wait forever.
    reply_timeout_s: Optional[float] = 1800.0  # one batch, from when it was sent
    start_timeout_s: Optional[float] = 3600.0  # a replica loading its model

    def __post_init__(self):
        check(self.kind in RUNTIMES, "kind", self.kind, f"choose one of {', '.join(RUNTIMES)}")
        check(_is_device(self.device), "device", self.device, "use a torch device name: cpu, cuda, cuda:1, …")
        check(self.max_batch_size >= 1, "max_batch_size", self.max_batch_size, "use ≥ 1")
        check(self.max_in_flight >= 1, "max_in_flight", self.max_in_flight, "use ≥ 1")
        check_optional(self.batch_patience, "batch_patience", lambda v: v >= 0,
                       "use ≥ 0 to serve the largest group of pending requests first")
        check_optional(self.num_cpus, "num_cpus", lambda v: v >= 1, "use ≥ 1")
        check(self.sharding in SHARDINGS, "sharding", self.sharding, f"choose one of {', '.join(SHARDINGS)}")
        for key in ("policy_replicas", "tp_size", "reward_tp_size"):
            check(getattr(self, key) >= 1, key, getattr(self, key), "use ≥ 1")
        check(self.reward_replicas >= 0, "reward_replicas", self.reward_replicas, "use ≥ 0")
        check(self.sharding != "none" or max(self.tp_size, self.reward_tp_size) == 1, "sharding", self.sharding,
              "a replica of more than one rank must be sharded: set runtime.sharding=autotp or zero3, or tp_size=1")
        check(self.cpus_per_actor > 0, "cpus_per_actor", self.cpus_per_actor, "use > 0")
        check(self.gpus_per_actor >= 0, "gpus_per_actor", self.gpus_per_actor, "use ≥ 0")
        check_optional(self.gpu_memory_gib, "gpu_memory_gib", lambda v: v > 0, "use the GiB of one GPU, e.g. 80")
        check(self.max_restarts >= 0, "max_restarts", self.max_restarts, "use ≥ 0")
        for key in ("reply_timeout_s", "start_timeout_s"):
            check_optional(getattr(self, key), key, lambda v: v > 0, "use seconds > 0")

    def ignored_by_local(self) -> list[str]:
        """Ray-only fields set to a non-default value while `kind` is local."""
        if self.kind != "local":
            return []
        defaults = {f.name: f.default for f in fields(self)}
        return [key for key in RAY_ONLY if getattr(self, key) != defaults[key]]


def _is_device(name: str) -> bool:
    try:
        torch.device(name)
    except (RuntimeError, TypeError):
        return False
    return True
