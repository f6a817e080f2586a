"""Where every reading the core takes goes, and what it knows of past ones: the reading cache
(last_readings.LastReadings) and the usage ledger (usage.ledger.UsageLedger), behind one door.

Every call into the ledger from capture is in this module, so a change of the ledger's API
lands here only. Also here: the one live read + identification of a domain, shared by the
delete capture (flush.py) and the closing reads of other stops (closing_reads.py).
"""
from __future__ import annotations

import datetime
import threading
from typing import Iterable

from lifecycle_stats.exceptions import DomainGone, HypervisorError
from lifecycle_stats.interfaces import Reader, ReadingCache, Registry, UsageAccounts
from lifecycle_stats.records import DomainReading, InstanceInfo

GONE = "gone"  # domain_state when the domain no longer exists
STAYED_OFF = frozenset({"shutoff", "crashed", GONE})  # no QEMU process ran on after the reading


class Observations:
    def __init__(self, cache: ReadingCache, ledger: UsageAccounts) -> None:
        self.cache = cache
        self._ledger = ledger
        # A deletion's closing reading, cached at once but put in the ledger after nova's
        # answer (its own fsync was on nova's wait); any ledger event of the instance
        # records it first, so the ledger sees readings and ends in the order they happened.
        self._closing: dict[str, tuple[InstanceInfo, DomainReading]] = {}
        # Recorders hold _order from taking a held reading until it is in the ledger (a later
        # event of the instance waits for it); the delete path only holds _held, briefly:
        # it never waits for a ledger transaction.
        self._order = threading.Lock()
        self._held = threading.Lock()  # guards _closing

    def observe(self, info: InstanceInfo, reading: DomainReading, *,
                closing: bool = False) -> None:
        """One reading of a nova domain: the newest in the cache, accounted in the ledger.
        closing: taken because the QEMU process is about to end (nova's .start of a stop,
        libvirt's SHUTDOWN)."""
        self._record_held(info.instance_id)
        self.cache.update(info, reading)
        self._ledger.record(info, reading, closing=closing)

    def observe_deletion(self, info: InstanceInfo, reading: DomainReading) -> None:
        """A deletion's live reading: in the cache now, in the ledger (as a closing reading)
        at the deletion's accounting (deletion_captured) or before any other ledger event of
        the instance, whichever comes first. Not durable here: the capture record is, and
        its build accounts it again after a crash."""
        self.cache.update(info, reading)
        with self._held:
            held = self._closing.get(info.instance_id)
            if held is None or held[1].read_at < reading.read_at:
                self._closing[info.instance_id] = (info, reading)

    def deletion_captured(self, info: InstanceInfo, reading: DomainReading) -> None:
        """The deletion's capture is being accounted: its closing reading goes in the ledger
        now (held back or, after a restart, from the durable capture; twice is harmless:
        the ledger ignores a reading no newer than what it holds)."""
        with self._order:
            with self._held:
                held = self._closing.pop(info.instance_id, None)
            items = {reading.read_at: (info, reading)}
            if held is not None:
                items[held[1].read_at] = held
            self._ledger.record_all([items[at] for at in sorted(items)], closing=True)

    def _record_held(self, instance_id: str | None) -> None:
        """Record the held-back closing reading of instance_id (None: of every instance)
        before the caller's ledger event; waits for one being recorded by another thread."""
        with self._order:
            with self._held:
                if instance_id is None:
                    held, self._closing = list(self._closing.values()), {}
                else:
                    one = self._closing.pop(instance_id, None)
                    held = [one] if one is not None else []
            if held:
                self._ledger.record_all(held, closing=True)

    def observe_poll(self, items: Iterable[tuple[InstanceInfo, DomainReading]]) -> None:
        """A bulk poll's readings: each in the cache, all in one ledger transaction; cache
        entries of domains gone long enough expire."""
        items = list(items)
        self._record_held(None)  # also before a period closes (the closer polls first)
        for info, reading in items:
            self.cache.update(info, reading)
        self._ledger.record_all(items)
        self.cache.prune()

    def process_ended(self, instance_id: str, at: datetime.datetime, *,
                      stopped_event: bool = False) -> None:
        """The domain's QEMU process ended at `at` at the latest (its counters are gone);
        stopped_event: libvirt's STOPPED itself."""
        self._record_held(instance_id)
        self._ledger.process_ended(instance_id, at, stopped_event=stopped_event)

    def delete_announced(self, instance_id: str, at: datetime.datetime, *,
                         sent_by: datetime.datetime | None = None, gone: bool = False) -> None:
        """nova announced the delete: the instance ends (and its final exists goes out) once
        its domain is gone — now when gone, else at libvirt's undefine or a resync."""
        self._record_held(instance_id)
        self._ledger.delete_announced(instance_id, at, sent_by=sent_by, gone=gone)

    def stop_announced(self, instance_id: str, sent_by: datetime.datetime) -> None:
        """nova announced a stop other than a delete: a delete announced before it failed."""
        self._record_held(instance_id)
        self._ledger.stop_announced(instance_id, sent_by)

    def domain_gone(self, instance_id: str, at: datetime.datetime) -> None:
        """libvirt undefined the domain."""
        self._record_held(instance_id)
        self._ledger.domain_gone(instance_id, at)

    def domains_present(self, present: set[str], at: datetime.datetime) -> None:
        """A resync listed libvirt's domains."""
        self._record_held(None)
        self._ledger.domains_present(present, at)

    def newest_known(self, instance_id: str) -> tuple[InstanceInfo, DomainReading] | None:
        """The newest reading of the instance: the in-memory cache's or the ledger's (which
        stands in for the cache after an agent restart)."""
        cached = self.cache.get(instance_id)
        ledger = self._ledger.latest(instance_id)
        if ledger is not None and (cached is None or ledger.reading.read_at > cached[1].read_at):
            return ledger.info, ledger.reading
        return cached

    def figures(self, live: bool, reading: DomainReading | None, state: str) -> dict:
        """`complete`: read from the live domain, or the newest reading of its newest process,
        closed by a closing reading, the domain off (or gone) now; `domain_state`: now."""
        if live:
            complete = reading is not None and reading.active
        else:
            if reading is not None:
                self._record_held(reading.instance_id)
            latest = self._ledger.latest(reading.instance_id) if reading is not None else None
            complete = (latest is not None and latest.closed and state in STAYED_OFF
                        and latest.reading.read_at == reading.read_at)
        return {"complete": complete, "domain_state": state}


def read_live(reader: Reader, instance_id: str) -> DomainReading | None:
    """The domain's counters now; None when it is gone. HypervisorError passes."""
    try:
        return reader.read(instance_id)
    except DomainGone:
        return None


def identify(registry: Registry, instance_id: str) -> InstanceInfo | None:
    """Nova's identity of the domain; None when it is not nova's or cannot be asked now."""
    try:
        return registry.identify(instance_id)
    except HypervisorError:
        return None
