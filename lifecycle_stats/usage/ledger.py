"""The usage ledger: what every instance consumed, per QEMU process, per audit period.

Libvirt's counters are cumulative per QEMU process and restart at zero with each new one
(power-off/on, hard reboot, rescue, resize, migration). So the ledger keeps, per instance and
process ("incarnation": a new libvirt domain id, or any counter going down), the first and
the latest reading, and adds every reading's growth over the previous one to the usage
bucket of the audit period the reading falls in. Usage in a window is the sum of its
buckets: increments across processes, never negative. A process that ended without a
reading taken as it ended is kept as `Unobserved` (last reading, end): a bound on what was
missed, never silently.

SQLite in its own file under state_path (WAL, synchronous=FULL: a reading once recorded
survives kill -9 and power loss), schema versioned with PRAGMA user_version, rows older than
the retention pruned. Thread-safe: poller, flush and event handler all record here.
"""
from __future__ import annotations

import contextlib
import dataclasses
import datetime
import sqlite3
import threading
from typing import Iterable

from lifecycle_stats.usage import codec
from lifecycle_stats.usage import arithmetic as usage_math
from lifecycle_stats.usage.store import guarded as _guarded
from lifecycle_stats.usage.store import open_ledger
from lifecycle_stats.usage.periods import AuditPeriod
from lifecycle_stats.counters import Counters
from lifecycle_stats import sqlite_tx
from lifecycle_stats.records import (
    UTC, DomainReading, InstanceInfo, LatestUsage, Unobserved, Usage,
)

# A closing reading still closes its process when later readings (polls) follow it within
# this time: nova's clean power-off waits up to 60 s for the guest (shutdown_timeout), and the
# guest's own SHUTDOWN gets another closing read. Beyond it the stop evidently did not happen.
CLOSING_HOLDS_SECONDS = 120.0


def _ts(moment: datetime.datetime) -> float:
    return moment.timestamp()


def _dt(seconds: float | None) -> datetime.datetime | None:
    return None if seconds is None else datetime.datetime.fromtimestamp(seconds, UTC)


def _process_id(reading: DomainReading) -> int | None:
    """libvirt's domain id of the reading's QEMU process; None when unknown. A handle looked up
    while the domain was off keeps id -1 after it starts (measured): that says nothing."""
    pid = reading.process_id
    return pid if pid is not None and pid >= 0 else None


@dataclasses.dataclass(frozen=True)
class _Process:
    number: int
    domain_id: int | None
    latest_at: float
    latest: DomainReading
    closed_at: float | None  # when a closing reading was taken (None: never, or too long ago)
    ended_at: float | None

    @property
    def closed(self) -> bool:
        return self.closed_at is not None


class UsageLedger:
    def __init__(self, path: str, period: AuditPeriod, *,
                 retention: datetime.timedelta = datetime.timedelta(days=62),
                 counters: Counters | None = None) -> None:
        self.path = path
        self.counters = counters if counters is not None else Counters()
        self.period = period
        self._retention = retention
        self._lock = threading.RLock()
        self._db = open_ledger(path)

    # -- recording ----------------------------------------------------------------------

    def record(self, info: InstanceInfo, reading: DomainReading, *, closing: bool = False) -> None:
        """One reading; closing=True when it was taken because the process is about to end."""
        self.record_all([(info, reading)], closing=closing)

    @_guarded
    def record_all(self, items: Iterable[tuple[InstanceInfo, DomainReading]], *,
                   closing: bool = False) -> None:
        """Many readings in one transaction (a bulk poll: one fsync, not one per domain)."""
        with self._tx() as db:
            for info, reading in items:
                self._touch(db, info, _ts(reading.read_at))
                if reading.active:
                    self._record_active(db, reading, closing)
                else:  # shut off: whatever process ran has ended
                    self._end(db, reading.instance_id, _ts(reading.read_at))

    @_guarded
    def process_ended(self, instance_id: str, at: datetime.datetime) -> None:
        """libvirt said the domain stopped: its process's counters are gone."""
        with self._tx() as db:
            self._end(db, instance_id, _ts(at))

    @_guarded
    def instance_deleted(self, instance_id: str, at: datetime.datetime) -> None:
        with self._tx() as db:
            self._end(db, instance_id, _ts(at))
            db.execute("UPDATE instances SET deleted_at = coalesce(deleted_at, ?) "
                       "WHERE instance_id = ?", (_ts(at), instance_id))

    @_guarded
    def seen(self, info: InstanceInfo, at: datetime.datetime) -> None:
        """The instance exists on this host now (shut-off instances are not polled)."""
        with self._tx() as db:
            self._touch(db, info, _ts(at))

    def _record_active(self, db: sqlite3.Connection, reading: DomainReading,
                       closing: bool) -> None:
        iid, at, counters = reading.instance_id, _ts(reading.read_at), usage_math.flatten(reading)
        current = self._current(db, iid)
        if current is None:  # first sight: a baseline; what ran before is not ours to know
            self._new_process(db, iid, 1, reading, closing, from_zero=False)
            self._add_usage(db, iid, at, {}, 0.0)
            return
        if at <= current.latest_at:
            return  # older than what we hold (a poll that finished after a newer flush read)
        if current.ended_at is not None and at <= current.ended_at:
            return  # taken before its process ended (a poll that finished after the stop)
        previous = usage_math.flatten(current.latest)
        if self._is_new_process(current, reading, previous, counters):
            if current.ended_at is None:  # its end went unseen: bounded by this reading
                self._mark_ended(db, iid, current, at)
            self._new_process(db, iid, current.number + 1, reading, closing, from_zero=True)
            self._add_usage(db, iid, at, counters, 0.0)  # a new process counts from zero
            return
        closed_at = at if closing else current.closed_at
        if closed_at is not None and at - closed_at > CLOSING_HOLDS_SECONDS:
            closed_at = None
        db.execute("UPDATE processes SET latest_at = ?, latest = ?, closed_at = ? "
                   "WHERE instance_id = ? AND number = ?",
                   (at, codec.encode_reading(reading), closed_at, iid, current.number))
        self._add_usage(db, iid, at, usage_math.growth(previous, counters),
                        at - current.latest_at)

    @staticmethod
    def _is_new_process(current: _Process, reading: DomainReading, previous, counters) -> bool:
        if current.ended_at is not None:
            return True
        known = _process_id(reading)
        if None not in (current.domain_id, known) and current.domain_id != known:
            return True
        return usage_math.is_reset(previous, counters)

    def _end(self, db: sqlite3.Connection, instance_id: str, at: float) -> None:
        current = self._current(db, instance_id)
        if current is not None and current.ended_at is None and at >= current.latest_at:
            self._mark_ended(db, instance_id, current, at)

    def _mark_ended(self, db: sqlite3.Connection, iid: str, current: _Process, at: float) -> None:
        db.execute("UPDATE processes SET ended_at = ? WHERE instance_id = ? AND number = ?",
                   (at, iid, current.number))
        if not current.closed:
            self._add_usage(db, iid, at, {}, 0.0, unobserved=(current.latest_at, at))

    def _new_process(self, db, iid: str, number: int, reading: DomainReading, closing: bool,
                     *, from_zero: bool) -> None:
        body, at = codec.encode_reading(reading), _ts(reading.read_at)
        db.execute("INSERT INTO processes VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, NULL)",
                   (iid, number, _process_id(reading), int(from_zero), at, body, at, body,
                    at if closing else None))

    def _add_usage(self, db, iid: str, at: float, growth: dict[str, int], observed: float,
                   unobserved: tuple[float, float] | None = None) -> None:
        begin, end = self.period.current(_dt(at))
        row = db.execute("SELECT totals, observed_seconds, first_at, last_at, unobserved FROM "
                         "usage WHERE instance_id = ? AND period_begin = ?",
                         (iid, _ts(begin))).fetchone()
        totals, seen, first, last, missed = (
            (codec.unpack(row[0]), row[1], row[2], row[3], codec.unpack(row[4]))
            if row else ({}, 0.0, at, at, []))
        if unobserved is not None:
            missed.append(list(unobserved))
        db.execute("INSERT OR REPLACE INTO usage VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                   (iid, _ts(begin), _ts(end), codec.pack(usage_math.add(totals, growth)),
                    seen + observed, min(first, at), max(last, at), codec.pack(missed)))

    def _touch(self, db: sqlite3.Connection, info: InstanceInfo, at: float) -> None:
        db.execute("INSERT INTO instances VALUES (?, ?, ?, ?, NULL) ON CONFLICT (instance_id) "
                   "DO UPDATE SET info = excluded.info, last_seen = max(last_seen, ?)",
                   (info.instance_id, codec.encode_info(info), at, at, at))

    @staticmethod
    def _current(db: sqlite3.Connection, iid: str) -> _Process | None:
        row = db.execute("SELECT number, domain_id, latest_at, latest, closed_at, ended_at FROM "
                         "processes WHERE instance_id = ? ORDER BY number DESC LIMIT 1",
                         (iid,)).fetchone()
        if row is None:
            return None
        return _Process(row[0], row[1], row[2], codec.decode_reading(row[3]), row[4], row[5])

    # -- reading --------------------------------------------------------------------------

    def usage(self, instance_id: str, begin: datetime.datetime,
              end: datetime.datetime) -> Usage:
        """The buckets overlapping (begin, end], summed."""
        with self._lock:
            rows = self._db.execute(
                "SELECT period_begin, period_end, totals, observed_seconds, first_at, last_at, "
                "unobserved FROM usage WHERE instance_id = ? AND period_begin < ? AND "
                "period_end > ? ORDER BY period_begin", (instance_id, _ts(end), _ts(begin)))
            rows = rows.fetchall()
            processes = self._db.execute(
                "SELECT count(*) FROM processes WHERE instance_id = ? AND first_at <= ? AND "
                "latest_at > ?", (instance_id, _ts(end), _ts(begin))).fetchone()[0]
        missed = tuple(Unobserved(_dt(a), _dt(b)) for r in rows for a, b in codec.unpack(r[6]))
        totals = usage_math.add_all(codec.unpack(r[2]) for r in rows)
        return Usage(
            begin=_dt(min([r[0] for r in rows], default=_ts(begin))),
            end=_dt(max([r[1] for r in rows], default=_ts(end))),
            totals=totals, cpu_time_ns=totals.get(usage_math.CPU, 0),
            disks=usage_math.by_device(totals, "disk"), vnics=usage_math.by_device(totals, "vnic"),
            observed_seconds=sum(r[3] for r in rows), unobserved=missed,
            first_read_at=_dt(min([r[4] for r in rows], default=None)),
            last_read_at=_dt(max([r[5] for r in rows], default=None)), processes=processes)

    @_guarded
    def latest(self, instance_id: str) -> LatestUsage | None:
        with self._lock:
            current = self._current(self._db, instance_id)
            info = self._db.execute("SELECT info FROM instances WHERE instance_id = ?",
                                    (instance_id,)).fetchone()
        if current is None or info is None:
            return None
        return LatestUsage(codec.decode_info(info[0]), current.latest, current.closed,
                      _dt(current.ended_at), current.number)

    def hosted(self, begin: datetime.datetime, end: datetime.datetime) -> list[InstanceInfo]:
        """Instances on this host during (begin, end] and not deleted by its end (a deleted
        one got its final exists at deletion)."""
        with self._lock:
            rows = self._db.execute(
                "SELECT info FROM instances WHERE first_seen <= ? AND last_seen > ? AND "
                "(deleted_at IS NULL OR deleted_at > ?) ORDER BY instance_id",
                (_ts(end), _ts(begin), _ts(end))).fetchall()
        return [codec.decode_info(r[0]) for r in rows]

    def deleted_at(self, instance_id: str) -> datetime.datetime | None:
        with self._lock:
            row = self._db.execute("SELECT deleted_at FROM instances WHERE instance_id = ?",
                                   (instance_id,)).fetchone()
        return _dt(row[0]) if row else None

    def first_seen(self) -> datetime.datetime | None:
        """When the ledger first saw any instance still in it."""
        with self._lock:
            return _dt(self._db.execute("SELECT min(first_seen) FROM instances").fetchone()[0])

    def processes(self, instance_id: str) -> int:
        with self._lock:
            return self._db.execute("SELECT count(*) FROM processes WHERE instance_id = ?",
                                    (instance_id,)).fetchone()[0]

    # -- periods done, retention -------------------------------------------------------------

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
        """Forget what is older than the retention (keeps each instance's newest process)."""
        cut = _ts(now - self._retention)
        with self._tx() as db:
            db.execute("DELETE FROM usage WHERE period_end < ?", (cut,))
            db.execute("DELETE FROM emitted WHERE period_end < ?", (cut,))
            db.execute("DELETE FROM processes WHERE ended_at < ? AND number < (SELECT max(number)"
                       " FROM processes p WHERE p.instance_id = processes.instance_id)", (cut,))
            gone = "SELECT instance_id FROM instances WHERE coalesce(deleted_at, last_seen) < ?"
            db.execute(f"DELETE FROM processes WHERE instance_id IN ({gone})", (cut,))
            db.execute(f"DELETE FROM instances WHERE instance_id IN ({gone})", (cut,))

    def _tx(self) -> contextlib.AbstractContextManager[sqlite3.Connection]:
        return sqlite_tx.immediate(self._db, self._lock)

    def close(self) -> None:
        with self._lock:
            self._db.close()
