"""One torch.distributed group made of Ray actors: the ranks of one model replica.

A replica is `tp_size` actors packed on one node by a STRICT_PACK placement group, so
rank 0 is reachable on 127.0.0.1; its port is picked on that node before any actor starts,
and every actor gets MASTER_ADDR/MASTER_PORT/RANK/WORLD_SIZE/LOCAL_RANK/LOCAL_SIZE in its
environment before its own `__init__` runs (DeepSpeed and `init_process_group` read them).

    pg = replica_placement_group(tp_size=2, cpus_per_actor=0.5)
    ranks = create_rank_actors(PolicyWorker, pg, cpus_per_actor=0.5, model_path="...")
    ray.get([r.load.remote() for r in ranks])   # identical inputs to every rank
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import ray
from ray.util.placement_group import PlacementGroup, placement_group, remove_placement_group
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

LOOPBACK = "127.0.0.1"


@dataclass(frozen=True)
class RankEnv:
    """What a rank needs to join its group (LOCAL_* = within the node, the whole replica)."""

    rank: int
    world_size: int
    master_addr: str
    master_port: int

    def to_env(self, local_rank: int | None = None) -> dict[str, str]:
        return {
            "MASTER_ADDR": self.master_addr,
            "MASTER_PORT": str(self.master_port),
            "RANK": str(self.rank),
            "WORLD_SIZE": str(self.world_size),
            "LOCAL_RANK": str(self.rank if local_rank is None else local_rank),
            # DeepSpeed's CPU shm op and init_inference need it (segfault without it).
            "LOCAL_SIZE": str(self.world_size),
            "LOCAL_WORLD_SIZE": str(self.world_size),
        }


class RankWorker:
    """Base class of an actor that is one rank: subclass it and call `super().__init__(rank_env)`
    first in `__init__`, before anything reads the distributed environment."""

    def __init__(self, rank_env: RankEnv) -> None:
        self.rank_env = rank_env
        # Ray shows each GPU actor only its own GPU, so the device index is 0.
        local_rank = 0 if ray.get_gpu_ids() else None
        os.environ.update(rank_env.to_env(local_rank))

    @property
    def rank(self) -> int:
        return self.rank_env.rank

    def init_process_group(self, backend: str | None = None, timeout_s: float = 600.0) -> None:
        """Join the group (gloo on CPU, nccl on GPU), unless DeepSpeed or a caller already did."""
        import torch
        import torch.distributed as dist

        if dist.is_initialized():
            return
        if backend is None:
            backend = "nccl" if torch.cuda.is_available() else "gloo"
        dist.init_process_group(
            backend=backend,
            init_method="env://",
            rank=self.rank_env.rank,
            world_size=self.rank_env.world_size,
            timeout=timedelta(seconds=timeout_s),
        )


def free_port(host: str = LOOPBACK) -> int:
    """A TCP port free on `host` right now (the OS picks it; a race with other binders remains)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def replica_placement_group(
    tp_size: int,
    cpus_per_actor: float = 1.0,
    gpus_per_actor: float = 0.0,
    *,
    ready_timeout_s: float = 120.0,
    node_id: str | None = None,
) -> PlacementGroup:
    """`tp_size` bundles of `{"CPU": cpus_per_actor, "GPU": gpus_per_actor}` on one node
    (STRICT_PACK); waits until Ray reserves them, or raises naming what is missing.
    `node_id`: the node to use when it has room (the placement plan's choice; a soft
    target, so a group rebuilt after that node died goes elsewhere)."""
    if tp_size < 1:
        raise ValueError(f"tp_size must be >= 1, got {tp_size}")
    bundle = {"CPU": float(cpus_per_actor)}
    if gpus_per_actor > 0:
        bundle["GPU"] = float(gpus_per_actor)
    pg = placement_group([dict(bundle) for _ in range(tp_size)], strategy="STRICT_PACK", _soft_target_node_id=node_id)
    ready, _ = ray.wait([pg.ready()], timeout=ready_timeout_s)
    if not ready:
        remove_placement_group(pg)
        raise TimeoutError(
            f"Ray could not reserve {tp_size} x {bundle} on a single node within "
            f"{ready_timeout_s:.0f} s (cluster has {ray.available_resources()} available). "
            "Lower tp_size or cpus_per_actor/gpus_per_actor, free resources held by other "
            "replicas, or add a node with enough of them."
        )
    return pg


@ray.remote(num_cpus=0)
def _free_port_on_node() -> tuple[str, int]:
    return LOOPBACK, free_port(LOOPBACK)


def create_rank_actors(
    actor_cls: type | ray.actor.ActorClass,
    pg: PlacementGroup,
    *args: Any,
    cpus_per_actor: float = 1.0,
    gpus_per_actor: float = 0.0,
    **kwargs: Any,
) -> list[ray.actor.ActorHandle]:
    """One actor per bundle of `pg`, rank i on bundle i, each built as
    `actor_cls(rank_env, *args, **kwargs)`; `actor_cls` subclasses `RankWorker`."""
    world_size = pg.bundle_count
    # Runs on rank 0's node (bundle 0), where the port must be free.
    master_addr, master_port = ray.get(
        _free_port_on_node.options(
            scheduling_strategy=PlacementGroupSchedulingStrategy(
                placement_group=pg, placement_group_bundle_index=0
            )
        ).remote()
    )
    remote_cls = actor_cls if isinstance(actor_cls, ray.actor.ActorClass) else ray.remote(actor_cls)
    actors = []
    for rank in range(world_size):
        rank_env = RankEnv(rank, world_size, master_addr, master_port)
        actor = remote_cls.options(
            num_cpus=cpus_per_actor,
            num_gpus=gpus_per_actor,
            scheduling_strategy=PlacementGroupSchedulingStrategy(
                placement_group=pg, placement_group_bundle_index=rank
            ),
        ).remote(rank_env, *args, **kwargs)
        actors.append(actor)
    return actors
