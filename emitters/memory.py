"""In-memory conduit (entry point `test`): keeps what it was given; can be told to fail."""
from __future__ import annotations

import threading

from lifecycle_stats.interfaces import Conduit
from lifecycle_stats.exceptions import EmitError
from lifecycle_stats.records import Notification


class MemoryConduit(Conduit):

    def __init__(self, conf=None) -> None:
        self.sent: list[Notification] = []
        self.failures_left = 0  # set > 0 to make the next emits fail
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)

    def emit(self, notification: Notification) -> None:
        with self._lock:
            if self.failures_left:
                self.failures_left -= 1
                raise EmitError("memory emitter told to fail")
            self.sent.append(notification)
            self._changed.notify_all()

    def wait_for(self, count: int, timeout: float) -> list[Notification]:
        """Block until at least count notifications were emitted (or timeout); return them."""
        with self._lock:
            self._changed.wait_for(lambda: len(self.sent) >= count, timeout)
            return list(self.sent)
