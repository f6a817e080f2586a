"""What the core does with libvirt lifecycle events (listeners/libvirt_events.py hears them).

Events keep the registry current, and every stop of a nova domain gets the best reading still
possible: on SHUTDOWN the QEMU process usually still answers (~30 ms before STOPPED here), so
a live read is tried; otherwise the newest cached reading stands. A stop is not a deletion:
nothing is published from here, only nova's delete announcement produces delete.samples.
"""
from __future__ import annotations

import logging

from lifecycle_stats.counters import Counters
from lifecycle_stats.exceptions import HypervisorError
from lifecycle_stats.interfaces import Reader, ReadingCache, Registry
from lifecycle_stats.records import LifecycleEvent

LOG = logging.getLogger(__name__)

REFRESH_ON = frozenset({"defined", "started", "resumed", "metadata_changed"})


class DomainEventHandler:
    """Reads through its own connection (the inspector it is given), never the flush's."""

    def __init__(self, *, inspector: Reader, registry: Registry, last_readings: ReadingCache,
                 counters: Counters | None = None):
        self._inspector = inspector
        self._registry = registry
        self._readings = last_readings
        self._counters = counters if counters is not None else Counters()

    def __call__(self, event: LifecycleEvent) -> None:
        if event.event in ("defined", "started"):  # hard reboot, rescue, resize: back again
            self._readings.domain_present(event.instance_id)
        if event.event in REFRESH_ON:
            self._refresh(event.instance_id)
        elif event.event in ("shutdown", "suspended"):
            self._read_before_stop(event.instance_id)
        elif event.event == "undefined":
            self._registry.forget(event.instance_id)
            self._readings.domain_gone(event.instance_id)

    def resync(self) -> None:
        """At start and after the event connection was lost: the registry re-lists libvirt's
        domains, and cached readings of domains that vanished meanwhile start to expire."""
        self._readings.reconcile(self._registry.sync())

    def _refresh(self, instance_id: str) -> None:
        try:
            self._registry.refresh_by_uuid(instance_id)
        except HypervisorError as exc:
            LOG.warning("could not refresh metadata of %s: %s", instance_id, exc)

    def _read_before_stop(self, instance_id: str) -> None:
        info = self._registry.get(instance_id)
        if info is None:
            return
        try:
            reading = self._inspector.read(instance_id)
        except HypervisorError:  # gone already: the cached reading stands
            self._counters.incr("events.stop_read_missed")
            return
        if reading.active:
            self._readings.update(info, reading)
            self._counters.incr("events.stop_reads")
        else:
            self._counters.incr("events.stop_read_missed")
