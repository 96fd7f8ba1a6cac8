"""The in-process runtime: local engines, batched per request type across problems."""

from __future__ import annotations

import logging
from collections import defaultdict
from typing import Callable, Hashable, Iterable

from nabla_dist.algorithm.nabla import Program
from nabla_dist.algorithm.requests import PolicyGrad, Reward, RewardGrad, Rollout
from nabla_dist.engines.policy import PolicyEngine
from nabla_dist.engines.reward import RewardEngine
from nabla_dist.runtime.scheduler import DEFAULT_PATIENCE, KindChooser, Scheduler, Ticket

log = logging.getLogger(__name__)


def request_length(request) -> int:
    """Tokens a request puts through the model (for length bucketing)."""
    if isinstance(request, Rollout):
        return len(request.prompt_ids) + request.max_new_tokens
    if isinstance(request, PolicyGrad):
        return len(request.ids)
    return len(request.response_ids)


def batches(tickets: list[Ticket], max_batch_size: int) -> list[list[Ticket]]:
    """Group tickets by request type, then cut each group, sorted by length, into batches."""
    groups: dict[type, list[Ticket]] = defaultdict(list)
    for ticket in tickets:
        groups[type(ticket.request)].append(ticket)
    out = []
    for group in groups.values():
        group.sort(key=lambda t: request_length(t.request))
        out += [group[i : i + max_batch_size] for i in range(0, len(group), max_batch_size)]
    return out


class LocalRuntime:
    def __init__(self, policy: PolicyEngine, reward: RewardEngine | None, max_batch_size: int = 16,
                 patience: int | None = DEFAULT_PATIENCE):
        """`patience`: see scheduler.KindChooser; None serves every pending type each round."""
        self.policy, self.reward = policy, reward
        self.max_batch_size = max_batch_size
        self.patience = patience
        self.engine_calls: dict[str, int] = defaultdict(int)
        if reward is not None:
            policy.set_reward_embeddings(reward.aligned)

    # -- what the experiment layer needs on the driver side ------------------------------
    @property
    def tokenizer(self):
        return self.policy.tokenizer

    def encode_prompt(self, question: str):
        return self.policy.encode_prompt(question)

    def head_matrix(self):
        return self.policy.head_matrix()

    def serve(self, requests: list) -> list:
        """Answer a batch of requests of one type."""
        kind = type(requests[0])
        self.engine_calls[kind.__name__] += 1
        if kind is Rollout:
            return self.policy.rollout(requests)
        if kind is PolicyGrad:
            return self.policy.grad(requests)
        if self.reward is None:
            raise RuntimeError(f"a program asked for {kind.__name__} but no reward model is configured")
        if kind is RewardGrad:
            return self.reward.grad(requests)
        if kind is Reward:
            return self.reward.score(requests)
        raise TypeError(f"unknown request type {kind.__name__}")

    def run(
        self,
        programs: dict[Hashable, Program] | Iterable[tuple[Hashable, Program]],
        on_finish: Callable,
        max_in_flight: int | None = None,
    ) -> None:
        """Drive programs to completion, at most `max_in_flight` at once (None: no limit).

        `programs` is pulled lazily, so a generator of (key, program) starts each problem
        only when there is room for it.
        """
        queue = iter(programs.items() if isinstance(programs, dict) else programs)
        scheduler = Scheduler(on_finish)
        chooser = KindChooser(self.patience) if self.patience is not None else None
        exhausted = False
        while not exhausted or len(scheduler):
            while not exhausted and (max_in_flight is None or len(scheduler) < max_in_flight):
                item = next(queue, None)
                if item is None:
                    exhausted = True
                else:
                    scheduler.add(*item)
            tickets = scheduler.pending()
            if not tickets:
                continue
            if chooser is not None:  # one request type per round, the largest first
                kind = chooser.choose(tickets)
                tickets = [t for t in tickets if type(t.request) is kind]
            for batch in batches(tickets, self.max_batch_size):
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
