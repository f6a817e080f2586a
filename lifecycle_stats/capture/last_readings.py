"""The newest reading of every nova instance, kept after its domain is gone.

A delete.start that arrives after nova destroyed the domain reports this reading as
`last_known` with its age. Only readings of a running domain carry counters, so an inactive
reading never replaces an active one: the figures of the last QEMU process are what billing
needs. Within one QEMU process counters only grow, so the higher ones win whatever order the
readings arrive in; across processes the one requested later wins. Entries outlive their
domain for `retention` so late triggers still find them; a domain defined again (hard reboot,
rescue, resize undefine and define it) stops that clock.
"""
from __future__ import annotations

import datetime
import threading
from typing import Callable

from lifecycle_stats.records import DomainReading, InstanceInfo, utcnow


class LastReadings:
    def __init__(self, retention: datetime.timedelta = datetime.timedelta(hours=1),
                 clock: Callable[[], datetime.datetime] = utcnow) -> None:
        self._retention = retention
        self._clock = clock
        self._lock = threading.Lock()
        self._entries: dict[str, tuple[InstanceInfo, DomainReading]] = {}
        self._gone_at: dict[str, datetime.datetime] = {}

    def update(self, info: InstanceInfo, reading: DomainReading) -> None:
        with self._lock:
            current = self._entries.get(reading.instance_id)
            if current is None or supersedes(reading, current[1]):
                self._entries[reading.instance_id] = (info, reading)

    def get(self, instance_id: str) -> tuple[InstanceInfo, DomainReading] | None:
        with self._lock:
            return self._entries.get(instance_id)

    def domain_gone(self, instance_id: str) -> None:
        """The domain was undefined: start its retention clock."""
        with self._lock:
            if instance_id in self._entries:
                self._gone_at.setdefault(instance_id, self._clock())

    def domain_present(self, instance_id: str) -> None:
        """The domain was defined or started again: it is not gone after all."""
        with self._lock:
            self._gone_at.pop(instance_id, None)

    def reconcile(self, present: set[str]) -> None:
        """After a resync (events may have been missed): entries of domains libvirt no longer
        has start their retention clock, those it has stop it."""
        with self._lock:
            for instance_id in self._entries:
                if instance_id in present:
                    self._gone_at.pop(instance_id, None)
                else:
                    self._gone_at.setdefault(instance_id, self._clock())

    def prune(self) -> int:
        """Drop entries whose domain has been gone longer than the retention. Returns count."""
        now = self._clock()
        with self._lock:
            expired = [i for i, at in self._gone_at.items() if now - at > self._retention]
            for instance_id in expired:
                self._entries.pop(instance_id, None)
                self._gone_at.pop(instance_id, None)
            return len(expired)


def supersedes(new: DomainReading, kept: DomainReading) -> bool:
    """Whether new should replace kept as the instance's newest reading."""
    if kept.active and not new.active:
        return False
    same_process = (new.active and kept.active and new.process_id is not None
                    and new.process_id == kept.process_id)
    if same_process and new.cpu_time_ns != kept.cpu_time_ns:
        return (new.cpu_time_ns or 0) > (kept.cpu_time_ns or 0)
    return new.read_at >= kept.read_at
