"""How the usage ledger hears of ends: of a QEMU process (libvirt's STOPPED or SHUTDOWN, a
shut-off reading, the domain gone, a newer process), and of an instance (its domain gone
after nova announced its delete). A mixin of UsageLedger (usage/ledger.py): its connection,
lock, audit period and current-process lookup."""
from __future__ import annotations

import datetime
import logging
import sqlite3

from lifecycle_stats.usage import journal
from lifecycle_stats.usage.books import _ts
from lifecycle_stats.usage.store import guarded

LOG = logging.getLogger(__name__)


class Ends:
    @guarded
    def process_ended(self, instance_id: str, at: datetime.datetime, *,
                      stopped_event: bool = False) -> None:
        """libvirt said the domain stopped (STOPPED, or SHUTDOWN with nothing read).
        stopped_event: libvirt's STOPPED itself, which also tells of a process that started
        and stopped unread after the held one had ended."""
        with self._tx() as db:
            self._end_process(db, instance_id, _ts(at), stopped_event=stopped_event)

    def _end_process(self, db: sqlite3.Connection, iid: str, at: float, *,
                     stopped_event: bool = False) -> None:
        current = self._current(db, iid)
        if current is None:
            return
        if current.ended_at is None:
            if at >= current.latest_at:
                self._mark_ended(db, iid, current, at)
        elif stopped_event and at > current.ended_at:
            stopped = db.execute("SELECT stopped FROM processes WHERE instance_id = ? AND "
                                 "number = ?", (iid, current.number)).fetchone()[0]
            if stopped:  # its STOPPED came already: another process ran unread meanwhile
                journal.add_gap(db, iid, current.number, self._bucket(at), current.ended_at,
                                at, "ended_unread")
                db.execute("UPDATE processes SET ended_at = ? WHERE instance_id = ? AND "
                           "number = ?", (at, iid, current.number))  # the newest end known
        if stopped_event:  # SHUTDOWN, a missed read, then libvirt's STOPPED of one process
            db.execute("UPDATE processes SET stopped = 1 WHERE instance_id = ? AND number = ?",
                       (iid, current.number))

    def _outage_gaps(self, db: sqlite3.Connection, iid: str, number: int, after: float,
                     before: float) -> None:
        """The domain was off at `after` and is seen again at `before`: whatever ran in
        between while the agent was down went unseen."""
        for begin, end in db.execute("SELECT begin, end FROM outages WHERE begin < ? AND "
                                     "end > ?", (before, after)).fetchall():
            gap_from, gap_to = max(after, begin), min(before, end)
            if gap_to > gap_from:
                journal.add_gap(db, iid, number, self._bucket(gap_to), gap_from, gap_to,
                                "agent_down")

    def _mark_ended(self, db: sqlite3.Connection, iid: str, current: _Process,
                    at: float) -> None:
        db.execute("UPDATE processes SET ended_at = ? WHERE instance_id = ? AND number = ?",
                   (at, iid, current.number))
        if not current.closing:
            journal.add_gap(db, iid, current.number, self._bucket(at), current.latest_at, at,
                            "ended_unread")
        else:  # closed by its closing reading, unless the agent was down since
            self._outage_gaps(db, iid, current.number, current.latest_at, at)

    @guarded
    def delete_announced(self, instance_id: str, at: datetime.datetime, *,
                         sent_by: datetime.datetime | None = None, gone: bool = False) -> bool:
        """nova announced the instance's delete (at; its envelope time sent_by). Not an end:
        the delete may fail or be retried. gone=True: its domain was found gone by then (or
        libvirt's undefine came first: a read racing nova's destroy returns after it)."""
        with self._tx() as db:
            db.execute("UPDATE instances SET delete_announced_at = ?, delete_sent_by = ? "
                       "WHERE instance_id = ? AND deleted_at IS NULL",
                       (_ts(at), _ts(sent_by or at), instance_id))
            row = db.execute("SELECT gone_at FROM instances WHERE instance_id = ?",
                             (instance_id,)).fetchone()
            gone = gone or (row is not None and row[0] is not None)
            ended = gone and self._end_instance(db, instance_id, _ts(at))
        return self._ended([instance_id] if ended else [])

    @guarded
    def stop_announced(self, instance_id: str, sent_by: datetime.datetime) -> bool:
        """nova announced a stop other than a delete (a reboot, a rebuild, a power off, ...),
        sent at sent_by: a delete it announced before then did not happen (nova's API refuses
        those actions while a delete runs), so an undefine that follows (a hard reboot's, a
        rebuild's) does not end the instance. True when a delete announcement was withdrawn."""
        pending = "WHERE instance_id = ? AND deleted_at IS NULL AND delete_sent_by < ?"
        args = (instance_id, _ts(sent_by))
        with self._lock:  # a read first: a closing read nova waits for commits nothing else
            if self._db.execute(f"SELECT 1 FROM instances {pending}", args).fetchone() is None:
                return False
        with self._tx() as db:
            withdrawn = db.execute("UPDATE instances SET delete_announced_at = NULL, "
                                   f"delete_sent_by = NULL {pending}", args).rowcount
        if withdrawn:
            self.counters.incr("usage.deletes_withdrawn")
            LOG.info("usage of %s: nova announced another stop after its delete: that delete "
                     "failed, the instance goes on", instance_id)
        return bool(withdrawn)

    @guarded
    def domain_gone(self, instance_id: str, at: datetime.datetime) -> bool:
        """libvirt undefined the domain: its process is over; after a delete announcement,
        the instance is."""
        with self._tx() as db:
            self._end_process(db, instance_id, _ts(at))
            ended = self._end_instance(db, instance_id, _ts(at))
            if not ended:  # the delete's announcement may still be on its way
                db.execute("UPDATE instances SET gone_at = ? WHERE instance_id = ?",
                           (_ts(at), instance_id))
        return self._ended([instance_id] if ended else [])

    @guarded
    def domains_present(self, present: set[str], at: datetime.datetime) -> list[str]:
        """A resync listed libvirt's domains: instances whose delete was announced and whose
        domain is no longer there have ended."""
        with self._tx() as db:
            pending = [r[0] for r in db.execute(
                "SELECT instance_id FROM instances WHERE delete_announced_at IS NOT NULL AND "
                "deleted_at IS NULL")]
            ended = [iid for iid in pending
                     if iid not in present and self._end_instance(db, iid, _ts(at))]
        return self._ended(ended)

    def _end_instance(self, db: sqlite3.Connection, iid: str, at: float) -> bool:
        row = db.execute("SELECT delete_announced_at FROM instances WHERE instance_id = ? AND "
                         "deleted_at IS NULL", (iid,)).fetchone()
        if row is None or row[0] is None:
            return False
        current = self._current(db, iid)
        ended = max(at, current.latest_at) if current is not None else at
        if current is not None and current.ended_at is None:
            self._mark_ended(db, iid, current, ended)
        elif current is not None:
            self._outage_gaps(db, iid, current.number, current.ended_at, ended)
        db.execute("UPDATE instances SET deleted_at = ? WHERE instance_id = ?", (ended, iid))
        return True

    def _ended(self, instance_ids: list[str]) -> bool:
        for iid in instance_ids:
            self.counters.incr("usage.instances_ended")
            if self.on_instance_ended is not None:
                try:
                    self.on_instance_ended(iid)
                except Exception:  # the final exists stays owed: the closer retries it
                    self.counters.incr("usage.final_exists_errors")
                    LOG.exception("final exists of %s not spooled yet", iid)
        return bool(instance_ids)

