"""The placement plan: which replica goes on which node, decided before any model loads.

`RayRuntime.start` plans once it is connected and before any actor starts: every replica
gets a node, or `PlacementError` says what is missing and which config values would fit.
A replica's placement group then asks Ray for that node (a soft target: a replica rebuilt
after its node died lands wherever Ray finds room).

What one replica needs (`replica_demands`), all on one node:
- ranks: `runtime.tp_size` for a policy replica, `runtime.reward_tp_size` for a reward
  replica. The ranks form one torch.distributed group, so a tensor-parallel group never
  spans nodes (its placement group is STRICT_PACK, dist_group.py);
- per rank: `runtime.gpus_per_actor` GPUs and `runtime.cpus_per_actor` CPUs (Ray's bundle);
- memory, estimated from the parameter count P (engines/loading.parameter_count: the model
  config built on the meta device, no weights read) and the dtype's bytes b:
  - host, while loading: every rank reads the whole checkpoint before sharding it
    (engines/build.py), so P·b per rank; a node's ranks together must fit its Ray `memory`;
  - device: P·b when unsharded; sharded over tp ranks, P·b/tp plus a whole copy of the
    input embedding table (autotp leaves it unsplit, zero3 keeps one for the engines). Checked against
    `runtime.gpu_memory_gib` when set: weights may use at most WEIGHT_SHARE of a GPU, the
    rest is left for activations, the KV cache and the gradients to the input embeddings.

How nodes are chosen: the largest replicas first; each goes to a node with room, preferring
the node with the fewest replicas of the same model (replicas of one model spread out, so a
lost node takes few of them), then the one it fills most tightly. If that strands a
replica, a plain best-fit pass is tried before giving up. The check is against the nodes'
total resources: replicas of other runs sharing the cluster (`sweep.parallel` > 1) make
placement groups wait for each other, as they should.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, replace
from typing import Iterable, Optional

from nabla_dist.engines.loading import model_config, parameter_count
from nabla_dist.engines.sharding import check_autotp_divides_heads
from nabla_dist.engines.spec import ModelSpec, PolicySpec, RewardSpec
from nabla_dist.runtime.options import RuntimeOptions

GIB = 2**30
DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
WEIGHT_SHARE = 0.75  # of one GPU's memory; the rest is for activations, KV cache, gradients
RESOURCES = ("GPU", "CPU", "memory")  # packed per node; "memory" is Ray's host memory (bytes)


class PlacementError(ValueError):
    """The cluster cannot hold the replicas; the message names what is missing and what fits."""


@dataclass(frozen=True)
class Node:
    node_id: str  # Ray's hex node id
    address: str
    resources: dict  # total GPU, CPU, memory (bytes)

    @property
    def label(self) -> str:
        return f"{self.address} ({self.node_id[:8]})"


@dataclass(frozen=True)
class ReplicaDemand:
    name: str  # "policy-0", "reward-1": the Replica's name
    model: str  # "policy" or "reward"
    ranks: int
    gpus_per_rank: float
    cpus_per_rank: float
    params: int
    dtype: str
    sharded: bool  # weights split over the ranks (autotp, zero3)
    embedding_params: int = 0  # the input embedding table, whole on every rank of a sharded replica

    @property
    def host_bytes_per_rank(self) -> int:
        return self.params * DTYPE_BYTES[self.dtype]

    @property
    def device_bytes_per_rank(self) -> int:
        if not self.sharded or self.ranks == 1:
            return self.host_bytes_per_rank
        return math.ceil(self.host_bytes_per_rank / self.ranks) + self.embedding_params * DTYPE_BYTES[self.dtype]

    def needs(self) -> dict:
        return {"GPU": self.ranks * self.gpus_per_rank, "CPU": self.ranks * self.cpus_per_rank,
                "memory": self.ranks * self.host_bytes_per_rank}


@dataclass(frozen=True)
class PlacementPlan:
    nodes: tuple[Node, ...]
    placed: tuple[tuple[ReplicaDemand, Node], ...]  # in the order the replicas start

    def node_of(self, replica: str) -> str:
        """The node id planned for the replica named `replica`."""
        return next(node.node_id for demand, node in self.placed if demand.name == replica)

    def describe(self, gpu_memory_gib: Optional[float] = None) -> str:
        """The plan for people: each node, what it holds, what is left."""
        lines = [f"placement plan: {len(self.placed)} replicas on {len(self.nodes)} nodes"]
        used = {node.node_id: Counter() for node in self.nodes}
        for demand, node in self.placed:
            used[node.node_id].update(demand.needs())
        for node in self.nodes:
            here = [d for d, n in self.placed if n.node_id == node.node_id]
            left = {k: node.resources.get(k, 0) - used[node.node_id][k] for k in RESOURCES}
            lines.append(f"  node {node.label}: {_amounts(node.resources)}; free after: {_amounts(left)}")
            for demand in here:
                lines.append(f"    {demand.name}: {demand.ranks} rank(s), {_amounts(demand.needs())}; "
                             f"weights {_gib(demand.device_bytes_per_rank)} per rank "
                             f"({_count(demand.params)} params, {demand.dtype}"
                             f"{', sharded' if demand.sharded and demand.ranks > 1 else ''})")
        if gpu_memory_gib is None and any(d.gpus_per_rank > 0 for d, _ in self.placed):
            lines.append("  GPU memory not checked: set runtime.gpu_memory_gib to check the weights per GPU")
        return "\n".join(lines)


def cluster_nodes() -> list[Node]:
    """The alive nodes of the connected Ray cluster, with their total resources."""
    import ray

    return [Node(n["NodeID"], n["NodeManagerAddress"], {k: float(n["Resources"].get(k, 0)) for k in RESOURCES})
            for n in ray.nodes() if n["Alive"]]


def replica_demands(options: RuntimeOptions, policy_params: int, policy_dtype: str,
                    reward_params: Optional[int] = None, reward_dtype: str = "float32",
                    embeddings: tuple[int, int] = (0, 0)) -> list[ReplicaDemand]:
    """What each replica `options` asks for needs, reward replicas first (the order they start).
    `embeddings`: the policy's and the reward model's input embedding parameters."""
    sharded = options.sharding != "none"
    reward = [] if reward_params is None else [
        ReplicaDemand(f"reward-{i}", "reward", options.reward_tp_size, options.gpus_per_actor,
                      options.cpus_per_actor, reward_params, reward_dtype, sharded, embeddings[1])
        for i in range(options.reward_replicas)]
    policy = [ReplicaDemand(f"policy-{i}", "policy", options.tp_size, options.gpus_per_actor,
                            options.cpus_per_actor, policy_params, policy_dtype, sharded, embeddings[0])
              for i in range(options.policy_replicas)]
    return reward + policy


def plan_for(policy: PolicySpec, reward: Optional[RewardSpec], options: RuntimeOptions,
             nodes: Optional[list[Node]] = None) -> PlacementPlan:
    """Count parameters, read the cluster's nodes (unless given), plan or raise PlacementError."""
    nodes = cluster_nodes() if nodes is None else nodes
    counts = _Counts(policy, reward)
    demands = counts.demands(options)
    try:
        return plan_placement(demands, nodes, options.gpu_memory_gib)
    except PlacementError as error:
        fits = _values_that_fit(options, counts, nodes)
        hint = ("Values that fit (each with the other settings unchanged): " + ", ".join(fits)) if fits else \
            "No single runtime.* change fits: add nodes, or use smaller models or a smaller dtype"
        raise PlacementError(f"the Ray cluster cannot hold the replicas: {error}. {hint}; or add nodes") from None


def plan_placement(demands: list[ReplicaDemand], nodes: list[Node],
                   gpu_memory_gib: Optional[float] = None) -> PlacementPlan:
    """A node for every replica, or PlacementError naming what is missing."""
    if not nodes:
        raise PlacementError("the Ray cluster has no alive node")
    _check_device_memory(demands, gpu_memory_gib)
    for demand in demands:  # a replica no node could hold even empty: say which resource
        if not any(_fits(demand.needs(), node.resources) for node in nodes):
            raise PlacementError(_too_big(demand, nodes))
    totals = {k: sum(d.needs()[k] for d in demands) for k in RESOURCES}
    have = {k: sum(n.resources.get(k, 0) for n in nodes) for k in RESOURCES}
    short = [k for k in RESOURCES if totals[k] > have[k] * (1 + 1e-9)]
    if short:
        raise PlacementError("the replicas need " + ", ".join(
            f"{_amount(k, totals[k])} in all but the cluster has {_amount(k, have[k])}" for k in short))
    placed = _assign(demands, nodes, spread=True) or _assign(demands, nodes, spread=False)
    if placed is None:
        raise PlacementError(
            f"the cluster has {_amounts(have)} in all, enough for {_amounts(totals)}, but split over "
            f"{len(nodes)} nodes no assignment keeps each replica's ranks on one node")
    order = {d.name: i for i, d in enumerate(demands)}
    return PlacementPlan(tuple(nodes), tuple(sorted(placed, key=lambda p: order[p[0].name])))


def _assign(demands: list[ReplicaDemand], nodes: list[Node], spread: bool):
    free = {n.node_id: dict(n.resources) for n in nodes}
    models = Counter()  # (node id, model) -> replicas placed there
    placed = []
    for demand in sorted(demands, key=lambda d: tuple(-d.needs()[k] for k in RESOURCES)):  # stable: ties keep order
        needs = demand.needs()
        fitting = [(i, n) for i, n in enumerate(nodes) if _fits(needs, free[n.node_id])]
        if not fitting:
            return None
        _, node = min(fitting, key=lambda item: (
            models[item[1].node_id, demand.model] if spread else 0,
            *(free[item[1].node_id].get(k, 0) - needs[k] for k in RESOURCES), item[0]))
        for key in RESOURCES:
            free[node.node_id][key] = free[node.node_id].get(key, 0) - needs[key]
        models[node.node_id, demand.model] += 1
        placed.append((demand, node))
    return placed


def _fits(needs: dict, free: dict) -> bool:
    return all(needs[k] <= free.get(k, 0) * (1 + 1e-9) + 1e-9 for k in RESOURCES)


def _check_device_memory(demands: list[ReplicaDemand], gpu_memory_gib: Optional[float]) -> None:
    if gpu_memory_gib is None:
        return
    for demand in demands:
        if demand.gpus_per_rank <= 0:
            continue
        room = gpu_memory_gib * GIB * demand.gpus_per_rank * WEIGHT_SHARE
        if demand.device_bytes_per_rank > room:
            raise PlacementError(
                f"{demand.name}'s weights need {_gib(demand.device_bytes_per_rank)} per GPU "
                f"({_count(demand.params)} params × {DTYPE_BYTES[demand.dtype]} B ({demand.dtype})"
                f"{f' / {demand.ranks} ranks' if demand.sharded else ', unsharded'}) but may use "
                f"{_gib(room)} ({WEIGHT_SHARE:.0%} of runtime.gpu_memory_gib={gpu_memory_gib:g})")


def _too_big(demand: ReplicaDemand, nodes: list[Node]) -> str:
    needs = demand.needs()
    key = "tp_size" if demand.model == "policy" else "reward_tp_size"
    lacking = [k for k in RESOURCES if needs[k] > max(n.resources.get(k, 0) for n in nodes) * (1 + 1e-9)]
    what = lacking or list(RESOURCES)
    largest = ", ".join(f"{_amount(k, max(n.resources.get(k, 0) for n in nodes))}" for k in what)
    return (f"{demand.name} needs {_amounts({k: needs[k] for k in what})} on one node (runtime.{key}="
            f"{demand.ranks} ranks, each with runtime.gpus_per_actor={demand.gpus_per_rank:g} GPU, "
            f"runtime.cpus_per_actor={demand.cpus_per_rank:g} CPU and {_gib(demand.host_bytes_per_rank)} host "
            f"memory while loading; a tensor-parallel group stays on one node) but the largest node has {largest}")


class _Counts:
    """Parameter counts and model configs, read once per plan (and its what-would-fit search)."""

    def __init__(self, policy: PolicySpec, reward: Optional[RewardSpec]):
        self.policy, self.reward = policy, reward
        self.configs: dict = {}
        self.policy_params = parameter_count(policy.path)
        self.reward_params = None if reward is None else parameter_count(reward.path, reward.kind == "classifier")
        self.embeddings = tuple(0 if spec is None else self._embedding(spec) for spec in (policy, reward))

    def demands(self, options: RuntimeOptions) -> list[ReplicaDemand]:
        return replica_demands(options, self.policy_params, self.policy.dtype, self.reward_params,
                               self.reward.dtype if self.reward else "float32", self.embeddings)

    def config(self, spec: ModelSpec):
        if spec.path not in self.configs:
            self.configs[spec.path] = model_config(spec.path)
        return self.configs[spec.path]

    def _embedding(self, spec: ModelSpec) -> int:
        config = self.config(spec)
        return getattr(config, "vocab_size", 0) * getattr(config, "hidden_size", 0)

    def tp_allowed(self, spec: ModelSpec, tp: int) -> bool:
        """Whether autotp can split `spec`'s heads `tp` ways."""
        try:
            check_autotp_divides_heads(self.config(spec), tp, "tp")
        except ValueError:
            return False
        return True


def _values_that_fit(options: RuntimeOptions, counts: _Counts, nodes: list[Node]) -> list[str]:
    """Single runtime.* (or dtype) changes under which the plan succeeds."""
    def fits(**changes) -> bool:
        try:
            changed = replace(options, **changes)
        except ValueError:  # RuntimeOptions refuses the combination
            return False
        try:
            plan_placement(counts.demands(changed), nodes, changed.gpu_memory_gib)
        except PlacementError:
            return False
        return True

    found = []
    for key in ("policy_replicas", "reward_replicas"):
        if key == "reward_replicas" and counts.reward is None:
            continue
        best = next((n for n in range(getattr(options, key) - 1, 0, -1) if fits(**{key: n})), None)
        if best is not None:
            found.append(f"runtime.{key}={best}")
    most_gpus = max(n.resources.get("GPU", 0) for n in nodes)
    for key, spec in (("tp_size", counts.policy), ("reward_tp_size", counts.reward)):
        if spec is None:
            continue
        # a replica of more than one rank must be sharded: a user without sharding is offered autotp
        sharding = "autotp" if options.sharding == "none" else options.sharding
        good = [t for t in _powers_of_two(max(int(most_gpus), 8)) if t != getattr(options, key)
                and (sharding != "autotp" or t == 1 or counts.tp_allowed(spec, t))
                and fits(**{key: t}, **({"sharding": sharding} if t > 1 else {}))]
        if good:
            also = " with runtime.sharding=autotp" if options.sharding == "none" and max(good) > 1 else ""
            found.append(f"runtime.{key}∈{{{','.join(map(str, good))}}}{also}")
    for value in (options.cpus_per_actor / 2, options.cpus_per_actor / 4):
        if fits(cpus_per_actor=value):
            found.append(f"runtime.cpus_per_actor={value:g}")
            break
    for spec, key, demand in ((counts.policy, "policy.dtype", "policy"), (counts.reward, "reward.dtype", "reward")):
        if spec is not None and spec.dtype == "float32" and _fits_with_dtype(options, counts, nodes, demand):
            found.append(f"{key}=bfloat16")
    return found


def _fits_with_dtype(options: RuntimeOptions, counts: _Counts, nodes: list[Node], model: str) -> bool:
    demands = [replace(d, dtype="bfloat16") if d.model == model else d for d in counts.demands(options)]
    try:
        plan_placement(demands, nodes, options.gpu_memory_gib)
    except PlacementError:
        return False
    return True


def _powers_of_two(limit: int) -> Iterable[int]:
    size = 1
    while size <= limit:
        yield size
        size *= 2


def _amount(key: str, value: float) -> str:
    return _gib(value) + " host memory" if key == "memory" else f"{value:g} {key}{'s' if value != 1 else ''}"


def _amounts(values: dict) -> str:
    return ", ".join(_amount(k, values[k]) for k in RESOURCES if k in values)


def _gib(nbytes: float) -> str:
    return f"{nbytes / GIB:.1f} GiB" if nbytes >= GIB / 10 else f"{nbytes / 2**20:.1f} MiB"


def _count(params: int) -> str:
    for scale, suffix in ((1e9, "B"), (1e6, "M"), (1e3, "k")):
        if params >= scale:
            return f"{params / scale:.2f}{suffix}"
    return str(params)
