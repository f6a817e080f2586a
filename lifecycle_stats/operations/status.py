"""The agent's state on disk: a StatusWriter atomically rewrites <state_path>/status.json.

`lifecycle-stats-status` (lifecycle_stats/cmd/status.py) reads it from another process.
"""
from __future__ import annotations

import datetime
import json
import logging
import os
import socket
import threading
import time
from typing import Any, Callable

from lifecycle_stats import threads
from lifecycle_stats.counters import Counters
from lifecycle_stats.operations import files
from lifecycle_stats.publishing import spool as spool_mod
from lifecycle_stats.records import isotime, utcnow

LOG = logging.getLogger(__name__)

STATUS_FILENAME = "status.json"

Clock = Callable[[], datetime.datetime]


def status_path(state_path: str) -> str:
    return os.path.join(state_path, STATUS_FILENAME)


class StatusWriter:
    """Writes snapshot_fn()'s dict (plus written_at, pid, host, interval) every interval,
    then calls after_write. interval may be changed while running (a mutable option)."""

    def __init__(self, path: str, snapshot_fn: Callable[[], dict[str, Any]], interval: float,
                 clock: Clock = utcnow, host: str | None = None,
                 after_write: Callable[[], None] = lambda: None,
                 counters: Counters | None = None):
        if interval <= 0:
            raise ValueError(f"interval must be > 0, got {interval}")
        self.path = path
        self._snapshot = snapshot_fn
        self.interval = interval
        self._clock = clock
        self._host = host or socket.gethostname()
        self._after_write = after_write  # e.g. the node_exporter textfile, same cadence
        self._counters = counters if counters is not None else Counters()
        self._stop = threading.Event()
        self._rescheduled = threading.Event()
        self._thread: threading.Thread | None = None

    def reschedule(self, interval: float) -> None:
        """A new interval (a reload), counted from the last write's start, at once."""
        self.interval = interval
        self._rescheduled.set()

    def write(self) -> None:
        doc = {"pid": os.getpid(), "host": self._host, "interval": self.interval}
        doc.update(self._snapshot())
        doc["written_at"] = isotime(self._clock())
        text = json.dumps(doc, indent=2, sort_keys=True, default=str)
        files.write_atomically(self.path, text.encode("utf-8"), 0o600)
        self._after_write()

    @property
    def thread_state(self) -> str:
        return threads.state(self._thread, self._stop.is_set())

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="status-writer", daemon=True)
        self._thread.start()

    def stop(self, timeout: float | None = None) -> None:
        """Stop the thread and write a last time."""
        self._stop.set()
        self._rescheduled.set()
        if self._thread is not None:
            self._thread.join(timeout)
        self._write_logged()

    def _run(self) -> None:
        while not self._stop.is_set():
            began = time.monotonic()
            self._write_logged()
            threads.wait_interval(lambda: self.interval, began, self._stop, self._rescheduled)

    def _write_logged(self) -> None:
        try:
            self.write()
        except Exception:  # a status file must never take the agent down
            LOG.exception("could not write the status file %s", self.path)
            self._counters.incr("status.write_errors")


def spool_snapshot(spool: spool_mod.Spool) -> dict[str, Any]:
    """The `spool` part of a snapshot, for the agent's snapshot_fn."""
    by_conduit = {conduit: {"pending": pending, "oldest_age_seconds": age}
                  for conduit, (pending, age) in spool.backlog().items()}
    return {"depth": spool.depth(), "oldest_age_seconds": spool.oldest_age_seconds(),
            "by_conduit": by_conduit}
