"""The ledger's journal: counter growth read and not yet reported, and the reports made of it.

Growth is kept per (instance, QEMU process, audit period of the reading) in one open entry
that later readings add to; an interval a process ran unread is an entry of its own (a gap,
with its reason). A report claims, in one transaction, every entry of the instance not
claimed before whose last reading is no later than the report's window end (all of them for
the final report), and stores the notification it made: an entry is in exactly one report, a
late reading lands in the next one, and nothing read is left out. A stored report is spooled,
and marked so, after that transaction: one left unspooled (a crash, a full spool) is spooled
again (usage/reports.py). All functions take a connection inside the caller's transaction.
"""
from __future__ import annotations

import datetime
import sqlite3
from typing import Iterable, Sequence

from lifecycle_stats.records import UTC, Notification, Unobserved, Usage
from lifecycle_stats.usage import arithmetic, codec

GAP_REASONS = ("ended_unread", "running_when_first_seen", "agent_down")
_COLUMNS = "seq, process, first_at, at, growth, observed, gap_from, reason"


def _dt(seconds: float) -> datetime.datetime:
    return datetime.datetime.fromtimestamp(seconds, UTC)


def add_growth(db: sqlite3.Connection, iid: str, process: int, bucket: float, since: float,
               at: float, growth: dict[str, int], observed: float) -> None:
    """Growth read at `at` (over the process's previous reading at `since`)."""
    row = db.execute("SELECT seq, growth, observed, first_at, at FROM entries WHERE "
                     "instance_id = ? AND process = ? AND bucket = ? AND report IS NULL AND "
                     "reason IS NULL", (iid, process, bucket)).fetchone()
    if row is None:
        db.execute("INSERT INTO entries (instance_id, process, bucket, first_at, at, growth, "
                   "observed) VALUES (?, ?, ?, ?, ?, ?, ?)",
                   (iid, process, bucket, since, at, codec.pack(growth), observed))
        return
    db.execute("UPDATE entries SET growth = ?, observed = ?, first_at = ?, at = ? "
               "WHERE seq = ?", (codec.pack(arithmetic.add(codec.unpack(row[1]), growth)),
                                 row[2] + observed, min(row[3], since), max(row[4], at),
                                 row[0]))


def add_gap(db: sqlite3.Connection, iid: str, process: int, bucket: float, gap_from: float,
            gap_to: float, reason: str) -> None:
    db.execute("INSERT INTO entries (instance_id, process, bucket, first_at, at, growth, "
               "observed, gap_from, reason) VALUES (?, ?, ?, ?, ?, ?, 0, ?, ?)",
               (iid, process, bucket, gap_to, gap_to, codec.pack({}), gap_from, reason))


def withdraw_gaps(db: sqlite3.Connection, iid: str, process: int, reason: str) -> int:
    """An end that proved wrong (the process was read running after it): its unread interval
    is dropped unless already reported (then it stays: an over-estimate, never a miss)."""
    return db.execute("DELETE FROM entries WHERE instance_id = ? AND process = ? AND "
                      "reason = ? AND report IS NULL", (iid, process, reason)).rowcount


def open_entries(db: sqlite3.Connection, iid: str, upto: float | None) -> list[tuple]:
    where = "" if upto is None else " AND at <= ?"
    args = (iid,) if upto is None else (iid, upto)
    return db.execute(f"SELECT {_COLUMNS} FROM entries WHERE instance_id = ? AND "
                      f"report IS NULL{where} ORDER BY seq", args).fetchall()


def claim(db: sqlite3.Connection, iid: str, upto: float | None, message_id: str) -> list[tuple]:
    rows = open_entries(db, iid, upto)
    db.executemany("UPDATE entries SET report = ? WHERE seq = ?",
                   [(message_id, row[0]) for row in rows])
    return rows


def summarize(rows: Sequence[tuple], begin: datetime.datetime,
              end: datetime.datetime) -> Usage:
    reads = [r for r in rows if r[7] is None]
    gaps = [r for r in rows if r[7] is not None]
    totals = arithmetic.add_all(codec.unpack(r[4]) for r in reads)
    missed = tuple(Unobserved(_dt(r[6]), _dt(r[3]), r[7]) for r in gaps)
    earliest = min([r[2] for r in rows], default=begin.timestamp())
    latest = max([r[3] for r in rows], default=end.timestamp())
    return Usage(
        begin=min(begin, _dt(earliest)), end=max(end, _dt(latest)), totals=totals,
        cpu_time_ns=totals.get(arithmetic.CPU, 0),
        disks=arithmetic.by_device(totals, "disk"), vnics=arithmetic.by_device(totals, "vnic"),
        observed_seconds=sum(r[5] for r in reads), unobserved=missed,
        first_read_at=_dt(min(r[2] for r in reads)) if reads else None,
        last_read_at=_dt(max(r[3] for r in reads)) if reads else None,
        processes=len({r[1] for r in rows}))


def stored(db: sqlite3.Connection, message_id: str) -> Notification | None:
    row = db.execute("SELECT notification FROM reports WHERE message_id = ?",
                     (message_id,)).fetchone()
    return codec.decode_notification(row[0]) if row else None


def store(db: sqlite3.Connection, message_id: str, iid: str, tier: str, source: str,
          notification: Notification, now: float) -> None:
    db.execute("INSERT INTO reports (message_id, instance_id, tier, source, notification, "
               "made_at) VALUES (?, ?, ?, ?, ?, ?)",
               (message_id, iid, tier, source, codec.encode_notification(notification), now))


def unspooled(db: sqlite3.Connection) -> list[tuple[str, Notification]]:
    """(tier, notification) of every report not yet spooled, oldest first."""
    rows = db.execute("SELECT tier, notification FROM reports WHERE spooled_at IS NULL "
                      "ORDER BY made_at").fetchall()
    return [(tier, codec.decode_notification(body)) for tier, body in rows]


def mark_spooled(db: sqlite3.Connection, message_ids: Iterable[str], now: float) -> None:
    db.executemany("UPDATE reports SET spooled_at = ? WHERE message_id = ? AND "
                   "spooled_at IS NULL", [(now, mid) for mid in message_ids])


def prune(db: sqlite3.Connection, cut: float) -> None:
    """Reported entries and spooled reports older than `cut`; never what is still owed."""
    db.execute("DELETE FROM entries WHERE report IS NOT NULL AND at < ? AND report IN "
               "(SELECT message_id FROM reports WHERE spooled_at IS NOT NULL)", (cut,))
    db.execute("DELETE FROM reports WHERE spooled_at < ? AND message_id NOT IN "
               "(SELECT report FROM entries WHERE report IS NOT NULL)", (cut,))
