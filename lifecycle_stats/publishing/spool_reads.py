"""The spool's reading side: what is spooled, delivered, pending, as of the last commit.

Every read here that senders and nova's wait make (seen, last_capture, pending) goes through
the spool's read-only lookups connection (spool_schema.open_lookups), never waiting for the
writers' lock, which a commit holds across its fsync; the counts for status, metrics and the
senders' drain go through a read-only connection of their own (a count of a large backlog
takes tens of ms: it must hold up neither). A mixin of Spool (spool.py), which owns the
connections.
"""
from __future__ import annotations

import logging
import sqlite3
from typing import Callable

from lifecycle_stats.publishing import capture_rows, spool_schema
from lifecycle_stats.records import Notification

LOG = logging.getLogger("lifecycle_stats.publishing.spool")
Build = Callable[[capture_rows.Waiting], "Notification | None"]  # a capture, built to send
decode = spool_schema.decode


class SpoolReads:
    def last_capture(self, instance_id: str) -> str | None:
        """The message_id of the newest capture of this instance within the retention period."""
        with self._lookups_lock:
            return self._lookups.execute(
                "SELECT max(message_id) FROM captures WHERE instance_id = ? AND captured_at >= ?",
                (instance_id, self._now() - self._retention[0])).fetchone()[0]

    def seen(self, message_id: str) -> bool:
        """Spooled now, or delivered within the retention period (as of the last commit)."""
        with self._lookups_lock:
            return self._known(self._lookups, message_id, self._now())

    def _known(self, db: sqlite3.Connection, message_id: str, now: float) -> bool:
        row = db.execute(
            "SELECT 1 FROM records WHERE message_id = ? UNION ALL SELECT 1 FROM delivered "
            "WHERE message_id = ? AND delivered_at >= ? LIMIT 1",
            (message_id, message_id, now - self._retention[0])).fetchone()
        return row is not None

    def pending(self, conduit: str, limit: int, build: Build | None = None
                ) -> list[tuple[int, Notification]]:
        """Up to limit records conduit has not confirmed, oldest first: order is capture order.

        A capture (capture_rows.py) is given as build(it) makes it; without build, or when
        build gives None (it cannot be built yet), the list ends before it. Undecodable bodies
        are moved to `rejects` on the way (never returned, never blocking).
        """
        # read on the lookups' connection and decoded outside every lock: a capture's put
        # never waits for a sender's read of up to `limit` bodies
        with self._lookups_lock:
            rows = self._lookups.execute(
                "SELECT seq, message_id, tier, body FROM records r WHERE NOT EXISTS (SELECT 1 "
                "FROM deliveries d WHERE d.seq = r.seq AND d.conduit = ?) ORDER BY seq LIMIT ?",
                (conduit, limit)).fetchall()
        out: list[tuple[int, Notification | capture_rows.Waiting]] = []
        for seq, message_id, tier, body in rows:
            if tier == capture_rows.TIER:
                if build is None:
                    break
                out.append((seq, capture_rows.Waiting(seq, message_id, body)))
                continue
            try:
                out.append((seq, decode(body)))
            except ValueError as exc:
                with self._tx() as db:
                    self._reject(db, seq, message_id, str(exc))
        # captures are built outside the lock: a capture's put never waits for a build
        for index, (seq, item) in enumerate(out):
            if isinstance(item, capture_rows.Waiting):
                try:
                    built = build(item)
                except Exception:  # noqa: BLE001 - what precedes it still goes; retried later
                    LOG.exception("building capture %s failed", item.message_id)
                    built = None
                if built is None:
                    return out[:index]
                out[index] = (seq, built)
        return out

    def _reject(self, db: sqlite3.Connection, seq: int, message_id: str, reason: str) -> None:
        """Move a corrupt record to rejects (once: another conduit's sender may have)."""
        moved = db.execute("INSERT INTO rejects (seq, message_id, tier, created_at, body, "
                           "reason, rejected_at, origin) SELECT seq, message_id, tier, "
                           "created_at, body, ?, ?, 'spool' FROM records WHERE seq = ?",
                           (reason, self._now(), seq)).rowcount
        if not moved:
            return
        self.delete(db, seq)
        self._counters.incr("spool.corrupt")
        LOG.error("spool record %d (message_id %s) is corrupt (%s): moved to the rejects table",
                  seq, message_id, reason)

    def pending_count(self, conduit: str) -> int:
        with self._counts_lock:
            return self._counts.execute(
                "SELECT count(*) FROM records r WHERE NOT EXISTS (SELECT 1 FROM deliveries d "
                "WHERE d.seq = r.seq AND d.conduit = ?)", (conduit,)).fetchone()[0]

    def backlog(self) -> dict[str, tuple[int, float | None]]:
        """Per conduit: how many records it has not confirmed, and the oldest one's age (s)."""
        now = self._now()
        with self._counts_lock:
            rows = {conduit: self._counts.execute(
                "SELECT count(*), min(created_at) FROM records r WHERE NOT EXISTS (SELECT 1 "
                "FROM deliveries d WHERE d.seq = r.seq AND d.conduit = ?)", (conduit,)).fetchone()
                for conduit in self.conduits}
        return {conduit: (count, None if oldest is None else max(0.0, now - oldest))
                for conduit, (count, oldest) in rows.items()}

    def depth(self) -> int:
        with self._counts_lock:
            return self._counts.execute("SELECT count(*) FROM records").fetchone()[0]

    def oldest_age_seconds(self) -> float | None:
        with self._counts_lock:
            oldest = self._counts.execute("SELECT min(created_at) FROM records").fetchone()[0]
        return None if oldest is None else max(0.0, self._now() - oldest)
