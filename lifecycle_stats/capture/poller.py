"""Periodic bulk poll: keeps every nova instance's newest reading fresh.

Its figures are what a delete reports as `last_known` when the domain is already gone. It
owns its own libvirt connection, so a long bulk call never delays a flush.
"""
from __future__ import annotations

import logging
import threading

from oslo_config import cfg

from lifecycle_stats.counters import Counters
from lifecycle_stats.exceptions import DomainGone, HypervisorError
from lifecycle_stats.interfaces import Reader, ReadingCache, Registry

LOG = logging.getLogger(__name__)

OPTS = [
    cfg.FloatOpt("interval", default=60.0, min=1.0, mutable=True,
                 help="Seconds between bulk polls of all active nova domains."),
]


class Poller:
    def __init__(self, *, inspector: Reader, registry: Registry, last_readings: ReadingCache,
                 interval: float, counters: Counters | None = None) -> None:
        self._inspector = inspector
        self._registry = registry
        self._readings = last_readings
        self.interval = interval
        self._counters = counters if counters is not None else Counters()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def poll_once(self) -> int:
        """One bulk read; returns how many nova instances were updated."""
        readings = self._inspector.poll()
        updated = 0
        for instance_id, reading in readings.items():
            try:
                info = self._registry.identify(instance_id)
            except DomainGone:  # deleted since the poll read it
                continue
            if info is not None:
                self._readings.update(info, reading)
                updated += 1
        self._readings.prune()
        return updated

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="lifecycle-stats-poller",
                                        daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.poll_once()
                self._counters.incr("poller.polls")
            except HypervisorError as exc:
                self._counters.incr("poller.errors")
                LOG.warning("bulk poll failed: %s", exc)
            self._stop.wait(self.interval)
