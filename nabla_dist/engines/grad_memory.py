"""What a gradient pass computed, kept per exact forward sequence and served again while
the sequence stays the same (ALGORITHM.md, "Exact accelerations").

A probe takes ∂L/∂y at every ahead position of P ‖ C ‖ A. When the optimized position keeps
its token or its proposal is rejected, the next probe runs on the same sequence with the
ahead starting later, and its rows equal the earlier ones: committing position p does not
move ∂L/∂y_q for q > p (causal attention: no log-prob term after p changes; the reward
reads the same sequence; position p's own term does not depend on y_q). The inner loop's
gradient for the token already there is the same rows again. So an entry keyed by the whole
sequence serves any later request on it whose ahead starts at or after the entry's.

Exact by construction (the key is every token), so it is a speed switch: `*.grad_memory`
entries, least recently used dropped, 0 = off.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Hashable

import torch

from nabla_dist.engines.lru import LRUStore


@dataclass
class Remembered:
    """One pass's rows from `ahead_start` on; a later request reads rows[offset:]."""

    ahead_start: int
    rows: dict[str, torch.Tensor]  # name -> [m, …], m = ahead positions of the pass
    value: float = 0.0  # the reward (reward engine)

    def suffix(self, ahead_start: int) -> dict[str, torch.Tensor]:
        offset = ahead_start - self.ahead_start
        return {name: rows[offset:] for name, rows in self.rows.items()}


class GradMemory(LRUStore):
    def get(self, key: Hashable, ahead_start: int) -> Remembered | None:
        """The entry for sequence `key` if it covers an ahead starting at `ahead_start`."""
        entry = self._entries.get(key)
        if entry is None or entry.ahead_start > ahead_start:
            self.misses += 1
            return None
        self.hits += 1
        return self._lookup(key)

    def put(self, key: Hashable, entry: Remembered) -> None:
        """Keep `entry` (its tensors are copied: they are slices of a whole batch's)."""
        entry.rows = {name: rows.detach().clone() for name, rows in entry.rows.items()}
        self._store(key, entry)


@dataclass
class Served:
    """Per request of a batch: its entry, tokens its pass ran (0 from memory), prefix tokens
    its pass built, and whether a pass ran for it."""

    entry: Remembered
    tokens: int = 0
    prefix_tokens: int = 0
    ran: bool = False


def serve_or_run(memory: GradMemory | None, keys: list[Hashable], starts: list[int],
                 run: Callable[[list[int]], list[tuple[Remembered, int, int]]]) -> list[Served]:
    """Serve each request (sequence `keys[b]`, ahead from `starts[b]`) from `memory`; run one
    batched pass, `run(indices)` -> (entry, tokens, prefix tokens) each, for the others."""
    found = [None if memory is None else memory.get(key, start) for key, start in zip(keys, starts)]
    served = [None if entry is None else Served(entry) for entry in found]
    missing = [b for b, entry in enumerate(found) if entry is None]
    if missing:
        for b, (entry, tokens, built) in zip(missing, run(missing)):
            served[b] = Served(entry, tokens, built, ran=True)
            if memory is not None:
                memory.put(keys[b], entry)
    return served
