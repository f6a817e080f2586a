"""Captures in the spool (capture first, publish after).

A deletion's capture is one spool record of tier `capture` under the delete.samples' own
message id: durable once put() returns (a group commit, like every put), a duplicate for
seen(), the instance's newest capture for last_capture(). A sender publishes it as its build
makes it (Spool.pending's build: deterministic, so a build after a restart gives the same
notification), at once, in capture order. The publication thread accounts the deletion and
then swaps the capture for its notification in one transaction, in the capture's place
(publish), or keeps what could not be published in rejects; only then may the record leave
the spool (Spool.retire_complete), so a crash before the accounting redoes it. The body is
opaque here (capture/capture_record.py writes and reads it).
"""
from __future__ import annotations

import logging
import sqlite3
from typing import TYPE_CHECKING, NamedTuple

from lifecycle_stats.publishing import spool_schema
from lifecycle_stats.records import Notification

if TYPE_CHECKING:
    from lifecycle_stats.publishing.spool import Spool

LOG = logging.getLogger("lifecycle_stats.publishing.spool")

TIER = "capture"


class Waiting(NamedTuple):
    seq: int
    message_id: str
    body: bytes


class Built(NamedTuple):
    """What to put in a capture's place: its notification, or a flagged one plus what could
    not be published (`rejected`, kept in rejects with `reason`); no notification at all for
    a capture record that cannot be read (kept in rejects, as a corrupt spool record is)."""

    waiting: Waiting
    notification: Notification | None
    rejected: Notification | bytes | None = None
    reason: str | None = None


def put(spool: "Spool", message_id: str, instance_id: str, body: bytes) -> bool:
    """Store a capture durably; False when this message id is spooled or delivered already."""
    now = spool.now()
    stored = spool.write(lambda db: spool.insert(db, message_id, TIER, body, now, instance_id))
    if stored:
        spool.counters.incr("spool.captures")
    return stored


def put_flagged(spool: "Spool", flagged: Notification, rejected: Notification,
                reason: str) -> bool:
    """A flagged final delete.samples and, in the same transaction, what it replaces in
    rejects (Spool.put_flagged)."""
    now = spool.now()
    body = spool_schema.encode(flagged, "final", now)
    kept = spool_schema.reject_body(rejected, now)
    instance_id = flagged.payload.get("instance_id")

    def insert_both(db: sqlite3.Connection) -> bool:
        stored = spool.insert(db, flagged.message_id, "final", body, now,
                              instance_id if isinstance(instance_id, str) else None)
        if stored:
            db.execute("INSERT INTO rejects (message_id, tier, created_at, body, reason, "
                       "rejected_at, origin) VALUES (?, 'final', ?, ?, ?, ?, 'capture')",
                       (rejected.message_id, now, kept, reason, now))
        return stored

    stored = spool.write(insert_both)
    if stored:
        spool.counters.incr("spool.put")
        spool.counters.incr("spool.rejects.capture")
    return stored


def waiting(spool: "Spool", limit: int) -> list[Waiting]:
    """Up to limit captures not built yet, oldest first."""
    rows = spool.read(lambda db: db.execute(
        "SELECT seq, message_id, body FROM records WHERE tier = ? ORDER BY seq LIMIT ?",
        (TIER, limit)).fetchall())
    return [Waiting(*row) for row in rows]


def publish(spool: "Spool", built: list[Built]) -> int:
    """Swap each capture for what was built from it, all in one transaction; how many."""
    now = spool.now()

    def swap(db: sqlite3.Connection) -> int:
        done = 0
        for item in built:
            if item.notification is None:
                _remove(db, item.waiting.seq)
                _keep_rejected(db, item, now, origin="spool")
                spool.counters.incr("spool.corrupt")
                LOG.error("capture %s cannot be read (%s): moved to the rejects table",
                          item.waiting.message_id, item.reason)
                continue
            if item.reason is None and _delivered_everywhere(spool, db, item.waiting.seq):
                # the senders delivered what it was built into: nothing left to encode
                swapped = db.execute("UPDATE records SET tier = 'final' WHERE seq = ? AND "
                                     "tier = ?", (item.waiting.seq, TIER)).rowcount
                spool.retire_complete(db, item.waiting.seq)
                done += swapped
                continue
            # in the capture's place (its seq): senders keep capture order
            body = spool_schema.encode(item.notification, "final", now)
            swapped = db.execute("UPDATE records SET tier = 'final', body = ? WHERE seq = ? AND "
                                 "tier = ?", (body, item.waiting.seq, TIER)).rowcount
            if item.reason is not None and swapped:
                _keep_rejected(db, item, now, origin="capture")
            # senders may have delivered it already (built from the capture): retire it now
            spool.retire_complete(db, item.waiting.seq)
            done += swapped
        return done

    return spool.write(swap)


def _delivered_everywhere(spool: "Spool", db: sqlite3.Connection, seq: int) -> bool:
    marks = ",".join("?" * len(spool.conduits))
    return db.execute(f"SELECT count(*) FROM deliveries WHERE seq = ? AND conduit IN ({marks})",
                      (seq, *spool.conduits)).fetchone()[0] == len(spool.conduits)


def _remove(db: sqlite3.Connection, seq: int) -> bool:
    db.execute("DELETE FROM deliveries WHERE seq = ?", (seq,))
    return db.execute("DELETE FROM records WHERE seq = ? AND tier = ?",
                      (seq, TIER)).rowcount == 1


def _keep_rejected(db: sqlite3.Connection, item: Built, now: float, origin: str) -> None:
    rejected = item.rejected
    body = (rejected if isinstance(rejected, bytes)
            else spool_schema.reject_body(rejected or item.notification, now))
    db.execute("INSERT INTO rejects (message_id, tier, created_at, body, reason, rejected_at, "
               "origin) VALUES (?, 'final', ?, ?, ?, ?, ?)",
               (item.waiting.message_id, now, body, item.reason, now, origin))
