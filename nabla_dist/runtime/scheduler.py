"""Continuous batching of many problem programs: which requests are pending, who gets what.

A program yields a request or a list of requests; it is resumed once all of its answers
are in. The scheduler knows nothing of engines or Ray: a runtime asks it for pending
requests grouped by type, serves them however it likes, and delivers the answers.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Callable, Hashable

from nabla_dist.algorithm.nabla import Program, ProgramOutput


@dataclass
class _Running:
    program: Program
    requests: list
    as_list: bool
    answers: dict[int, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Ticket:
    """One pending request: program `key`, its index within what the program yielded."""

    key: Hashable
    index: int
    request: Any


class Scheduler:
    def __init__(self, on_finish: Callable[[Hashable, ProgramOutput | None, BaseException | None], None]):
        self._running: dict[Hashable, _Running] = {}
        self._issued: set[tuple[Hashable, int]] = set()
        self._on_finish = on_finish

    def __len__(self) -> int:
        return len(self._running)

    def add(self, key: Hashable, program: Program) -> None:
        if key in self._running:
            raise ValueError(f"program {key!r} is already running")
        self._advance(key, program, None)

    def pending(self) -> list[Ticket]:
        """Requests not yet handed out, oldest program first."""
        out = []
        for key, state in self._running.items():
            for i, request in enumerate(state.requests):
                if i not in state.answers and (key, i) not in self._issued:
                    out.append(Ticket(key, i, request))
        return out

    def issue(self, tickets: list[Ticket]) -> None:
        """Mark tickets as being served (so `pending` does not return them again)."""
        self._issued.update((t.key, t.index) for t in tickets)

    def retry(self, tickets: list[Ticket]) -> None:
        """Put issued tickets back into `pending` (their server died)."""
        self._issued.difference_update((t.key, t.index) for t in tickets)

    def deliver(self, ticket: Ticket, answer: Any) -> None:
        state = self._running.get(ticket.key)
        if state is None:
            return  # the program already failed
        self._issued.discard((ticket.key, ticket.index))
        state.answers[ticket.index] = answer
        if len(state.answers) == len(state.requests):
            answers = [state.answers[i] for i in range(len(state.requests))]
            self._advance(ticket.key, state.program, answers if state.as_list else answers[0])

    def fail(self, key: Hashable, error: BaseException) -> None:
        """End program `key` with an error (its other requests are dropped)."""
        state = self._running.pop(key, None)
        if state is None:
            return
        self._issued = {(k, i) for k, i in self._issued if k != key}
        state.program.close()
        self._on_finish(key, None, error)

    def _advance(self, key: Hashable, program: Program, answer: Any) -> None:
        self._running.pop(key, None)
        try:
            yielded = program.send(answer)
        except StopIteration as stop:
            self._on_finish(key, stop.value, None)
            return
        except Exception as error:  # a program bug or bad data fails this problem only
            self._on_finish(key, None, error)
            return
        as_list = isinstance(yielded, list)
        self._running[key] = _Running(program, yielded if as_list else [yielded], as_list)


DEFAULT_PATIENCE = 16  # measured on the toy pair: 4 and 16 both batch rollouts ~3x fuller than serving every type


class KindChooser:
    """Which type of request to serve next: the type with the most pending requests.

    Serving every type as soon as it is pending gives ∇-Reasoner's rollouts batches of
    two or three (most programs are in their inner loop at any moment), and a rollout
    batch costs one decode step per token whatever its size. Serving the largest group
    first lets the others gather. A type passed over `patience` times in a row is served
    next regardless, so none waits long. Answers do not depend on batching (each request
    carries its own seed), so this changes speed only.
    """

    def __init__(self, patience: int = DEFAULT_PATIENCE):
        if patience < 0:
            raise ValueError(f"patience={patience} must be >= 0")
        self.patience = patience
        self._passed: Counter = Counter()

    def choose(self, tickets: list[Ticket]) -> type:
        """The request type to serve from `tickets` (oldest first; ties go to the oldest)."""
        counts = Counter(type(t.request) for t in tickets)  # insertion order: oldest first
        if not counts:
            raise ValueError("no pending tickets to choose from")
        overdue = [kind for kind in counts if self._passed[kind] >= self.patience]
        kind = overdue[0] if overdue else max(counts, key=counts.__getitem__)
        self._passed = Counter({k: self._passed[k] + 1 for k in counts if k is not kind})
        return kind
