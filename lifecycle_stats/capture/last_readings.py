"""The newest reading of every nova instance, kept after its domain is gone.

A delete.start that arrives after nova destroyed the domain reports this reading as
`last_known` with its age. Only readings of a running domain carry counters, so an inactive
reading never replaces an active one: the figures of the last QEMU process are what billing
needs. Entries outlive their domain for `retention` so late triggers still find them.
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
            if current is not None:
                _, kept = current
                if kept.read_at > reading.read_at or (kept.active and not reading.active):
                    return
            self._entries[reading.instance_id] = (info, reading)

    def get(self, instance_id: str) -> tuple[InstanceInfo, DomainReading] | None:
        with self._lock:
            return self._entries.get(instance_id)

    def domain_gone(self, instance_id: str) -> None:
        """The domain was undefined: start its retention clock."""
        with self._lock:
            if instance_id in self._entries:
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
