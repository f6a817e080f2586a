"""Periodic bulk poll: keeps every nova instance's newest reading fresh.

Its figures are what a delete reports as `last_known` when the domain is already gone. It
owns its own libvirt connection, so a long bulk call never delays a flush.
"""
from __future__ import annotations

import datetime
import logging
import threading
import time
from typing import Callable

from oslo_config import cfg

from lifecycle_stats import threads
from lifecycle_stats.capture.observations import Observations
from lifecycle_stats.counters import Counters
from lifecycle_stats.exceptions import DomainGone, HypervisorError
from lifecycle_stats.interfaces import Reader, Registry
from lifecycle_stats.records import utcnow

LOG = logging.getLogger(__name__)

OPTS = [
    cfg.FloatOpt("interval", default=60.0, min=1.0, mutable=True,
                 help="Seconds between bulk polls of all active nova domains."),
]


class Poller:
    def __init__(self, *, reader: Reader, registry: Registry, observations: Observations,
                 interval: float, counters: Counters,
                 clock: Callable[[], datetime.datetime] = utcnow,
                 on_polled: Callable[[], None] = lambda: None) -> None:
        self._reader = reader
        self._on_polled = on_polled  # after each poll, off nova's wait
        self._registry = registry
        self._observations = observations
        self.interval = interval
        self._counters = counters
        self._clock = clock
        self._stop = threading.Event()
        self._rescheduled = threading.Event()
        self._thread: threading.Thread | None = None
        self.last_success_at: datetime.datetime | None = None

    def reschedule(self, interval: float) -> None:
        """A new interval (a reload), counted from the last poll's start, at once."""
        self.interval = interval
        self._rescheduled.set()

    @property
    def thread_state(self) -> str:
        return threads.state(self._thread, self._stop.is_set())

    def poll_once(self) -> int:
        """One bulk read; returns how many nova instances were updated."""
        readings = self._reader.poll()
        identified = []
        for instance_id, reading in readings.items():
            try:
                info = self._registry.identify(instance_id)
            except DomainGone:  # deleted since the poll read it
                continue
            if info is not None:
                identified.append((info, reading))
        self._observations.observe_poll(identified)  # one ledger transaction per poll
        self._on_polled()
        return len(identified)

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="lifecycle-stats-poller",
                                        daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        self._rescheduled.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def _run(self) -> None:
        while not self._stop.is_set():
            began = time.monotonic()
            self.poll_logged()
            threads.wait_interval(lambda: self.interval, began, self._stop, self._rescheduled)

    def poll_logged(self) -> None:
        """One poll whatever happens: a failure is logged and counted, never the thread's end."""
        try:
            self.poll_once()
        except HypervisorError as exc:
            LOG.warning("bulk poll failed: %s", exc)
            self._counters.incr("poller.errors")
        except Exception:
            LOG.exception("bulk poll failed unexpectedly")
            self._counters.incr("poller.errors")
        else:
            self.last_success_at = self._clock()
            self._counters.incr("poller.polls")
