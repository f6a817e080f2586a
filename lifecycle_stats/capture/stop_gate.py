"""Stopping without losing a trigger: work in flight may finish, nothing is written after.

close() refuses new work at once, waits (bounded) for the work in flight, and from its return
on refuses every write: a flush that outlives the stop raises ShuttingDown instead of writing
to a closing spool, so its trigger is not acknowledged and reaches the next run. Writes run
outside the gate's lock, so concurrent captures share the spool's group commit; close() waits
for the writes in progress (unbounded: each is one spool transaction) before it returns.
"""
from __future__ import annotations

import contextlib
import threading
from typing import Callable, Iterator, TypeVar

from lifecycle_stats.exceptions import ShuttingDown

T = TypeVar("T")


class StopGate:
    def __init__(self) -> None:
        self._cond = threading.Condition()  # close() vs writes; counts work in flight
        self._accepting = True  # False from the start of close()
        self.closed = False  # True once close() returned
        self._in_flight = 0
        self._writing = 0  # writes in progress

    @contextlib.contextmanager
    def working(self, what: str) -> Iterator[None]:
        """Hold while doing `what`; raises ShuttingDown once close() began. An error raised
        after close() returned becomes ShuttingDown: the stop cut the work short."""
        with self._cond:
            if not self._accepting:
                raise ShuttingDown(f"not {what}: the agent is stopping")
            self._in_flight += 1
        try:
            yield
        except ShuttingDown:
            raise
        except Exception as exc:
            if self.closed:  # e.g. the spool was closed under work that outlived close()
                raise ShuttingDown(f"{what} cut by the stop") from exc
            raise
        finally:
            with self._cond:
                self._in_flight -= 1
                self._cond.notify_all()

    def write(self, put: Callable[..., T], *args, **kwargs) -> T:
        """put(*args, **kwargs), refused once close() returned (close() waits for it)."""
        with self._cond:
            if self.closed:
                raise ShuttingDown("the agent is stopping: nothing more is written")
            self._writing += 1
        try:
            return put(*args, **kwargs)
        finally:
            with self._cond:
                self._writing -= 1
                self._cond.notify_all()

    def close(self, timeout: float) -> bool:
        """Refuse new work, wait for work in flight; False if some still runs."""
        with self._cond:
            self._accepting = False
            done = self._cond.wait_for(lambda: self._in_flight == 0, timeout)
            self.closed = True
            self._cond.wait_for(lambda: self._writing == 0)
            return done
