"""The Ray runtime: policy and reward replicas on a Ray cluster, fed by one batching coordinator.

Same interface as LocalRuntime (interface.Runtime), so `Experiment` runs either. `run` is
the coordinator: it keeps many problem programs in flight (scheduler.py), cuts their
pending requests into batches per request type (scheduler.batches), sends each batch to a
free replica of the model that serves it (interface.SERVED_BY) — every rank gets the same
batch, rank 0 answers — and resumes programs as answers arrive (`ray.wait`), so policy and
reward batches run at the same time.

Fault tolerance: a rank that dies takes its replica down (a tensor-parallel group cannot
lose a rank). All its ranks are killed, its in-flight requests go back to the scheduler
(`Scheduler.retry`) and run again elsewhere, and the replica is rebuilt in a new placement
group; after `max_restarts` rebuilds it is retired and the run goes on with the others.
Requests carry their seeds, so a retried request returns what the first attempt would have.

Hangs: every wait for a replica has a deadline (`runtime.reply_timeout_s` for a batch,
`runtime.start_timeout_s` for a replica loading its model). A replica that misses one is
treated as dead, the same way: the log names it and what it was waited for, it is killed,
its requests go back to the scheduler, and it is rebuilt.
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Callable, Hashable

import ray
import torch
from ray.exceptions import GetTimeoutError, RayError, RayTaskError

from nabla_dist.engines.loading import model_config
from nabla_dist.engines.prompt import PromptEncoder
from nabla_dist.engines.spec import PolicySpec, RewardSpec
from nabla_dist.runtime.cluster import start_ray
from nabla_dist.runtime.interface import model_for
from nabla_dist.runtime.options import RuntimeOptions
from nabla_dist.runtime.placement import PlacementPlan, plan_for
from nabla_dist.runtime.scheduler import KindChooser, OnFinish, Programs, Scheduler, Ticket, batches
from nabla_dist.runtime.workers import PolicyWorker, Replica, RewardWorker

log = logging.getLogger(__name__)


@dataclass
class _Flight:
    """Calls on every rank of one replica: a batch being served, or the replica starting."""

    replica: Replica
    refs: list[ray.ObjectRef]
    tickets: list[Ticket] | None = None  # None: start-up
    answers: dict[int, object] = field(default_factory=dict)  # rank -> value or RayTaskError
    sent: float = field(default_factory=time.monotonic)

    def what(self) -> str:
        if self.tickets is None:
            return "its start-up (loading its model)"
        return f"its batch of {len(self.tickets)} {type(self.tickets[0].request).__name__} requests"


class ReplicaTimeout(RayError):
    """A replica did not answer within its deadline; handled as a dead rank."""


class NoReplicaLeft(RuntimeError):
    pass


class RayRuntime:
    """Use `start`; the constructor only sets up the bookkeeping."""

    def __init__(self, prompts: PromptEncoder, options: RuntimeOptions, started_ray: bool = False):
        self.policy: list[Replica] = []
        self.reward: list[Replica] = []
        self.options = options
        self.prompts = prompts
        self.engine_calls: dict[str, int] = defaultdict(int)  # request type -> batches served
        self.requests_served: dict[str, int] = defaultdict(int)
        self.engine_seconds: dict[str, float] = defaultdict(float)  # rank 0's time inside the engine
        self.restarts = 0
        self.plan: PlacementPlan | None = None  # where `start` put the replicas
        self.requeued = 0  # requests retried because their replica died or hung
        self.timeouts = 0  # replicas that missed a deadline
        self._started_ray = started_ray
        self._flights: dict[ray.ObjectRef, _Flight] = {}
        self._solo: set[tuple[Hashable, int]] = set()  # tickets of a failed batch, served alone
        patience = options.batch_patience
        self._choosers = {name: KindChooser(patience) if patience is not None else None
                          for name in ("policy", "reward")}

    # -- construction -----------------------------------------------------------------
    @classmethod
    def start(cls, policy: PolicySpec, reward: RewardSpec | None, options: RuntimeOptions,
              stop_strings=(), keep_head: bool = False,
              on_plan: Callable[[PlacementPlan], None] | None = None) -> "RayRuntime":
        """Start or join the Ray cluster, plan which replica goes on which node (placement.py;
        before any actor starts, `on_plan` gets the plan), then start every replica where
        planned and wait until each has loaded its model. Raises PlacementError (a ValueError)
        when the cluster cannot hold the replicas.
        `keep_head`: policy rank 0 keeps W_head whole (the `latents` parametrization)."""
        prompts = PromptEncoder.from_files(policy)
        try:
            session = start_ray(options.address, num_cpus=options.num_cpus)
        except ConnectionError as error:
            raise ValueError(f"runtime.address={options.address!r}: {error}") from error
        try:
            plan = plan_for(policy, reward, options)
        except BaseException:  # does not fit, or a model config cannot be read
            if session.started_here:
                ray.shutdown()
            raise
        log.debug("%s", plan.describe(options.gpu_memory_gib))
        if on_plan is not None:
            on_plan(plan)
        runtime = cls(prompts, options, session.started_here)
        runtime.plan = plan
        layout = dict(cpus_per_actor=options.cpus_per_actor, gpus_per_actor=options.gpus_per_actor)
        try:
            if reward is not None:
                runtime.reward = [
                    Replica(f"reward-{i}", RewardWorker, options.reward_tp_size, **layout,
                            node_id=plan.node_of(f"reward-{i}"), spec=reward,
                            device=options.device, policy_tokenizer=policy.tokenizer_path,
                            policy_vocab_size=model_config(policy.path).vocab_size, sharding=options.sharding)
                    for i in range(options.reward_replicas)
                ]
            starting = [(replica, replica.start()) for replica in runtime.reward]
            # The driver holds this ref, so a rebuilt policy replica gets the matrix even after
            # reward replica 0 is gone. Boxed in a list: policy ranks load while it is computed.
            aligned = [runtime.reward[0].actors[0].aligned_embeddings.remote()] if reward is not None else None
            runtime.policy = [
                Replica(f"policy-{i}", PolicyWorker, options.tp_size, **layout, node_id=plan.node_of(f"policy-{i}"),
                        spec=policy, device=options.device,
                        stop_strings=tuple(stop_strings), sharding=options.sharding, keep_head=keep_head,
                        reward_embeddings=aligned)
                for i in range(options.policy_replicas)
            ]
            starting += [(replica, replica.start()) for replica in runtime.policy]
            for replica, refs in starting:
                try:
                    ray.get(refs, timeout=options.start_timeout_s)
                except GetTimeoutError:
                    raise RuntimeError(f"{replica.name} did not load its model within runtime.start_timeout_s="
                                       f"{options.start_timeout_s:g} s — raise runtime.start_timeout_s for a slow "
                                       "load, or check the worker logs") from None
                except RayError as error:
                    raise RuntimeError(f"{replica.name} failed to start: {error}") from error
        except BaseException:
            runtime.shutdown()
            raise
        return runtime

    def head_matrix(self) -> torch.Tensor:
        replica = self._live(self.policy)[0]
        return ray.get(replica.actors[0].head_matrix.remote(), timeout=self.options.reply_timeout_s)

    def shutdown(self) -> None:
        """Kill every replica; stop Ray too if this runtime started it."""
        for replica in self.policy + self.reward:
            replica.kill()
        self._flights.clear()
        if self._started_ray and ray.is_initialized():
            ray.shutdown()

    # -- the coordinator ----------------------------------------------------------------
    def run(self, programs: Programs, on_finish: OnFinish, max_in_flight: int | None = None) -> None:
        """Drive programs to completion, at most `max_in_flight` at once (None: no limit).

        Each finished program goes to `on_finish(key, output, error)` the moment it ends.
        """
        scheduler = Scheduler(on_finish, programs, max_in_flight)
        while True:
            scheduler.admit()
            self._dispatch(scheduler)
            if not self._flights:
                if scheduler.finished:
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
            tickets = [t for t in pending if model_for(t.request) == name]
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
                self._fly(_Flight(replica, replica.call("serve", requests), batch))

    def _next_batch(self, tickets: list[Ticket], chooser: KindChooser | None) -> list[Ticket]:
        """The batch holding the oldest pending ticket of the type `chooser` picks."""
        if chooser is not None:
            kind = chooser.choose(tickets)
            tickets = [t for t in tickets if type(t.request) is kind]
        oldest = tickets[0]
        if (oldest.key, oldest.index) in self._solo:
            return [oldest]
        same = [t for t in tickets if type(t.request) is type(oldest.request) and (t.key, t.index) not in self._solo]
        return next(b for b in batches(same, self.options.max_batch_size) if any(t is oldest for t in b))

    def _fly(self, flight: _Flight) -> None:
        flight.replica.busy = True
        for ref in flight.refs:
            self._flights[ref] = flight

    def _land(self, flight: _Flight) -> None:
        flight.replica.busy = False
        for ref in flight.refs:
            self._flights.pop(ref, None)

    def _deadline(self, flight: _Flight) -> float | None:
        limit = self.options.start_timeout_s if flight.tickets is None else self.options.reply_timeout_s
        return None if limit is None else flight.sent + limit

    def _receive(self, scheduler: Scheduler) -> None:
        """Wait for one rank's answer, until the earliest deadline; act once a replica's call
        is complete, a rank died, or a replica missed its deadline."""
        deadlines = [d for d in map(self._deadline, self._flights.values()) if d is not None]
        timeout = max(0.0, min(deadlines) - time.monotonic()) if deadlines else None
        ready, _ = ray.wait(list(self._flights), num_returns=1, timeout=timeout)
        if not ready:
            self._expire(scheduler)
            return
        [ref] = ready
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

    def _expire(self, scheduler: Scheduler) -> None:
        """Every replica past its deadline is treated as dead (hung process, lost node)."""
        now = time.monotonic()
        expired = {id(f): f for f in self._flights.values() if (self._deadline(f) or float("inf")) <= now}
        for flight in expired.values():
            key = "start_timeout_s" if flight.tickets is None else "reply_timeout_s"
            waited = now - flight.sent
            self.timeouts += 1
            log.error("%s did not answer %s within runtime.%s=%g s (waited %.1f s); treating it as dead",
                      flight.replica.name, flight.what(), key, getattr(self.options, key), waited)
            self._replica_failed(flight, scheduler, ReplicaTimeout(
                f"no answer to {flight.what()} within runtime.{key}={getattr(self.options, key):g} s"))

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
            self.requeued += len(flight.tickets)
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

