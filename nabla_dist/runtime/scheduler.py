"""Continuous batching of many problem programs: which requests are pending, who gets what.

A program yields a request or a list of requests; it is resumed once all of its answers
are in. The scheduler knows nothing of engines or Ray: a runtime asks it for pending
requests, cuts them into batches per type (`batches`), serves them however it likes, and
delivers the answers. Programs are admitted from a lazy queue, at most `max_in_flight` at
once, so a generator of problems starts each only when there is room for it.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Any, Callable, Hashable, Iterable

from nabla_dist.algorithm.program import Program, ProgramOutput
from nabla_dist.algorithm.requests import PolicyGrad, Rollout


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


Programs = dict[Hashable, Program] | Iterable[tuple[Hashable, Program]]
OnFinish = Callable[[Hashable, ProgramOutput | None, BaseException | None], None]


class Scheduler:
    def __init__(self, on_finish: OnFinish, programs: Programs = (), max_in_flight: int | None = None):
        """`on_finish(key, output, error)` is called the moment a program ends; `programs` is
        pulled lazily by `admit` (None: no limit on programs in flight)."""
        self._running: dict[Hashable, _Running] = {}
        self._issued: set[tuple[Hashable, int]] = set()
        self._on_finish = on_finish
        self._queue = iter(programs.items() if isinstance(programs, dict) else programs)
        self._exhausted = False
        self.max_in_flight = max_in_flight

    def __len__(self) -> int:
        return len(self._running)

    def admit(self) -> None:
        """Start queued programs while fewer than `max_in_flight` run."""
        while not self._exhausted and (self.max_in_flight is None or len(self) < self.max_in_flight):
            item = next(self._queue, None)
            if item is None:
                self._exhausted = True
            else:
                self.add(*item)

    @property
    def finished(self) -> bool:
        """Every queued program has been admitted and has ended."""
        return self._exhausted and not self._running

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
