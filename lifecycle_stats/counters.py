"""Thread-safe named counters: rejects, retries, captures. Read by the status command."""
from __future__ import annotations

import collections
import threading


class Counters:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._values: collections.Counter[str] = collections.Counter()

    def incr(self, name: str, by: int = 1) -> None:
        with self._lock:
            self._values[name] += by

    def get(self, name: str) -> int:
        with self._lock:
            return self._values[name]

    def snapshot(self) -> dict[str, int]:
        with self._lock:
            return dict(self._values)
