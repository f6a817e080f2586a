"""Stand-ins for the hypervisor during a replay: a virtual clock, and a host whose domains,
metadata and counters are what the recording says they were at the current moment.

RecordedHost is fed the recording's `reading`, `instance` and `poll` entries in order (the
player applies each one just before the entry that caused it, so a read the recorder made in
answer to a delete.start is what the flush reads). It implements the core's Reader and
Registry Protocols (lifecycle_stats.interfaces) with the real registry's caching semantics:
the agent's cache is separate from the host's truth, and a restart empties only the cache.
"""
from __future__ import annotations

import datetime

from lifecycle_stats.exceptions import DomainGone
from lifecycle_stats.reading.registry import MALFORMED, NOT_NOVA, REJECTED
from lifecycle_stats.records import DomainReading, InstanceInfo

UNUSABLE = (REJECTED, MALFORMED)  # why nova metadata was not usable, as the registry says


class VirtualClock:
    """The recording's time: started_at plus the offset of the entry being replayed."""

    def __init__(self, start: datetime.datetime) -> None:
        self._start = start
        self._offset = 0.0

    def advance_to(self, offset: float) -> None:
        """Move to offset seconds after the start; never backwards."""
        self._offset = max(self._offset, offset)

    def __call__(self) -> datetime.datetime:
        return self._start + datetime.timedelta(seconds=self._offset)

    def sleep(self, seconds: float) -> None:
        """A retry's wait passes on the virtual clock, at once."""
        self._offset += max(0.0, seconds)


class RecordedHost:
    """What libvirt would answer now, as recorded."""

    def __init__(self) -> None:
        self._readings: dict[str, DomainReading | None] = {}  # None: the domain is gone
        self._metadata: dict[str, InstanceInfo | str | None] = {}  # None: gone
        self._poll: dict[str, DomainReading] = {}

    # -- fed by the player -------------------------------------------------------------
    def set_reading(self, instance_id: str, reading: DomainReading | None) -> None:
        self._readings[instance_id] = reading

    def set_metadata(self, instance_id: str, info: InstanceInfo | str | None) -> None:
        self._metadata[instance_id] = info

    def set_poll(self, readings: list[DomainReading]) -> None:
        self._poll = {r.instance_id: r for r in readings}
        for reading in readings:
            self._readings[reading.instance_id] = reading

    def domains(self) -> dict[str, InstanceInfo | str]:
        """Every domain the host has now, with its metadata (or NOT_NOVA)."""
        return {i: m for i, m in self._metadata.items() if m is not None}

    # -- Reader --------------------------------------------------------------------------
    def poll(self) -> dict[str, DomainReading]:
        return dict(self._poll)

    def read(self, instance_id: str) -> DomainReading:
        reading = self._readings.get(instance_id)
        if reading is None:
            raise DomainGone(instance_id)
        return reading


class RecordedRegistry:
    """The agent's view of which domains are nova's: a cache over RecordedHost (Registry)."""

    def __init__(self, host: RecordedHost) -> None:
        self._host = host
        self._cache: dict[str, InstanceInfo | str] = {}

    def sync(self) -> set[str]:
        """As DomainRegistry.sync at agent start: cache every domain the host has; the uuids
        it has (the resync ends instances whose delete was announced and whose domain is
        not among them)."""
        self._cache = dict(self._host.domains())
        return set(self._cache)

    def get(self, instance_id: str) -> InstanceInfo | None:
        return _as_info(self._cache.get(instance_id))

    def identify(self, instance_id: str) -> InstanceInfo | None:
        if instance_id in self._cache:
            return self.get(instance_id)
        return self.refresh_by_uuid(instance_id, missing=DomainGone)

    def is_known(self, instance_id: str) -> bool:
        return instance_id in self._cache

    def unusable(self, instance_id: str) -> str | None:
        entry = self._cache.get(instance_id)
        return entry if entry in UNUSABLE else None

    def refresh_by_uuid(self, instance_id: str, missing=None) -> InstanceInfo | None:
        entry = self._host.domains().get(instance_id)
        if entry is None:
            self.forget(instance_id)
            if missing is not None:
                raise missing(instance_id)
            return None
        self._cache[instance_id] = entry
        return _as_info(entry)

    def forget(self, instance_id: str) -> None:
        self._cache.pop(instance_id, None)

    def instances(self) -> dict[str, InstanceInfo]:
        return {i: e for i, e in self._cache.items() if isinstance(e, InstanceInfo)}


def _as_info(entry: InstanceInfo | str | None) -> InstanceInfo | None:
    return entry if isinstance(entry, InstanceInfo) else None
