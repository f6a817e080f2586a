"""The reporting side of the usage ledger: what is owed, claimed, reported and spooled.

A mixin of UsageLedger (usage/ledger.py), which holds the connection, its lock and the audit
period; the claiming itself is in usage/journal.py."""
from __future__ import annotations

import datetime
from typing import Callable

from lifecycle_stats.records import UTC, InstanceInfo, Notification, Usage
from lifecycle_stats.usage import codec, journal


def _ts(moment: datetime.datetime) -> float:
    return moment.timestamp()


def _dt(seconds: float) -> datetime.datetime:
    return datetime.datetime.fromtimestamp(seconds, UTC)


class Books:
    def claim_report(self, message_id: str, instance_id: str,
                     upto: datetime.datetime | None, build: Callable[[Usage], Notification], *,
                     begin: datetime.datetime, end: datetime.datetime, tier: str, source: str,
                     now: datetime.datetime) -> Notification:
        """The report `message_id`: made once, from every entry of the instance not reported
        before and read no later than `upto` (None: all), and stored with them in one
        transaction; asked again (a redelivery, a restart), the stored one."""
        with self._tx() as db:
            made = journal.stored(db, message_id)
            if made is not None:
                return made
            rows = journal.claim(db, instance_id, None if upto is None else _ts(upto),
                                 message_id)
            notification = build(journal.summarize(rows, begin, end))
            journal.store(db, message_id, instance_id, tier, source, notification, _ts(now))
            return notification

    def pending_usage(self, instance_id: str, upto: datetime.datetime | None = None,
                      begin: datetime.datetime | None = None) -> Usage:
        """What a report made now would carry (nothing is claimed)."""
        with self._lock:
            rows = journal.open_entries(self._db, instance_id,
                                        None if upto is None else _ts(upto))
        moment = upto or datetime.datetime.now(UTC)
        return journal.summarize(rows, begin or moment, moment)

    def owes(self, instance_id: str, upto: datetime.datetime | None = None) -> bool:
        with self._lock:
            return bool(journal.open_entries(self._db, instance_id,
                                             None if upto is None else _ts(upto)))

    def unspooled_reports(self) -> list[tuple[str, Notification]]:
        with self._lock:
            return journal.unspooled(self._db)

    def mark_spooled(self, message_ids: list[str], now: datetime.datetime) -> None:
        with self._tx() as db:
            journal.mark_spooled(db, message_ids, _ts(now))

    def ended(self, instance_id: str) -> tuple[InstanceInfo, datetime.datetime,
                                               datetime.datetime] | None:
        """(identity, when it ended, nova's delete announcement) of an ended instance."""
        with self._lock:
            row = self._db.execute("SELECT info, deleted_at, delete_sent_by FROM instances "
                                   "WHERE instance_id = ? AND deleted_at IS NOT NULL",
                                   (instance_id,)).fetchone()
        if row is None:
            return None
        return codec.decode_info(row[0]), _dt(row[1]), _dt(row[2] or row[1])

    def finals_owed(self) -> list[str]:
        """Ended instances whose final report was not made yet (a crash, an error)."""
        with self._lock:
            return [r[0] for r in self._db.execute(
                "SELECT instance_id FROM instances i WHERE deleted_at IS NOT NULL AND NOT "
                "EXISTS (SELECT 1 FROM reports r WHERE r.instance_id = i.instance_id AND "
                "r.source = 'deleted') ORDER BY deleted_at")]

    def info(self, instance_id: str) -> InstanceInfo | None:
        with self._lock:
            row = self._db.execute("SELECT info FROM instances WHERE instance_id = ?",
                                   (instance_id,)).fetchone()
        return codec.decode_info(row[0]) if row else None

    def hosted(self, begin: datetime.datetime, end: datetime.datetime) -> list[InstanceInfo]:
        """Instances not ended (an ended one's final exists carries all it owes) that were
        on this host during (begin, end] or owe usage read by its end (a late reading, a
        backlog)."""
        with self._lock:
            rows = self._db.execute(
                "SELECT info FROM instances i WHERE first_seen <= ? AND deleted_at IS NULL AND "
                "(last_seen > ? OR EXISTS (SELECT 1 FROM entries e WHERE "
                "e.instance_id = i.instance_id AND e.report IS NULL AND e.at <= ?)) "
                "ORDER BY instance_id", (_ts(end), _ts(begin), _ts(end))).fetchall()
        return [codec.decode_info(r[0]) for r in rows]

    def first_seen(self) -> datetime.datetime | None:
        """When the ledger first saw any instance still in it."""
        with self._lock:
            value = self._db.execute("SELECT min(first_seen) FROM instances").fetchone()[0]
        return None if value is None else _dt(value)

    def emitted(self, begin: datetime.datetime) -> bool:
        with self._lock:
            return self._db.execute("SELECT 1 FROM emitted WHERE period_begin = ?",
                                    (_ts(begin),)).fetchone() is not None

    def mark_emitted(self, begin: datetime.datetime, end: datetime.datetime,
                     now: datetime.datetime) -> None:
        with self._tx() as db:
            db.execute("INSERT OR REPLACE INTO emitted VALUES (?, ?, ?)",
                       (_ts(begin), _ts(end), _ts(now)))

    def prune(self, now: datetime.datetime) -> None:
        """Forget what is reported and older than the retention; never what is owed."""
        cut = _ts(now - self._retention)
        with self._tx() as db:
            journal.prune(db, cut)
            db.execute("DELETE FROM emitted WHERE period_end < ?", (cut,))
            db.execute("DELETE FROM processes WHERE ended_at < ? AND number < (SELECT max(number)"
                       " FROM processes p WHERE p.instance_id = processes.instance_id)", (cut,))
            gone = ("SELECT instance_id FROM instances i WHERE coalesce(deleted_at, last_seen)"
                    " < ? AND NOT EXISTS (SELECT 1 FROM entries e WHERE e.instance_id = "
                    "i.instance_id) AND NOT EXISTS (SELECT 1 FROM reports r WHERE "
                    "r.instance_id = i.instance_id AND r.spooled_at IS NULL)")
            db.execute(f"DELETE FROM processes WHERE instance_id IN ({gone})", (cut,))
            db.execute(f"DELETE FROM reports WHERE instance_id IN ({gone})", (cut,))
            db.execute(f"DELETE FROM instances WHERE instance_id IN ({gone})", (cut,))
