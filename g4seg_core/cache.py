"""The one bounded least-recently-used map of the project (refiner caches, fetched images, results)."""
from __future__ import annotations

import threading
from collections import OrderedDict


class LRUCache:
    """A thread-safe map that keeps at most `capacity` entries, dropping the least recently used.

    With `max_weight`, the entries' weights (given to `put`, e.g. their size in bytes) also stay
    within it; an entry heavier than that alone is not kept.
    """

    def __init__(self, capacity: int, max_weight: int | None = None):
        self.capacity = capacity
        self.max_weight = max_weight
        self.weight = 0
        self._items: OrderedDict = OrderedDict()  # key -> (value, weight)
        self._lock = threading.Lock()

    def get(self, key, default=None):
        with self._lock:
            if key not in self._items:
                return default
            self._items.move_to_end(key)
            return self._items[key][0]

    def put(self, key, value, weight: int = 1) -> None:
        if self.capacity <= 0 or (self.max_weight is not None and weight > self.max_weight):
            return
        with self._lock:
            if key in self._items:
                self.weight -= self._items[key][1]
            self._items[key] = (value, weight)
            self._items.move_to_end(key)
            self.weight += weight
            while len(self._items) > self.capacity or (self.max_weight is not None and self.weight > self.max_weight):
                self.weight -= self._items.popitem(last=False)[1][1]

    def __contains__(self, key) -> bool:
        with self._lock:
            return key in self._items

    def __len__(self) -> int:
        return len(self._items)

    def clear(self) -> None:
        with self._lock:
            self._items.clear()
            self.weight = 0
