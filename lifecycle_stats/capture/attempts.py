"""Bookkeeping of delete captures in flight: attempts per capture, one lock per instance."""
from __future__ import annotations

import collections
import contextlib
import threading
from typing import Iterator

MAX_TRACKED = 1_000  # captures tracked at once (oldest forgotten first): ~10 KiB each


class Attempts:
    """Per capture id, in memory and bounded: failed attempts, and the capture an attempt
    built but could not spool. A redelivery spools that capture rather than reading again:
    the domain may be gone by then, and what was read as `final` stays `final`. In memory,
    because the failing part is often the spool itself; a restart only restarts the count."""

    def __init__(self) -> None:
        self._entries: collections.OrderedDict[str, tuple[int, tuple | None]] = (
            collections.OrderedDict())
        self._lock = threading.Lock()

    def get(self, message_id: str) -> int:
        with self._lock:
            return self._entries.get(message_id, (0, None))[0]

    def built(self, message_id: str) -> tuple | None:
        with self._lock:
            return self._entries.get(message_id, (0, None))[1]

    def keep_built(self, message_id: str, built: tuple) -> None:
        with self._lock:
            self._entries[message_id] = (self._entries.get(message_id, (0, None))[0], built)
            self._trim()

    def bump(self, message_id: str) -> int:
        with self._lock:
            count, built = self._entries.pop(message_id, (0, None))
            self._entries[message_id] = (count + 1, built)
            self._trim()
            return count + 1

    def forget(self, message_id: str) -> None:
        with self._lock:
            self._entries.pop(message_id, None)

    def _trim(self) -> None:
        while len(self._entries) > MAX_TRACKED:
            self._entries.popitem(last=False)


class InstanceLocks:
    """Serialise the captures of one instance. A lock is counted by the threads holding or
    awaiting it and dropped when the last one leaves, so every trigger of an instance in
    flight at once shares one lock; a later one finds the notification spooled."""

    def __init__(self) -> None:
        self._locks: dict[str, tuple[threading.Lock, int]] = {}  # lock, holders + waiters
        self._guard = threading.Lock()

    @contextlib.contextmanager
    def held(self, instance_id: str) -> Iterator[None]:
        with self._guard:
            lock, users = self._locks.get(instance_id, (None, 0))
            lock = lock or threading.Lock()
            self._locks[instance_id] = (lock, users + 1)
        try:
            with lock:
                yield
        finally:
            with self._guard:
                lock, users = self._locks[instance_id]
                if users == 1:
                    del self._locks[instance_id]
                else:
                    self._locks[instance_id] = (lock, users - 1)
