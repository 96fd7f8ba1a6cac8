"""Ray actors that serve one rank of a model replica, and the replica that groups them.

A policy replica answers `Rollout` and `PolicyGrad`, a reward replica `Reward` and
`RewardGrad` (interface.SERVED_BY). A replica is `world_size` rank actors in one placement
group forming one torch.distributed group (dist_group.py); every rank builds its engine
with engines/build.py, which shards the model (none | autotp | zero3). Every rank receives
the same batch (seeds are inside the requests) and runs the same passes; rank 0 alone
returns the answers.

`Replica` is the one place where rank actors are created and killed.
"""

from __future__ import annotations

import tempfile
import time
import uuid
from pathlib import Path

import ray
import torch
from ray.util.placement_group import remove_placement_group

from nabla_dist.engines.build import build_policy_engine, build_reward_engine
from nabla_dist.engines.loading import load_tokenizer
from nabla_dist.engines.spec import PolicySpec, RewardSpec
from nabla_dist.runtime.dist_group import RankEnv, RankWorker, create_rank_actors, replica_placement_group
from nabla_dist.runtime.interface import model_for, serve


def join_replica_group(rank_env: RankEnv, rendezvous: str) -> None:
    """Join the replica's torch.distributed group through a file on this node (a replica's
    ranks share one node: STRICT_PACK). Unlike env:// (a TCPStore), this makes no reverse
    DNS lookup of the master address, so a loopback cluster sends nothing off the machine."""
    if rank_env.world_size == 1 or torch.distributed.is_initialized():
        return
    store = Path(tempfile.gettempdir()) / f"nabla-dist-rendezvous-{rendezvous}"
    torch.distributed.init_process_group("nccl" if torch.cuda.is_available() else "gloo",
                                         init_method=store.as_uri(), rank=rank_env.rank,
                                         world_size=rank_env.world_size)


class _Rank(RankWorker):
    """Shared by both workers: join the group, serve a batch, time the engine, answer from
    rank 0 only."""

    model = ""  # "policy" or "reward": the requests this rank serves (interface.SERVED_BY)

    def __init__(self, rank_env: RankEnv, rendezvous: str):
        super().__init__(rank_env)
        join_replica_group(rank_env, rendezvous)
        torch.manual_seed(0)
        self.engine = None

    def ready(self) -> int:
        return self.rank

    def serve(self, requests: list) -> tuple[list | None, float]:
        """(answers on rank 0 else None, engine seconds)."""
        if model_for(requests[0]) != self.model:
            raise TypeError(f"a {self.model} replica does not serve {type(requests[0]).__name__}")
        start = time.perf_counter()
        answers = serve(self.engine, requests)
        return (answers if self.rank == 0 else None), time.perf_counter() - start


class PolicyWorker(_Rank):
    model = "policy"

    def __init__(self, rank_env: RankEnv, rendezvous: str, spec: PolicySpec, device: str, stop_strings: tuple,
                 sharding: str, keep_head: bool, reward_embeddings: list | None = None):
        """`reward_embeddings`: [ref] to the aligned reward embedding matrix, boxed in a list so
        this rank loads its model while the reward replica is still computing it."""
        super().__init__(rank_env, rendezvous)
        self.engine = build_policy_engine(spec, device, stop_strings, sharding=sharding,
                                          world_size=rank_env.world_size, keep_head=keep_head and self.rank == 0)
        if reward_embeddings:
            self.engine.set_reward_embeddings(ray.get(reward_embeddings[0]))

    def head_matrix(self) -> torch.Tensor:
        """W_head [V, H] (fp32), whole: a sharded replica keeps a copy on rank 0 (keep_head)."""
        return self.engine.head_matrix()


class RewardWorker(_Rank):
    model = "reward"

    def __init__(self, rank_env: RankEnv, rendezvous: str, spec: RewardSpec, device: str, policy_tokenizer: str,
                 policy_vocab_size: int, sharding: str):
        super().__init__(rank_env, rendezvous)
        self.engine = build_reward_engine(spec, load_tokenizer(policy_tokenizer), device, policy_vocab_size,
                                          sharding=sharding, world_size=rank_env.world_size)

    def aligned_embeddings(self) -> torch.Tensor:
        """[V_policy, H_R], for the policy replicas' `set_reward_embeddings`."""
        return self.engine.aligned.cpu()


class Replica:
    """One model replica: `world_size` rank actors of `worker_cls` in their own placement group."""

    def __init__(self, name: str, worker_cls: type[_Rank], world_size: int, cpus_per_actor: float,
                 gpus_per_actor: float, node_id: str | None = None, **worker_kwargs):
        """`node_id`: where the placement plan puts it (placement.py); a soft target."""
        self.name, self.worker_cls, self.world_size, self.node_id = name, worker_cls, world_size, node_id
        self.cpus_per_actor, self.gpus_per_actor = cpus_per_actor, gpus_per_actor
        self.worker_kwargs = worker_kwargs
        self.actors: list = []
        self.placement_group = None
        # the coordinator's bookkeeping
        self.failures = 0
        self.busy = False  # a batch or the start-up is in flight
        self.retired = False

    def start(self) -> list[ray.ObjectRef]:
        """Reserve a placement group, create the ranks; returns refs that resolve once each
        rank has loaded its model (or raise if it could not)."""
        self.placement_group = replica_placement_group(self.world_size, self.cpus_per_actor, self.gpus_per_actor,
                                                       node_id=self.node_id)
        self.actors = create_rank_actors(
            self.worker_cls, self.placement_group, uuid.uuid4().hex,
            cpus_per_actor=self.cpus_per_actor, gpus_per_actor=self.gpus_per_actor, **self.worker_kwargs,
        )
        return self.call("ready")

    def call(self, method: str, *args) -> list[ray.ObjectRef]:
        """The same call on every rank (rank order)."""
        return [getattr(actor, method).remote(*args) for actor in self.actors]

    def kill(self) -> None:
        for actor in self.actors:
            ray.kill(actor, no_restart=True)
        if self.placement_group is not None:
            remove_placement_group(self.placement_group)
        self.actors, self.placement_group = [], None
