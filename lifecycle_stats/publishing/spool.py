"""Durable, at-least-once spool between capture and the conduits.

A final sample exists once: after nova destroys the domain it can never be read again. So
every notification is written here (and fsynced) before any conduit is tried, and it is
removed only after every configured conduit confirmed it. Concurrent puts share one commit
(group_commit.py); a sender retires a batch in one (confirm_many). Each conduit has its own
cursor (records without a `deliveries` row for it): one failing conduit never holds back another.

Size policy (max_records): when the spool holds max_records or more, periodic records are
shed oldest-first to make room (counted `spool.shed`, logged). Final records are never shed:
a final put always succeeds, even over the bound (counted `spool.over_bound`). When the bound
is full of finals, a periodic put is refused: put() returns False (counted `spool.shed`).

Recently delivered message ids are kept in `delivered` (bounded by age and rows, pruned on
put) so that a redelivered trigger for an already-published notification is recognised, and
the last capture id per instance in `captures` (same age bound), so that a later capture can
say which one it supersedes. `rejects` keeps what can never be delivered as it is: corrupt
bodies, captures that broke the contract, records a conduit gave up on (see sender.py).
"""
from __future__ import annotations

import contextlib
import datetime
import logging
import os
import sqlite3
import threading
from typing import Any, Callable

from lifecycle_stats.counters import Counters
from lifecycle_stats.publishing import capture_rows, spool_bounds, spool_schema
from lifecycle_stats.publishing.group_commit import GroupCommit
from lifecycle_stats.publishing.spool_reads import Build, SpoolReads
from lifecycle_stats.records import Notification, utcnow
from lifecycle_stats import sqlite_tx

LOG = logging.getLogger(__name__)
CAPTURE_EVENT = "compute.instance.delete.samples"

SPOOL_FILENAME = "spool.sqlite"
TIERS = ("final", "periodic")  # the tiers put() takes; captures go in by put_capture()
encode = spool_schema.encode
decode = spool_schema.decode
read_only_stats = spool_schema.read_only_stats


def spool_path(state_path: str) -> str:
    return os.path.join(state_path, SPOOL_FILENAME)


class Spool(SpoolReads):
    def __init__(self, path: str, *, conduits: list[str], max_records: int = 100_000,
                 clock: Callable[[], datetime.datetime] = utcnow, counters: Counters | None = None,
                 retention_seconds: float = 7 * 86400, retention_rows: int = 100_000):
        if not conduits or len(set(conduits)) != len(conduits):
            raise ValueError(f"conduits must be a non-empty list of distinct names: {conduits!r}")
        if max_records < 1:
            raise ValueError(f"max_records must be >= 1, got {max_records}")
        self.path = path
        self.conduits = tuple(conduits)
        self._max = max_records
        self._clock = clock
        self._counters = counters if counters is not None else Counters()
        self._retention = (retention_seconds, retention_rows)
        self._lock = threading.RLock()
        spool_schema.prepare_file(path)
        self._db = spool_schema.open_database(path, clock=clock, counters=self._counters)
        spool_schema.restrict_sidecars(path)
        self._group = GroupCommit(self._db, self._lock, on_commit=self._count_commit)
        # seen() and last_capture() (asked on nova's wait) and the senders' pending() read
        # the last commit on a connection of their own, never waiting for the writers' lock
        # (a commit holds it across its fsync)
        self._lookups = spool_schema.open_lookups(path)
        self._lookups_lock = threading.Lock()
        # status and metrics count the whole spool (55 ms at 100,000 records): on a third
        # connection, so neither a capture's commit nor nova's lookups wait for a count
        self._counts = spool_schema.open_lookups(path)
        self._counts_lock = threading.Lock()
        with self._tx() as db:
            self.retire_complete(db)

    def _tx(self) -> contextlib.AbstractContextManager[sqlite3.Connection]:
        return sqlite_tx.immediate(self._db, self._lock)

    def _now(self) -> float:
        return self._clock().timestamp()

    now = _now

    @property
    def counters(self) -> Counters:
        return self._counters

    def read(self, query: Callable[[sqlite3.Connection], Any]) -> Any:
        with self._lock:
            return query(self._db)

    def _count_commit(self, size: int) -> None:
        self._counters.incr("spool.commits")
        self._counters.incr("spool.committed_writes", size)

    # -- writing ----------------------------------------------------------------------------

    def put(self, notification: Notification, tier: str) -> bool:
        """Store durably; False for a duplicate or a refused periodic record (see module doc)."""
        if tier not in TIERS:
            raise ValueError(f"tier must be one of {TIERS}, got {tier!r}")
        now = self._now()
        body = encode(notification, tier, now)
        # Concurrent puts share one commit (group_commit.py); this returns after it.
        stored = self._group.run(lambda db: self._insert(db, notification, tier, body, now))
        if stored:
            self._counters.incr("spool.put")
        return stored

    def put_capture(self, message_id: str, instance_id: str, body: bytes) -> bool:
        """A deletion's capture, durably, until it is built (publishing/capture_rows.py)."""
        return capture_rows.put(self, message_id, instance_id, body)

    def put_flagged(self, flagged: Notification, rejected: Notification, reason: str) -> bool:
        """put() a flagged final, and keep what could not be published (rejected) in
        `rejects`, in one transaction: a retry never keeps it twice (capture_rows.py)."""
        return capture_rows.put_flagged(self, flagged, rejected, reason)

    def _insert(self, db: sqlite3.Connection, notification: Notification, tier: str,
                body: bytes, now: float) -> bool:
        instance_id = notification.payload.get("instance_id")
        # Only delete.samples are captures a later capture supersedes (a final exists, spooled
        # as `final` beside its delete.samples, is usage, not a capture).
        capture_of = (instance_id if tier == "final" and isinstance(instance_id, str)
                      and notification.event_type == CAPTURE_EVENT else None)
        return self.insert(db, notification.message_id, tier, body, now, capture_of)

    def insert(self, db: sqlite3.Connection, message_id: str, tier: str, body: bytes,
               now: float, capture_of: str | None = None) -> bool:
        """Insert one record in db's transaction (False: a duplicate or refused, see module
        doc); capture_of: the instance whose newest capture this is."""
        spool_bounds.prune_delivered(db, now, *self._retention)
        if self._known(db, message_id, now):
            self._counters.incr("spool.duplicate")
            return False
        if not spool_bounds.make_room(db, tier, self._max, self._counters):
            return False
        db.execute("INSERT INTO records (message_id, tier, created_at, body) "
                   "VALUES (?, ?, ?, ?)", (message_id, tier, now, body))
        if capture_of is not None:
            db.execute("INSERT OR REPLACE INTO captures (instance_id, message_id, captured_at) "
                       "VALUES (?, ?, ?)", (capture_of, message_id, now))
        return True

    def write(self, operation: Callable[[sqlite3.Connection], Any]) -> Any:
        """operation(db) in a transaction shared with concurrent writers (group_commit.py)."""
        return self._group.run(operation)

    def confirm(self, seq: int, conduit: str) -> bool:
        """Record that conduit delivered seq; True when that completed (and removed) it."""
        return self.confirm_many([seq], conduit) > 0

    def confirm_many(self, seqs: list[int], conduit: str) -> int:
        """confirm() a batch in one transaction (one fsync); how many records it completed."""
        if conduit not in self.conduits:
            raise ValueError(f"unknown conduit {conduit!r}; configured: {self.conduits}")
        with self._tx() as db:
            db.executemany("INSERT OR IGNORE INTO deliveries (seq, conduit) SELECT seq, ? "
                           "FROM records WHERE seq = ?", [(conduit, seq) for seq in seqs])
            return sum(self.retire_complete(db, seq) for seq in seqs)

    def note_failure(self, seq: int, error: str, conduit: str) -> tuple[int, float]:
        """Count a failed delivery of seq by conduit; (that conduit's attempts so far, record
        age in seconds). records.attempts keeps every conduit's, for the status."""
        with self._tx() as db:  # (no RETURNING: SQLite before 3.35 is still about)
            db.execute("UPDATE records SET attempts = attempts + 1, last_error = ? "
                       "WHERE seq = ?", (error[:1000], seq))
            row = db.execute("SELECT created_at FROM records WHERE seq = ?", (seq,)).fetchone()
            if row is None:
                return 0, 0.0
            db.execute("INSERT INTO failures (seq, conduit, attempts) VALUES (?, ?, 1) "
                       "ON CONFLICT (seq, conduit) DO UPDATE SET attempts = attempts + 1",
                       (seq, conduit))
            (attempts,) = db.execute("SELECT attempts FROM failures WHERE seq = ? AND "
                                     "conduit = ?", (seq, conduit)).fetchone()
        return attempts, max(0.0, self._now() - row[0])

    def reject(self, seq: int, conduit: str, reason: str) -> None:
        """conduit gives up on seq: keep a copy in rejects and move that conduit past it
        (other conduits still deliver it; it leaves the spool when all are done)."""
        with self._tx() as db:
            db.execute("INSERT INTO rejects (seq, message_id, tier, created_at, body, reason, "
                       "rejected_at, origin) SELECT seq, message_id, tier, created_at, body, ?, "
                       "?, ? FROM records WHERE seq = ?", (reason, self._now(), conduit, seq))
            db.execute("INSERT OR IGNORE INTO deliveries (seq, conduit) VALUES (?, ?)",
                       (seq, conduit))
            self.retire_complete(db, seq, delivered=False)

    def retire_complete(self, db: sqlite3.Connection, seq: int | None = None, *,
                        delivered: bool = True) -> int:
        """Remove records every configured conduit confirmed (one seq, or all at start-up).
        A capture stays until its swap (capture_rows.publish): its deletion is accounted."""
        marks = ",".join("?" * len(self.conduits))
        where = "AND r.seq = ?" if seq is not None else ""
        rows = db.execute(
            f"SELECT r.seq, r.message_id FROM records r WHERE r.tier != ? AND (SELECT count(*) "
            f"FROM deliveries d WHERE d.seq = r.seq AND d.conduit IN ({marks})) = ? {where}",
            (capture_rows.TIER, *self.conduits, len(self.conduits),
             *(() if seq is None else (seq,)))).fetchall()
        now = self._now()
        for done_seq, message_id in rows:
            self.delete(db, done_seq)
            if delivered:
                db.execute("INSERT OR REPLACE INTO delivered (message_id, delivered_at) "
                           "VALUES (?, ?)", (message_id, now))
        return len(rows)

    @staticmethod
    def delete(db: sqlite3.Connection, seq: int) -> None:
        db.execute("DELETE FROM records WHERE seq = ?", (seq,))
        db.execute("DELETE FROM deliveries WHERE seq = ?", (seq,))
        db.execute("DELETE FROM failures WHERE seq = ?", (seq,))

    def close(self) -> None:
        with self._lookups_lock:
            self._lookups.close()
        with self._counts_lock:
            self._counts.close()
        with self._lock:
            self._db.close()
