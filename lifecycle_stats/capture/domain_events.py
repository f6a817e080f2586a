"""What the core does with libvirt lifecycle events (listeners/libvirt_events.py hears them).

Events keep the registry current, and every stop of a nova domain gets the best reading still
possible: on SHUTDOWN the QEMU process usually still answers (~30 ms before STOPPED here), so
a live read is tried; otherwise the newest cached reading stands. A stop is not a deletion:
nothing is published from here, only nova's delete announcement produces delete.samples.

Every reading also goes to the usage ledger: the SHUTDOWN read as the closing reading of the
QEMU process, a read right after STARTED as the first reading of the new one, and STOPPED
tells the ledger that the process's counters are gone.
"""
from __future__ import annotations

import datetime
import logging
from typing import Callable

from lifecycle_stats.capture.observations import Observations
from lifecycle_stats.counters import Counters
from lifecycle_stats.exceptions import HypervisorError
from lifecycle_stats.interfaces import Reader, Registry
from lifecycle_stats.records import LifecycleEvent, utcnow

LOG = logging.getLogger(__name__)

REFRESH_ON = frozenset({"defined", "started", "resumed", "metadata_changed"})


class DomainEventHandler:
    """Reads through its own connection (the reader it is given), never the flush's."""

    def __init__(self, *, reader: Reader, registry: Registry, observations: Observations,
                 counters: Counters, clock: Callable[[], datetime.datetime] = utcnow):
        self._clock = clock  # the pipeline's: a replay runs on the recording's time
        self._reader = reader
        self._registry = registry
        self._observations = observations
        self._readings = observations.cache
        self._counters = counters

    def __call__(self, event: LifecycleEvent) -> None:
        if event.event in ("defined", "started"):  # hard reboot, rescue, resize: back again
            self._readings.domain_present(event.instance_id)
        if event.event in REFRESH_ON:
            self._refresh(event.instance_id)
            if event.event == "started":
                self._read_started(event.instance_id)
        elif event.event in ("shutdown", "suspended"):
            self._read_before_stop(event)
        elif event.event == "stopped":
            self._observations.process_ended(event.instance_id, event.received_at,
                                             stopped_event=True)
        elif event.event == "undefined":  # after nova's delete announcement: the end
            self._observations.domain_gone(event.instance_id, event.received_at)
            self._registry.forget(event.instance_id)
            self._readings.domain_gone(event.instance_id)

    def resync(self) -> None:
        """At start and after the event connection was lost: the registry re-lists libvirt's
        domains, and cached readings of domains that vanished meanwhile start to expire; the
        ledger ends instances whose delete was announced and whose domain is gone."""
        present = self._registry.sync()
        self._observations.domains_present(present, self._clock())
        self._readings.reconcile(present)

    def _refresh(self, instance_id: str) -> None:
        try:
            self._registry.refresh_by_uuid(instance_id)
        except HypervisorError as exc:
            LOG.warning("could not refresh metadata of %s: %s", instance_id, exc)

    def _read_before_stop(self, event: LifecycleEvent) -> None:
        instance_id = event.instance_id
        info = self._registry.get(instance_id)
        if info is None:
            return
        try:
            reading = self._reader.read(instance_id)
        except HypervisorError:  # gone already: the cached reading stands
            reading = None
        if reading is not None and reading.active:
            self._observations.observe(info, reading, closing=True)
            self._counters.incr("events.stop_reads")
        elif event.event == "shutdown":  # QEMU said it is shutting down: the end, at the latest
            self._observations.process_ended(instance_id, event.received_at)
            self._counters.incr("events.stop_read_missed")
        else:
            self._counters.incr("events.stop_read_missed")

    def _read_started(self, instance_id: str) -> None:
        """A new QEMU process: its first reading, while its counters are still near zero."""
        info = self._registry.get(instance_id)
        if info is None:
            return
        try:
            reading = self._reader.read(instance_id)
        except HypervisorError:
            return  # stopped again already; the next poll will tell
        if reading.active:
            self._observations.observe(info, reading)
            self._counters.incr("events.start_reads")
