"""The Ray runtime: policy and reward replicas on a Ray cluster, fed by one batching coordinator.

Same interface as LocalRuntime, so `Experiment` runs either. `run` is the coordinator: it
keeps many problem programs in flight (scheduler.py), cuts their pending requests into
batches per request type (local.batches), sends each batch to a free replica of the right
kind — every rank gets the same batch, rank 0 answers — and resumes programs as answers
arrive (`ray.wait`), so policy and reward batches run at the same time.

Fault tolerance: a rank that dies takes its replica down (a tensor-parallel group cannot
lose a rank). All its ranks are killed, its in-flight requests go back to the scheduler
(`Scheduler.retry`) and run again elsewhere, and the replica is rebuilt in a new placement
group; after `max_restarts` rebuilds it is retired and the run goes on with the others.
Requests carry their seeds, so a retried request returns what the first attempt would have.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from dataclasses import dataclass, field, fields
from types import SimpleNamespace
from typing import Callable, Hashable, Iterable

import ray
import torch
from ray.exceptions import RayError, RayTaskError

from nabla_dist.algorithm.nabla import Program, Prompt
from nabla_dist.engines.loading import load_tokenizer, resolve_path
from nabla_dist.engines.policy import PolicyEngine
from nabla_dist.engines.reward import RewardEngine
from nabla_dist.engines.sharding import SHARDINGS
from nabla_dist.runtime.cluster import start_ray
from nabla_dist.runtime.local import batches
from nabla_dist.runtime.scheduler import DEFAULT_PATIENCE, KindChooser, Scheduler, Ticket
from nabla_dist.runtime.workers import ModelSpec, PolicyWorker, Replica, RewardWorker

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RayOptions:
    """The `runtime.*` fields the Ray runtime reads (defaults where RuntimeConfig lacks one)."""

    policy_replicas: int = 1
    reward_replicas: int = 1
    tp_size: int = 1  # ranks per policy replica
    reward_tp_size: int = 1  # ranks per reward replica
    sharding: str = "none"  # none | autotp | zero3, for every replica with more than one rank
    gpus_per_actor: float = 0.0
    cpus_per_actor: float = 1.0
    max_restarts: int = 3  # rebuilds of one replica before it is retired
    batch_patience: int | None = DEFAULT_PATIENCE  # scheduler.KindChooser; None: the oldest request's type first

    @classmethod
    def from_runtime(cls, runtime) -> "RayOptions":
        options = cls(**{f.name: getattr(runtime, f.name, f.default) for f in fields(cls)})
        options.check()
        return options

    def check(self) -> None:
        def bad(key, value, fix):
            raise ValueError(f"runtime.{key}={value!r} is invalid: {fix}")

        if self.sharding not in SHARDINGS:
            bad("sharding", self.sharding, f"choose one of {SHARDINGS}")
        for key in ("policy_replicas", "tp_size", "reward_tp_size"):
            if getattr(self, key) < 1:
                bad(key, getattr(self, key), "use ≥ 1")
        if self.reward_replicas < 0:
            bad("reward_replicas", self.reward_replicas, "use ≥ 0")
        if self.sharding == "none" and max(self.tp_size, self.reward_tp_size) > 1:
            bad("sharding", self.sharding, "a replica of more than one rank must be sharded: "
                "set runtime.sharding=autotp or zero3, or tp_size=1")
        if self.cpus_per_actor <= 0 or self.gpus_per_actor < 0:
            bad("cpus_per_actor", (self.cpus_per_actor, self.gpus_per_actor), "use cpus > 0 and gpus ≥ 0")
        if self.max_restarts < 0:
            bad("max_restarts", self.max_restarts, "use ≥ 0")


@dataclass
class _Flight:
    """Calls on every rank of one replica: a batch being served, or the replica starting."""

    replica: Replica
    refs: list[ray.ObjectRef]
    tickets: list[Ticket] | None = None  # None: start-up
    answers: dict[int, object] = field(default_factory=dict)  # rank -> value or RayTaskError


class NoReplicaLeft(RuntimeError):
    pass


class RayRuntime:
    """Use `from_config`; the constructor only sets up the bookkeeping."""

    def __init__(self, tokenizer, options: RayOptions, max_batch_size: int = 16, started_ray: bool = False):
        self.policy: list[Replica] = []
        self.reward: list[Replica] = []
        self.options, self.max_batch_size = options, max_batch_size
        self._tokenizer = tokenizer
        # The few attributes PolicyEngine.encode_prompt reads (context and stop ids come from
        # policy rank 0): the engine's own template and checks, without a model on the driver.
        self._prompt_encoder = SimpleNamespace(tokenizer=tokenizer, context=None, stop_token_ids=())
        self.engine_calls: dict[str, int] = defaultdict(int)  # request type -> batches served
        self.requests_served: dict[str, int] = defaultdict(int)
        self.engine_seconds: dict[str, float] = defaultdict(float)  # rank 0's time inside the engine
        self.restarts = 0
        self._started_ray = started_ray
        self._flights: dict[ray.ObjectRef, _Flight] = {}
        self._solo: set[tuple[Hashable, int]] = set()  # tickets of a failed batch, served alone
        patience = options.batch_patience
        self._choosers = {name: KindChooser(patience) if patience is not None else None
                          for name in ("policy", "reward")}

    # -- construction -----------------------------------------------------------------
    @classmethod
    def from_config(cls, cfg) -> "RayRuntime":
        """Check the configuration against the models and the cluster (errors name the value
        and the fix, before any actor starts), then start every replica and wait until each
        has loaded its model."""
        from nabla_dist.experiment.config import ConfigError  # the experiment layer owns these two
        from nabla_dist.experiment.run import needs_reward

        use_reward = needs_reward(cfg)
        try:
            options = RayOptions.from_runtime(cfg.runtime)
            tokenizer = _check_models(cfg, options, use_reward)
            try:
                session = start_ray(cfg.runtime.address, num_cpus=cfg.runtime.num_cpus)
            except ConnectionError as error:
                raise ValueError(f"runtime.address={cfg.runtime.address!r}: {error}") from error
            try:
                _check_resources(options, use_reward)
            except ValueError:
                if session.started_here:
                    ray.shutdown()
                raise
        except ValueError as error:
            raise ConfigError(str(error)) from error

        policy_spec = ModelSpec(cfg.policy.path, cfg.policy.tokenizer or cfg.policy.path, cfg.policy.dtype,
                                cfg.policy.engine_options(cfg.runtime.device), options.sharding, tuple(cfg.method.stop),
                                keep_head=cfg.method.parametrization == "latents")
        runtime = cls(tokenizer, options, cfg.runtime.max_batch_size, session.started_here)
        try:
            if use_reward:
                reward_spec = ModelSpec(cfg.reward.path, cfg.reward.tokenizer or cfg.reward.path, cfg.reward.dtype,
                                        cfg.reward.engine_options(cfg.runtime.device), options.sharding,
                                        policy_tokenizer=policy_spec.tokenizer,
                                        policy_vocab_size=_model_config(cfg.policy.path).vocab_size)
                runtime.reward = [Replica(f"reward-{i}", RewardWorker, options.reward_tp_size, options.cpus_per_actor,
                                          options.gpus_per_actor, spec=reward_spec)
                                  for i in range(options.reward_replicas)]
            starting = [(replica, replica.start()) for replica in runtime.reward]
            # The driver holds this ref, so a rebuilt policy replica gets the matrix even after
            # reward replica 0 is gone. Boxed in a list: policy ranks load while it is computed.
            aligned = [runtime.reward[0].actors[0].aligned_embeddings.remote()] if use_reward else None
            runtime.policy = [Replica(f"policy-{i}", PolicyWorker, options.tp_size, options.cpus_per_actor,
                                      options.gpus_per_actor, spec=policy_spec, reward_embeddings=aligned)
                              for i in range(options.policy_replicas)]
            starting += [(replica, replica.start()) for replica in runtime.policy]
            for replica, refs in starting:
                try:
                    ray.get(refs)
                except RayError as error:
                    raise RuntimeError(f"{replica.name} failed to start: {error}") from error
            spec = ray.get(runtime.policy[0].actors[0].prompt_spec.remote())
            runtime._prompt_encoder.context, runtime._prompt_encoder.stop_token_ids = spec
        except BaseException:
            runtime.shutdown()
            raise
        return runtime

    # -- what the experiment layer needs on the driver side ----------------------------
    @property
    def tokenizer(self):
        return self._tokenizer

    def encode_prompt(self, question: str) -> Prompt:
        return PolicyEngine.encode_prompt(self._prompt_encoder, question)

    def head_matrix(self) -> torch.Tensor:
        replica = self._live(self.policy)[0]
        return ray.get(replica.actors[0].head_matrix.remote())

    def shutdown(self) -> None:
        """Kill every replica; stop Ray too if this runtime started it."""
        for replica in self.policy + self.reward:
            replica.kill()
        self._flights.clear()
        if self._started_ray and ray.is_initialized():
            ray.shutdown()

    # -- the coordinator ----------------------------------------------------------------
    def run(
        self,
        programs: dict[Hashable, Program] | Iterable[tuple[Hashable, Program]],
        on_finish: Callable,
        max_in_flight: int | None = None,
    ) -> None:
        """Drive programs to completion, at most `max_in_flight` at once (None: no limit).

        Each finished program goes to `on_finish(key, output, error)` the moment it ends.
        """
        queue = iter(programs.items() if isinstance(programs, dict) else programs)
        scheduler = Scheduler(on_finish)
        exhausted = False
        while True:
            while not exhausted and (max_in_flight is None or len(scheduler) < max_in_flight):
                item = next(queue, None)
                if item is None:
                    exhausted = True
                else:
                    scheduler.add(*item)
            self._dispatch(scheduler)
            if not self._flights:
                if exhausted and not len(scheduler):
                    return
                if not scheduler.pending():
                    raise RuntimeError("coordinator stalled: programs wait but no request is pending or in flight")
                continue  # pending requests with no replica for them were failed in _dispatch
            self._receive(scheduler)

    def _live(self, replicas: list[Replica]) -> list[Replica]:
        return [r for r in replicas if not r.retired]

    def _dispatch(self, scheduler: Scheduler) -> None:
        """Give every free replica the batch holding the oldest pending request it can serve."""
        pending = scheduler.pending()  # oldest first
        for replicas, name in ((self.policy, "policy"), (self.reward, "reward")):
            kinds = PolicyWorker.kinds if name == "policy" else RewardWorker.kinds
            tickets = [t for t in pending if isinstance(t.request, kinds)]
            if not tickets:
                continue
            if not self._live(replicas):
                error = RuntimeError(f"a program asked for {type(tickets[0].request).__name__} but no {name} "
                                     "replica is configured")
                for key in dict.fromkeys(t.key for t in tickets):
                    scheduler.fail(key, error)
                continue
            for replica in self._live(replicas):
                if replica.busy or not tickets:
                    continue
                batch = self._next_batch(tickets, self._choosers[name])
                served = {(t.key, t.index) for t in batch}
                tickets = [t for t in tickets if (t.key, t.index) not in served]
                scheduler.issue(batch)
                requests = ray.put([t.request for t in batch])
                self._fly(_Flight(replica, replica.call("serve", type(batch[0].request).__name__, requests), batch))

    def _next_batch(self, tickets: list[Ticket], chooser: KindChooser | None) -> list[Ticket]:
        """The batch holding the oldest pending ticket of the type `chooser` picks."""
        if chooser is not None:
            kind = chooser.choose(tickets)
            tickets = [t for t in tickets if type(t.request) is kind]
        oldest = tickets[0]
        if (oldest.key, oldest.index) in self._solo:
            return [oldest]
        same = [t for t in tickets if type(t.request) is type(oldest.request) and (t.key, t.index) not in self._solo]
        return next(b for b in batches(same, self.max_batch_size) if any(t is oldest for t in b))

    def _fly(self, flight: _Flight) -> None:
        flight.replica.busy = True
        for ref in flight.refs:
            self._flights[ref] = flight

    def _land(self, flight: _Flight) -> None:
        flight.replica.busy = False
        for ref in flight.refs:
            self._flights.pop(ref, None)

    def _receive(self, scheduler: Scheduler) -> None:
        """Wait for one rank's answer; act once a replica's call is complete or a rank died."""
        [ref], _ = ray.wait(list(self._flights), num_returns=1)
        flight = self._flights.pop(ref)
        rank = flight.refs.index(ref)
        try:
            flight.answers[rank] = ray.get(ref)
        except RayTaskError as error:  # the engine raised: the request's fault, not the replica's
            flight.answers[rank] = error
        except RayError as error:  # the rank died (or its process or node did)
            self._replica_failed(flight, scheduler, error)
            return
        if len(flight.answers) < len(flight.refs):
            return
        self._land(flight)
        if flight.tickets is None:
            log.info("%s is back", flight.replica.name)
            return
        first = flight.answers[0]
        if isinstance(first, RayTaskError):
            self._batch_failed(flight.tickets, scheduler, first)
            return
        answers, seconds = first
        kind = type(flight.tickets[0].request).__name__
        self.engine_calls[kind] += 1
        self.requests_served[kind] += len(flight.tickets)
        self.engine_seconds[kind] += seconds
        for ticket in flight.tickets:
            self._solo.discard((ticket.key, ticket.index))
        for ticket, answer in zip(flight.tickets, answers):
            scheduler.deliver(ticket, answer)

    def _batch_failed(self, tickets: list[Ticket], scheduler: Scheduler, error: RayTaskError) -> None:
        """A request raised in the engine: retry the batch's requests one by one; a request
        that fails alone fails its problem (recorded, the run goes on)."""
        cause = error.cause if isinstance(error.cause, BaseException) else error
        if len(tickets) == 1:
            self._solo.discard((tickets[0].key, tickets[0].index))
            scheduler.fail(tickets[0].key, cause)
            return
        log.warning("batch of %d %s failed (%s); serving one by one", len(tickets),
                    type(tickets[0].request).__name__, cause)
        self._solo.update((t.key, t.index) for t in tickets)
        scheduler.retry(tickets)

    def _replica_failed(self, flight: _Flight, scheduler: Scheduler, error: RayError) -> None:
        """A rank died: requeue the replica's requests, then rebuild it or retire it."""
        self._land(flight)
        if flight.tickets is not None:
            scheduler.retry(flight.tickets)
        self._rebuild(flight.replica, error, len(flight.tickets or []))

    def _rebuild(self, replica: Replica, error: Exception, requeued: int) -> None:
        """Kill every rank, then start the replica again in a new placement group (its ranks
        load in the background: a start flight), or retire it after `max_restarts` rebuilds."""
        while True:
            replica.kill()
            replica.failures += 1
            if replica.failures > self.options.max_restarts:
                replica.retired = True
                log.error("%s retired: it failed %d times (runtime.max_restarts=%d); last error: %s",
                          replica.name, replica.failures, self.options.max_restarts, error)
                kind = "policy" if replica in self.policy else "reward"
                if not self._live(self.policy if kind == "policy" else self.reward):
                    raise NoReplicaLeft(
                        f"every {kind} replica is retired after repeated failures (last: {error}); finished "
                        "problems are in results.jsonl: fix the cause and rerun with the same output_dir to "
                        "resume, or raise runtime.max_restarts"
                    )
                return
            self.restarts += 1
            log.warning("%s lost a rank (%s); rebuilding it (failure %d, runtime.max_restarts=%d), "
                        "%d requests requeued", replica.name, type(error).__name__, replica.failures,
                        self.options.max_restarts, requeued)
            try:
                self._fly(_Flight(replica, replica.start()))
                return
            except (TimeoutError, RayError) as start_error:  # no room for its placement group
                error, requeued = start_error, 0


def _check_models(cfg, options: RayOptions, use_reward: bool):
    """The checks that need only configs and tokenizers; returns the policy tokenizer."""
    if use_reward and (cfg.reward is None or options.reward_replicas == 0):
        raise ValueError(f"method.name={cfg.method.name} needs a reward model: set reward.path and "
                         f"runtime.reward_replicas ≥ 1 (now {options.reward_replicas})")
    tokenizer = load_tokenizer(cfg.policy.tokenizer or cfg.policy.path)
    _check_heads(cfg.policy.path, options.tp_size, options.sharding, "runtime.tp_size")
    if use_reward:
        _check_heads(cfg.reward.path, options.reward_tp_size, options.sharding, "runtime.reward_tp_size")
        _check_alignment(load_tokenizer(cfg.reward.tokenizer or cfg.reward.path), tokenizer, cfg.reward.path)
    return tokenizer


def _model_config(path: str):
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(resolve_path(path))
    return getattr(config, "text_config", None) or config


def _check_heads(path: str, tp_size: int, sharding: str, key: str) -> None:
    """autotp splits attention heads over ranks: tp_size must divide the head counts."""
    if sharding != "autotp" or tp_size == 1:
        return
    config = _model_config(path)
    heads = config.num_attention_heads
    kv_heads = getattr(config, "num_key_value_heads", None) or heads
    for name, count in (("num_attention_heads", heads), ("num_key_value_heads", kv_heads)):
        if count % tp_size:
            fits = [d for d in range(1, heads + 1) if heads % d == 0 and kv_heads % d == 0]
            raise ValueError(f"{key}={tp_size} does not divide {path!r}'s {name}={count}: "
                             f"use {key} in {fits}, or runtime.sharding=zero3")


def _check_alignment(reward_tokenizer, policy_tokenizer, path: str) -> None:
    """Run the reward engine's vocabulary alignment on the tokenizers alone (a zero-width
    embedding table), so a reward model that cannot be aligned fails before any actor starts."""
    if not getattr(reward_tokenizer, "chat_template", None):
        raise ValueError(f"reward tokenizer of {path!r} has no chat template; set tokenizer.chat_template "
                         "so the response can be placed in its conversation format")
    probe = SimpleNamespace(tokenizer=reward_tokenizer, embeddings=torch.zeros(len(reward_tokenizer), 0))
    try:
        RewardEngine.aligned_embeddings(probe, policy_tokenizer)
    except ValueError as error:
        raise ValueError(f"reward.path={path!r} cannot serve this policy: {error}") from error


def _check_resources(options: RayOptions, use_reward: bool) -> None:
    """Refuse a layout the cluster cannot hold (it would wait forever for its placement groups)."""
    actors = options.policy_replicas * options.tp_size
    if use_reward:
        actors += options.reward_replicas * options.reward_tp_size
    have = ray.cluster_resources()
    for resource, per_actor, key in (("GPU", options.gpus_per_actor, "gpus_per_actor"),
                                     ("CPU", options.cpus_per_actor, "cpus_per_actor")):
        need = actors * per_actor
        if need > have.get(resource, 0) + 1e-9:
            raise ValueError(
                f"the replicas need {need:g} {resource}s ({actors} rank actors × runtime.{key}={per_actor:g}) but "
                f"the Ray cluster has {have.get(resource, 0):g}: lower runtime.policy_replicas / reward_replicas / "
                f"tp_size / {key}, or add nodes"
            )
