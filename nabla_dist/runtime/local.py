"""The in-process runtime: local engines, batched per request type across problems."""

from __future__ import annotations

import logging
from collections import defaultdict

import torch

from nabla_dist.engines.build import build_policy_engine, build_reward_engine
from nabla_dist.engines.policy import PolicyEngine
from nabla_dist.engines.reward import RewardEngine
from nabla_dist.engines.spec import PolicySpec, RewardSpec
from nabla_dist.runtime.interface import model_for, serve
from nabla_dist.runtime.options import RuntimeOptions
from nabla_dist.runtime.scheduler import KindChooser, OnFinish, Programs, Scheduler, Ticket, batches

log = logging.getLogger(__name__)


class LocalRuntime:
    def __init__(self, policy: PolicyEngine, reward: RewardEngine | None, options: RuntimeOptions = RuntimeOptions()):
        """Serve `options.max_batch_size` requests per engine call; `options.batch_patience`:
        see scheduler.KindChooser (None serves every pending type each round)."""
        self.policy, self.reward = policy, reward
        self.options = options
        self.prompts = policy.prompts
        self.engine_calls: dict[str, int] = defaultdict(int)
        if reward is not None:
            policy.set_reward_embeddings(reward.aligned)

    @classmethod
    def start(cls, policy: PolicySpec, reward: RewardSpec | None, options: RuntimeOptions = RuntimeOptions(),
              stop_strings=()) -> "LocalRuntime":
        """Build the engines from their specs (engines/build.py)."""
        policy_engine = build_policy_engine(policy, options.device, stop_strings)
        reward_engine = None
        if reward is not None:
            reward_engine = build_reward_engine(reward, policy_engine.tokenizer, options.device,
                                                policy_engine.embeddings.shape[0])
        return cls(policy_engine, reward_engine, options)

    def head_matrix(self) -> torch.Tensor:
        return self.policy.head_matrix()

    def shutdown(self) -> None:
        """Nothing to release: the engines go with this object."""

    def serve(self, requests: list) -> list:
        """Answer a batch of requests of one type."""
        self.engine_calls[type(requests[0]).__name__] += 1
        engine = self.policy if model_for(requests[0]) == "policy" else self.reward
        if engine is None:
            raise RuntimeError(f"a program asked for {type(requests[0]).__name__} but no reward model is configured")
        return serve(engine, requests)

    def run(self, programs: Programs, on_finish: OnFinish, max_in_flight: int | None = None) -> None:
        """Drive programs to completion, at most `max_in_flight` at once (None: no limit)."""
        scheduler = Scheduler(on_finish, programs, max_in_flight)
        patience = self.options.batch_patience
        chooser = KindChooser(patience) if patience is not None else None
        while True:
            scheduler.admit()
            if scheduler.finished:
                return
            tickets = scheduler.pending()
            if not tickets:
                continue
            if chooser is not None:  # one request type per round, the largest first
                kind = chooser.choose(tickets)
                tickets = [t for t in tickets if type(t.request) is kind]
            for batch in batches(tickets, self.options.max_batch_size):
                scheduler.issue(batch)
                self._serve_batch(scheduler, batch)

    def _serve_batch(self, scheduler: Scheduler, batch: list[Ticket]) -> None:
        try:
            answers = self.serve([t.request for t in batch])
        except Exception as error:
            if len(batch) == 1:
                scheduler.fail(batch[0].key, error)
                return
            log.warning("batch of %d %s failed (%s); serving one by one", len(batch),
                        type(batch[0].request).__name__, error)
            for ticket in batch:
                self._serve_batch(scheduler, [ticket])
            return
        for ticket, answer in zip(batch, answers):
            scheduler.deliver(ticket, answer)
