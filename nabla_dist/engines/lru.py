"""The least-recently-used store that the engines' caches keep their entries in."""

from __future__ import annotations

from collections import OrderedDict
from typing import Any, Hashable


class LRUStore:
    """At most `capacity` entries; a lookup that finds one makes it the most recent, and a
    store past capacity drops the least recent. `hits` / `misses` are the owner's to count."""

    def __init__(self, capacity: int):
        self.capacity = capacity
        self._entries: OrderedDict[Hashable, Any] = OrderedDict()
        self.hits = 0
        self.misses = 0

    def _lookup(self, key: Hashable) -> Any | None:
        entry = self._entries.get(key)
        if entry is not None:
            self._entries.move_to_end(key)
        return entry

    def _store(self, key: Hashable, entry: Any) -> None:
        self._entries[key] = entry
        self._entries.move_to_end(key)
        while len(self._entries) > self.capacity:
            self._entries.popitem(last=False)

    def clear(self) -> None:
        self._entries.clear()
