"""A capture nobody waits for is built while its fsync runs, not after it.

The bus's capture (nova does not wait for it) goes: the read, the capture's commit (an fsync,
~0.6 ms, the GIL free), then a sender wakes and builds the delete.samples (~1-2 ms) before it
publishes. Handed here just before its commit, the publication thread builds it meanwhile;
the sender that asks once the capture is durable takes that build, or waits for the rest of
it. A capture nova waits for is never handed here: its build would share the host's two cores
and the GIL with nova's read and fsync (nova_waiting.py). Only a few are kept at once (MAX):
in a burst the captures queue up faster than one thread builds them, and each build is ~60
KiB of Python objects, so past MAX a capture takes the ordinary way (built when asked). A
build nobody takes (the commit found a duplicate, or failed) is dropped past MAX.
"""
from __future__ import annotations

import collections
import logging
import threading
from typing import Any, Callable

LOG = logging.getLogger(__name__)

MAX = 4  # builds queued, running or done and not yet taken


class _Entry:
    __slots__ = ("body", "started", "done", "result")

    def __init__(self, body: bytes) -> None:
        self.body = body
        self.started = False
        self.done = threading.Event()
        self.result: list[Any] = []  # the build, once done (empty: the build failed)


class EarlyBuilds:
    def __init__(self, build: Callable[[str, bytes], Any], wake: Callable[[], None]) -> None:
        self._build = build  # (message_id, capture record) -> the build
        self._wake = wake  # the thread that runs run_queued()
        self._lock = threading.Lock()
        self._entries: collections.OrderedDict[str, _Entry] = collections.OrderedDict()

    def offer(self, message_id: str, body: bytes) -> bool:
        """Before the capture's commit: queue its build; False when MAX are kept already."""
        with self._lock:
            if message_id in self._entries:
                return True
            if len(self._entries) >= MAX:
                self._drop_one_untaken()
                if len(self._entries) >= MAX:
                    return False
            self._entries[message_id] = _Entry(body)
        self._wake()
        return True

    def run_queued(self) -> int:
        """Build what is queued and not started (the publication thread); how many."""
        built = 0
        while (claimed := self._claim_next()) is not None:
            self._run(*claimed)
            built += 1
        return built

    def take(self, message_id: str, body: bytes) -> tuple[bool, Any]:
        """(True, the build) of this capture record if it was offered: waits for a build
        running now, runs one not started yet on the caller's thread. (False, None) if it was
        not offered, or was offered another body (a capture rebuilt after a restart)."""
        with self._lock:
            entry = self._entries.pop(message_id, None)
            if entry is None or entry.body != body:
                return False, None
            mine = not entry.started
            entry.started = True
        if mine:
            self._run(message_id, entry)
        entry.done.wait()
        return (True, entry.result[0]) if entry.result else (False, None)

    def __len__(self) -> int:
        return len(self._entries)

    def _claim_next(self) -> tuple[str, _Entry] | None:
        with self._lock:
            for message_id, entry in self._entries.items():
                if not entry.started:
                    entry.started = True
                    return message_id, entry
        return None

    def _run(self, message_id: str, entry: _Entry) -> None:
        try:
            entry.result.append(self._build(message_id, entry.body))
        except Exception:  # noqa: BLE001 - whoever takes it builds again the ordinary way
            LOG.warning("early build of capture %s failed; built when asked", message_id,
                        exc_info=True)
        finally:
            entry.done.set()

    def _drop_one_untaken(self) -> None:
        """Under the lock: forget the oldest build that is done (nobody took it)."""
        for message_id, entry in self._entries.items():
            if entry.done.is_set():
                del self._entries[message_id]
                return
