"""The usage ledger: every counter series of every QEMU process of every instance, and what
of its growth has been reported (doc/billing.md, "Usage accounting").

A series is (instance, QEMU process, device, counter) and grows from zero with its process
(usage/arithmetic.py). A process is told apart by facts (usage/identity.py): libvirt's domain
id and the process's start time. Its growth counts from zero when it started while the ledger
was keeping this host's books (or after the ledger last knew the instance off, or after its
previous process); a process already running when first seen counts from that reading, and
the interval before it is reported as unread ("running_when_first_seen"), never silently.
A process ends on libvirt's word (STOPPED, SHUTDOWN unread, a shut-off reading, the domain
gone) or when a newer one is read; never on a read error. An end is complete only when the
process's last reading was a closing one (taken after the stop was announced) — no hold
time. An instance ends only on evidence: its domain gone after nova announced its delete.

Growth and unread intervals go to the journal (usage/journal.py), from which every exists is
claimed. SQLite in its own file (WAL, synchronous=FULL: a reading once recorded survives
kill -9 and power loss); a damaged or newer file is moved aside (usage/store.py).
Thread-safe: poller, flush and event handler all record here.
"""
from __future__ import annotations

import contextlib
import dataclasses
import datetime
import logging
import sqlite3
import threading
from typing import Callable, Iterable, Iterator

from lifecycle_stats import sqlite_tx
from lifecycle_stats.counters import Counters
from lifecycle_stats.records import DomainReading, InstanceInfo, LatestUsage, utcnow
from lifecycle_stats.usage import arithmetic, codec, journal
from lifecycle_stats.usage.books import Books, _dt, _ts
from lifecycle_stats.usage.ends import Ends
from lifecycle_stats.usage.identity import LONGEST_READ_SECONDS, Relation, domain_id, relation
from lifecycle_stats.usage.periods import AuditPeriod
from lifecycle_stats.usage.store import guarded, open_ledger

LOG = logging.getLogger(__name__)



@dataclasses.dataclass(frozen=True)
class _Process:
    number: int
    domain_id: int | None
    started_at: float | None
    latest_at: float
    latest_body: bytes  # its latest reading, encoded: most polls never need it decoded
    series: dict
    closing: bool  # its latest reading was taken after a stop was announced
    ended_at: float | None

    @property
    def latest(self) -> DomainReading:
        return codec.decode_reading(self.latest_body)


class UsageLedger(Ends, Books):
    def __init__(self, path: str, period: AuditPeriod, *,
                 retention: datetime.timedelta = datetime.timedelta(days=62),
                 counters: Counters | None = None,
                 clock: Callable[[], datetime.datetime] = utcnow) -> None:
        self.path = path
        self.counters = counters if counters is not None else Counters()
        self.period = period
        self._retention = retention
        self._lock = threading.RLock()
        self._db, self.moved_aside = open_ledger(path)
        if self.moved_aside is not None:
            self.counters.incr("usage.ledger_moved_aside")
        self._clock = clock
        self._horizon = self._open_run(_ts(clock()))
        # called with an instance id once its end is recorded (agent.py: the final exists)
        self.on_instance_ended: Callable[[str], object] | None = None

    def _open_run(self, now: float) -> float:
        """Record the outage since the previous run's last write; returns the horizon: the
        ledger's creation, since when a process's whole usage is this ledger's to report."""
        with self._tx() as db:
            db.execute("INSERT OR IGNORE INTO meta VALUES ('created_at', ?)", (now,))
            alive = db.execute("SELECT value FROM meta WHERE key = 'alive_at'").fetchone()
            if alive is not None and alive[0] < now:
                db.execute("INSERT INTO outages VALUES (?, ?)", (alive[0], now))
            return db.execute("SELECT value FROM meta WHERE key = 'created_at'").fetchone()[0]

    # -- readings ---------------------------------------------------------------------------

    def record(self, info: InstanceInfo, reading: DomainReading, *, closing: bool = False) -> None:
        """One reading; closing=True when it was taken because a stop was announced."""
        self.record_all([(info, reading)], closing=closing)

    @guarded
    def record_all(self, items: Iterable[tuple[InstanceInfo, DomainReading]], *,
                   closing: bool = False) -> None:
        """Many readings in one transaction (a bulk poll: one fsync, not one per domain)."""
        with self._tx() as db:
            for info, reading in items:
                at = _ts(reading.read_at)
                row = self._touch(db, info, at)
                if row[2] is not None:  # ended: whatever comes now is too late to belong
                    self.counters.incr("usage.readings_after_end")
                elif reading.active:
                    self._record_active(db, reading, closing, seen_off=row[0])
                else:  # shut off: whatever process ran has ended
                    self._end_process(db, reading.instance_id, at)
                    db.execute("UPDATE instances SET seen_off_at = ? WHERE instance_id = ?",
                               (at, reading.instance_id))

    def _record_active(self, db: sqlite3.Connection, reading: DomainReading, closing: bool,
                       *, seen_off: float | None) -> None:
        iid, at = reading.instance_id, _ts(reading.read_at)
        counters = arithmetic.flatten(reading)
        current = self._current(db, iid)
        start = reading.process_started_at
        if current is None:
            from_zero = seen_off is not None or (start is not None and start >= self._horizon)
            if seen_off is not None:
                self._outage_gaps(db, iid, 1, seen_off, start if start is not None else at)
            self._open(db, iid, 1, reading, counters, closing, from_zero=from_zero)
            return
        found = relation(current.domain_id, current.started_at,
                         current.series.get(arithmetic.CPU), reading,
                         held_latest=current.latest_at, held_ended=current.ended_at)
        if found is Relation.OLDER:
            self.counters.incr("usage.readings_of_ended_processes")
        elif found is Relation.SAME:
            self._advance(db, current, reading, counters, closing)
        else:
            bound = start if start is not None else at  # a slow poll's stamp may be earlier
            if current.ended_at is None:  # its end went unseen: bounded by the new start
                self._mark_ended(db, iid, current, max(current.latest_at, bound))
            else:  # off since; a process may have run unseen while the agent was down
                self._outage_gaps(db, iid, current.number, current.ended_at, bound)
            self._open(db, iid, current.number + 1, reading, counters, closing, from_zero=True)
            db.execute("UPDATE instances SET delete_announced_at = NULL, delete_sent_by = NULL "
                       "WHERE instance_id = ? AND delete_announced_at < ?",
                       (iid, start if start is not None else at))  # the delete did not happen

    def _advance(self, db: sqlite3.Connection, current: _Process, reading: DomainReading,
                 counters: dict, closing: bool) -> None:
        iid, at = reading.instance_id, _ts(reading.read_at)
        if at <= current.latest_at:
            return  # older than what we hold: its growth is inside the newer reading's
        if arithmetic.sampled_before(current.series, counters) and (
                None not in (current.started_at, reading.process_started_at)
                or at - current.latest_at < LONGEST_READ_SECONDS):
            # stamped later but sampled earlier (a bulk poll is stamped when it starts): the
            # held values are at least as fresh, so they hold at `at` too; nothing grew
            self.counters.incr("usage.readings_out_of_order")
            reading, counters = current.latest, {}
            closing = closing or current.closing
        growth, series = arithmetic.advance(current.series, counters)
        for name in arithmetic.resets(current.series, counters):
            self.counters.incr("usage.series_resets")
            LOG.info("usage of %s: counter %s went down: counted again from zero", iid, name)
        ended = current.ended_at
        if ended is not None and at > ended:  # read running after its "end": it never ended
            journal.withdraw_gaps(db, iid, current.number, "ended_unread")
            self.counters.incr("usage.ends_withdrawn")
            ended = None
        elif ended is not None and current.closing and not closing:
            # a reading held back and committed after the end, newer than the closing one:
            # the process ran on after that (a failed delete), unread from here to its end
            journal.add_gap(db, iid, current.number, self._bucket(ended), at, ended,
                            "ended_unread")
        db.execute("UPDATE processes SET latest_at = ?, latest = ?, series = ?, closing = ?, "
                   "ended_at = ? WHERE instance_id = ? AND number = ?",
                   (at, codec.encode_reading(reading), codec.pack(series), int(closing), ended,
                    iid, current.number))
        journal.add_growth(db, iid, current.number, self._bucket(at), current.latest_at, at,
                           growth, at - current.latest_at)

    def _open(self, db: sqlite3.Connection, iid: str, number: int, reading: DomainReading,
              counters: dict, closing: bool, *, from_zero: bool) -> None:
        at, start = _ts(reading.read_at), reading.process_started_at
        since = start if start is not None and start < at else at
        db.execute("INSERT INTO processes (instance_id, number, domain_id, started_at, "
                   "from_zero, first_at, latest_at, latest, series, closing) VALUES "
                   "(?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                   (iid, number, domain_id(reading), start, int(from_zero), at, at,
                    codec.encode_reading(reading), codec.pack(counters), int(closing)))
        if from_zero:  # its counters started at zero: all of them is its usage
            journal.add_growth(db, iid, number, self._bucket(at), since, at, counters,
                               at - since)
        else:
            self.counters.incr("usage.running_when_first_seen")
            journal.add_gap(db, iid, number, self._bucket(at), since, at,
                            "running_when_first_seen")

    @guarded
    def present(self, info: InstanceInfo, at: datetime.datetime) -> None:
        """The instance exists on this host now (shut-off instances are not polled)."""
        with self._tx() as db:
            self._touch(db, info, _ts(at))

    # -- state ------------------------------------------------------------------------------

    def _touch(self, db: sqlite3.Connection, info: InstanceInfo, at: float) -> tuple:
        """(seen_off_at, first_seen, deleted_at) of the instance as it was before."""
        row = db.execute("SELECT seen_off_at, first_seen, deleted_at FROM instances WHERE "
                         "instance_id = ?", (info.instance_id,)).fetchone()
        db.execute("INSERT INTO instances (instance_id, info, first_seen, last_seen) "
                   "VALUES (?, ?, ?, ?) ON CONFLICT (instance_id) DO UPDATE SET "
                   "info = excluded.info, last_seen = max(last_seen, ?), gone_at = CASE WHEN "
                   "gone_at < ? THEN NULL ELSE gone_at END",  # seen since: defined again
                   (info.instance_id, codec.encode_info(info), at, at, at, at))
        return row if row is not None else (None, None, None)

    @staticmethod
    def _current(db: sqlite3.Connection, iid: str) -> _Process | None:
        row = db.execute("SELECT number, domain_id, started_at, latest_at, latest, series, "
                         "closing, ended_at FROM processes WHERE instance_id = ? "
                         "ORDER BY number DESC LIMIT 1", (iid,)).fetchone()
        if row is None:
            return None
        return _Process(row[0], row[1], row[2], row[3], row[4],
                        codec.unpack(row[5]), bool(row[6]), row[7])

    def _bucket(self, at: float) -> float:
        return _ts(self.period.current(_dt(at))[0])

    @guarded
    def latest(self, instance_id: str) -> LatestUsage | None:
        with self._lock:
            current = self._current(self._db, instance_id)
            info = self._db.execute("SELECT info FROM instances WHERE instance_id = ?",
                                    (instance_id,)).fetchone()
        if current is None or info is None:
            return None
        return LatestUsage(codec.decode_info(info[0]), current.latest, current.closing,
                           _dt(current.ended_at) if current.ended_at else None,
                           current.number)

    def processes(self, instance_id: str) -> int:
        with self._lock:
            return self._db.execute("SELECT count(*) FROM processes WHERE instance_id = ?",
                                    (instance_id,)).fetchone()[0]

    @contextlib.contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        """One write transaction; it also marks the ledger alive now (an outage starts at
        the last mark)."""
        with sqlite_tx.immediate(self._db, self._lock) as db:
            yield db
            db.execute("INSERT INTO meta VALUES ('alive_at', ?) ON CONFLICT (key) DO UPDATE "
                       "SET value = max(value, excluded.value)", (_ts(self._clock()),))

    def close(self) -> None:
        with self._lock:
            self._db.close()
