"""Ray actors that serve one rank of a model replica, and the replica that groups them.

A policy replica answers `Rollout` and `PolicyGrad`, a reward replica `Reward` and
`RewardGrad`. A replica is `world_size` rank actors in one placement group forming one
torch.distributed group (dist_group.py); the model is loaded on every rank and sharded
with `shard_model` (none | autotp | zero3). Every rank receives the same batch (seeds are
inside the requests) and runs the same passes; rank 0 alone returns the answers.

`Replica` is the one place where rank actors are created and killed.
"""

from __future__ import annotations

import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import ray
import torch
from ray.util.placement_group import remove_placement_group

from nabla_dist.algorithm.requests import PolicyGrad, Reward, RewardGrad, Rollout
from nabla_dist.engines.loading import load_causal_lm, load_reward_model, load_tokenizer
from nabla_dist.engines.policy import EngineOptions, PolicyEngine
from nabla_dist.engines.reward import RewardEngine
from nabla_dist.engines.sharding import shard_model
from nabla_dist.runtime.dist_group import RankEnv, RankWorker, create_rank_actors, replica_placement_group


@dataclass(frozen=True)
class ModelSpec:
    """What every rank of a replica loads, and how it shards it."""

    path: str
    tokenizer: str
    dtype: str = "float32"
    options: EngineOptions = EngineOptions()  # device, autocast, accelerations
    sharding: str = "none"
    stop_strings: tuple[str, ...] = ()  # policy only
    keep_head: bool = False  # policy only: keep W_head whole for the `latents` parametrization
    policy_tokenizer: str | None = None  # reward only: the vocabulary to align to
    policy_vocab_size: int | None = None  # reward only: rows of the policy's embedding matrix


class _WholeEmbeddings:
    """ZeRO-3 leaves each rank a slice of every parameter, but the engines index the input
    embedding table directly: they read this whole copy, taken before sharding, instead."""

    whole_embeddings: torch.Tensor | None = None  # [V, H]

    @property
    def embeddings(self) -> torch.Tensor:
        return self.whole_embeddings if self.whole_embeddings is not None else super().embeddings


def _whole_embeddings(model, spec: ModelSpec, world_size: int) -> torch.Tensor | None:
    if spec.sharding != "zero3" or world_size == 1:
        return None
    return model.get_input_embeddings().weight.detach().clone()


class RankPolicyEngine(_WholeEmbeddings, PolicyEngine):
    """PolicyEngine on one rank: while sampling, every rank uses rank 0's logits, so all
    ranks take the same tokens and stop at the same step (the same collectives follow)."""

    def _head(self, hidden: torch.Tensor) -> torch.Tensor:
        logits = super()._head(hidden)
        if not torch.is_grad_enabled() and _world_size() > 1:  # rollouts run under no_grad
            logits = logits.contiguous()
            torch.distributed.broadcast(logits, src=0)
        return logits


class RankRewardEngine(_WholeEmbeddings, RewardEngine):
    pass


def _world_size() -> int:
    dist = torch.distributed
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


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

    def __init__(self, rank_env: RankEnv, rendezvous: str):
        super().__init__(rank_env)
        join_replica_group(rank_env, rendezvous)
        torch.manual_seed(0)

    def ready(self) -> int:
        return self.rank

    def serve(self, kind: str, requests: list) -> tuple[list | None, float]:
        """(answers on rank 0 else None, engine seconds)."""
        start = time.perf_counter()
        answers = self._serve(kind, requests)
        return (answers if self.rank == 0 else None), time.perf_counter() - start

    def _serve(self, kind: str, requests: list) -> list:
        raise NotImplementedError


class PolicyWorker(_Rank):
    kinds = (Rollout, PolicyGrad)

    def __init__(self, rank_env: RankEnv, rendezvous: str, spec: ModelSpec, reward_embeddings: list | None = None):
        """`reward_embeddings`: [ref] to the aligned reward embedding matrix, boxed in a list so
        this rank loads its model while the reward replica is still computing it."""
        super().__init__(rank_env, rendezvous)
        tokenizer = load_tokenizer(spec.tokenizer)
        model = load_causal_lm(spec.path, spec.dtype)
        # Sharding may split the LM head and the embeddings; keep what the engine reads whole.
        keep_head = spec.keep_head and rank_env.rank == 0
        self.head = model.get_output_embeddings().weight.detach().float().clone() if keep_head else None
        whole = _whole_embeddings(model, spec, rank_env.world_size)
        model = shard_model(model, spec.sharding, rank_env.world_size)
        self.engine = RankPolicyEngine(model, tokenizer, spec.options, stop_strings=spec.stop_strings)
        self.engine.whole_embeddings = whole
        if reward_embeddings:
            self.engine.set_reward_embeddings(ray.get(reward_embeddings[0]))

    def prompt_spec(self) -> tuple[int, tuple[int, ...]]:
        """(context length, stop token ids): what encoding a prompt on the driver needs."""
        return self.engine.context, self.engine.stop_token_ids

    def head_matrix(self) -> torch.Tensor:
        """W_head [V, H] (fp32), as loaded: a sharded LM head holds only a slice of it."""
        if self.head is None:
            raise RuntimeError("this policy replica was started without keep_head; the runtime sets it "
                               "for method.parametrization=latents")
        return self.head

    def _serve(self, kind: str, requests: list) -> list:
        if kind == "Rollout":
            return self.engine.rollout(requests)
        if kind == "PolicyGrad":
            return self.engine.grad(requests)
        raise TypeError(f"a policy replica does not serve {kind}")


class RewardWorker(_Rank):
    kinds = (Reward, RewardGrad)

    def __init__(self, rank_env: RankEnv, rendezvous: str, spec: ModelSpec):
        super().__init__(rank_env, rendezvous)
        model = load_reward_model(spec.path, spec.dtype)
        whole = _whole_embeddings(model, spec, rank_env.world_size)
        # The aligned embeddings are built here from the whole model, before sharding splits it.
        self.engine = RankRewardEngine(model, load_tokenizer(spec.tokenizer), load_tokenizer(spec.policy_tokenizer),
                                       spec.options, policy_vocab_size=spec.policy_vocab_size)
        self.engine.model = shard_model(self.engine.model, spec.sharding, rank_env.world_size)
        self.engine.whole_embeddings = whole

    def aligned_embeddings(self) -> torch.Tensor:
        """[V_policy, H_R], for the policy replicas' `set_reward_embeddings`."""
        return self.engine.aligned.cpu()

    def _serve(self, kind: str, requests: list) -> list:
        if kind == "RewardGrad":
            return self.engine.grad(requests)
        if kind == "Reward":
            return self.engine.score(requests)
        raise TypeError(f"a reward replica does not serve {kind}")


class Replica:
    """One model replica: `world_size` rank actors of `worker_cls` in their own placement group."""

    def __init__(self, name: str, worker_cls: type[_Rank], world_size: int, cpus_per_actor: float,
                 gpus_per_actor: float, **worker_kwargs):
        self.name, self.worker_cls, self.world_size = name, worker_cls, world_size
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
        self.placement_group = replica_placement_group(self.world_size, self.cpus_per_actor, self.gpus_per_actor)
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
