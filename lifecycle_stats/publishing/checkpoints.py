"""The spool's WAL checkpoints, off the capture path.

SQLite checkpoints a WAL database in the COMMIT that grows its log past `wal_autocheckpoint`
pages (1000 by default, ~4 MB): that commit also copies the log into the database file and
fsyncs it (~10 ms on this machine), holding the spool's lock, so a capture waiting for that
lock (and nova, waiting for the capture) waits for the checkpoint too. With background
checkpoints the spool leaves them to this thread, on a connection of its own: a PASSIVE
checkpoint blocks neither writers nor readers. The commit's own checkpoint stays as a
fallback at a larger log (FALLBACK_PAGES), and if this thread ends for any reason the spool
gets SQLite's own 1000 pages back: a dead thread costs what the spool cost before,
never an unbounded log. The log file is cut back to JOURNAL_LIMIT bytes after a checkpoint.
Durability is unchanged: every commit fsyncs the log, and this connection fsyncs what it
copies (synchronous=FULL on both).
"""
from __future__ import annotations

import logging
import sqlite3
from typing import TYPE_CHECKING

from lifecycle_stats import threads

if TYPE_CHECKING:
    from lifecycle_stats.publishing.spool import Spool

LOG = logging.getLogger(__name__)

FALLBACK_PAGES = 16_000  # ~64 MB of log before a commit checkpoints by itself
SQLITE_PAGES = 1000  # SQLite's own default, back when this thread is gone
JOURNAL_LIMIT = 8 << 20  # bytes of log file kept after a checkpoint
INTERVAL = 1.0  # seconds between background checkpoints


class Checkpointer:
    """The spool's checkpoints from start() to stop(); the agent owns it (the spool alone, in
    tests and the replay player, checkpoints in its commits as SQLite does)."""

    def __init__(self, spool: "Spool", *, interval: float = INTERVAL) -> None:
        self._spool = spool
        self._counters = spool.counters
        self._interval = interval
        self._loop = threads.WakeableLoop()
        self._failing = False

    @property
    def thread_state(self) -> str:
        return self._loop.state

    def start(self) -> None:
        self._spool.read(leave_to_background)
        self._loop.start(self._run, "lifecycle-stats-spool-checkpoints")

    def stop(self, timeout: float | None) -> bool:
        return self._loop.stop(timeout)

    def _run(self) -> None:
        try:
            db = sqlite3.connect(self._spool.path, isolation_level=None,
                                 check_same_thread=False, timeout=30)
            try:
                db.execute("PRAGMA synchronous=FULL")  # what it copies is fsynced
                while not self._loop.stopping.wait(self._interval):
                    self.checkpoint(db)
            finally:
                db.close()
        except Exception:  # noqa: BLE001 - whatever ended it, the commits take over again
            self._counters.incr("spool.checkpoint_errors")
            LOG.exception("background checkpoints of %s ended; commits checkpoint again",
                          self._spool.path)
        finally:
            self._give_back()

    def _give_back(self) -> None:
        """The thread ended: the spool's commits checkpoint at SQLite's own size again."""
        try:
            self._spool.read(take_back)
        except sqlite3.ProgrammingError:  # the spool closed first: nothing commits any more
            pass

    def checkpoint(self, db: sqlite3.Connection) -> int:
        """One PASSIVE checkpoint on db; the log frames it copied (0 on a failure: the first
        of a run of failures is logged, the others only counted)."""
        try:
            _busy, _logged, copied = db.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
        except sqlite3.Error as exc:  # the commit's fallback still bounds the log
            self._counters.incr("spool.checkpoint_errors")
            if not self._failing:
                LOG.warning("background checkpoint of %s failed (the next failures are only "
                            "counted): %s", self._spool.path, exc)
            self._failing = True
            return 0
        if self._failing:
            LOG.info("background checkpoints of %s work again", self._spool.path)
            self._failing = False
        self._counters.incr("spool.checkpoints")
        copied = max(copied, 0)
        self._counters.incr("spool.checkpointed_pages", copied)
        return copied


def leave_to_background(db: sqlite3.Connection) -> None:
    """The committing connection checkpoints only past FALLBACK_PAGES from now on."""
    db.execute(f"PRAGMA wal_autocheckpoint={FALLBACK_PAGES}")
    db.execute(f"PRAGMA journal_size_limit={JOURNAL_LIMIT}")


def take_back(db: sqlite3.Connection) -> None:
    """The committing connection checkpoints at SQLite's own log size again."""
    db.execute(f"PRAGMA wal_autocheckpoint={SQLITE_PAGES}")
