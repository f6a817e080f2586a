"""Closing readings: a QEMU process is about to end, read it while it still answers.

Nova announces every stop it makes with a `.start` (power_off, reboot, rebuild, shelve,
rescue, resize, suspend, ...; listeners/nova_notifications.PROCESS_ENDING). For those other
than delete, ClosingReads reads the domain on the thread that received the announcement,
through the flush's connection, exactly as a delete is read; the reading goes to the usage
ledger as the process's closing reading and to the last readings. Nothing is published.

Also here: what the delete flush asks of the usage side — the newest reading known (the
ledger stands in for the in-memory cache after a restart) and whether a reading is complete.
"""
from __future__ import annotations

import datetime
import enum
import logging
from typing import Callable

from lifecycle_stats.counters import Counters
from lifecycle_stats.exceptions import DomainGone, HypervisorError
from lifecycle_stats.interfaces import Reader, ReadingCache, Registry, UsageAccounts
from lifecycle_stats.records import DeleteTrigger, DomainReading, InstanceInfo, utcnow

LOG = logging.getLogger(__name__)

DELETE = "delete"
GONE = "gone"  # domain_state when the domain no longer exists
STAYED_OFF = frozenset({"shutoff", "crashed", GONE})  # no QEMU process ran on after the reading


class Outcome(enum.Enum):
    READ = "read"  # closing reading taken
    MISSED = "missed"  # the domain was not running any more (or not nova's)


class ClosingReads:
    def __init__(self, *, inspector: Reader, registry: Registry, last_readings: ReadingCache,
                 usage: UsageAccounts, counters: Counters | None = None,
                 clock: Callable[[], datetime.datetime] = utcnow) -> None:
        self._inspector = inspector
        self._registry = registry
        self._readings = last_readings
        self._usage = usage
        self._counters = counters if counters is not None else Counters()
        self._clock = clock

    def handle(self, trigger: DeleteTrigger) -> Outcome:
        read_from = self._clock()
        live = self._read(trigger.instance_id)
        info = self._identify(trigger.instance_id) if live is not None else None
        if live is None or info is None or not live.active:
            self._usage.process_ended(trigger.instance_id, read_from)  # ended before our read
            self._counters.incr("flush.action_missed")
            return Outcome.MISSED
        self._readings.update(info, live)
        self._usage.record(info, live, closing=True)
        self._counters.incr(f"flush.action.{trigger.action}")
        return Outcome.READ

    def _read(self, instance_id: str) -> DomainReading | None:
        try:
            return self._inspector.read(instance_id)
        except DomainGone:
            return None
        except HypervisorError as exc:
            self._counters.incr("flush.read_errors")
            LOG.warning("closing read of %s failed: %s", instance_id, exc)
            return None

    def _identify(self, instance_id: str) -> InstanceInfo | None:
        try:
            return self._registry.identify(instance_id)
        except HypervisorError:
            return None


def newest_known(readings: ReadingCache, usage: UsageAccounts,
                 instance_id: str) -> tuple[InstanceInfo, DomainReading] | None:
    """The newest reading of the instance: the in-memory cache's or the ledger's."""
    cached = readings.get(instance_id)
    ledger = usage.latest(instance_id)
    if ledger is not None and (cached is None or ledger.reading.read_at > cached[1].read_at):
        return ledger.info, ledger.reading
    return cached


def figures(usage: UsageAccounts, live: bool, reading: DomainReading | None,
            state: str) -> dict:
    """`complete`: read from the live domain, or the newest reading of its newest process,
    closed by a closing reading, the domain off (or gone) now; `domain_state`: now."""
    if live:
        complete = reading is not None and reading.active
    else:
        latest = usage.latest(reading.instance_id) if reading is not None else None
        complete = (latest is not None and latest.closed and state in STAYED_OFF
                    and latest.reading.read_at == reading.read_at)
    return {"complete": complete, "domain_state": state}
