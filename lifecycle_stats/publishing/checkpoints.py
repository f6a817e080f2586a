"""The spool's WAL checkpoints, off the capture path.

SQLite checkpoints a WAL database in the COMMIT that grows its log past `wal_autocheckpoint`
pages (1000 by default, ~4 MB): that commit also copies the log into the database file and
fsyncs it (~10 ms on this machine), holding the spool's lock, so a capture waiting for that
lock (and nova, waiting for the capture) waits for the checkpoint too. With background
checkpoints the spool leaves them to this thread, on a connection of its own: a PASSIVE
checkpoint blocks neither writers nor readers. The commit's own checkpoint stays as a fallback
at a larger log (FALLBACK_PAGES), so a stalled thread costs disk, never an unbounded log.
Durability is unchanged: every commit still fsyncs the log (synchronous=FULL).
"""
from __future__ import annotations

import logging
import sqlite3

from lifecycle_stats import threads
from lifecycle_stats.counters import Counters

LOG = logging.getLogger(__name__)

FALLBACK_PAGES = 16_000  # ~64 MB of log before a commit checkpoints by itself
INTERVAL = 1.0  # seconds between background checkpoints


class Checkpointer:
    def __init__(self, path: str, *, counters: Counters, interval: float = INTERVAL) -> None:
        self._path = path
        self._counters = counters
        self._interval = interval
        self._loop = threads.WakeableLoop()

    @property
    def thread_state(self) -> str:
        return self._loop.state

    def start(self) -> None:
        self._loop.start(self._run, "lifecycle-stats-spool-checkpoints")

    def stop(self, timeout: float | None = 5.0) -> bool:
        return self._loop.stop(timeout)

    def _run(self) -> None:
        db = sqlite3.connect(self._path, isolation_level=None, check_same_thread=False,
                             timeout=30)
        try:
            while not self._loop.stopping.wait(self._interval):
                self.checkpoint(db)
            self.checkpoint(db)  # a short log for the next start
        finally:
            db.close()

    def checkpoint(self, db: sqlite3.Connection) -> int:
        """One PASSIVE checkpoint on db; the log frames it copied (0 on a failure, logged)."""
        try:
            _busy, _logged, copied = db.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
        except sqlite3.Error as exc:  # the commit's fallback still bounds the log
            self._counters.incr("spool.checkpoint_errors")
            LOG.warning("background checkpoint of %s failed: %s", self._path, exc)
            return 0
        self._counters.incr("spool.checkpoints")
        return max(copied, 0)


def leave_to_background(db: sqlite3.Connection) -> None:
    """The committing connection checkpoints only past FALLBACK_PAGES from now on."""
    db.execute(f"PRAGMA wal_autocheckpoint={FALLBACK_PAGES}")
