"""Closing readings: a QEMU process is about to end, read it while it still answers.

Nova announces every stop it makes with a `.start` (power_off, reboot, rebuild, shelve,
rescue, resize, suspend, ...; listeners/nova_notifications.PROCESS_ENDING). For those other
than delete, ClosingReads reads the domain on the thread that received the announcement,
through the flush's connection, exactly as a delete is read; the reading is observed
(observations.py) as the process's closing reading. Nothing is published.
"""
from __future__ import annotations

import datetime
import logging
from typing import Callable

from lifecycle_stats.capture.observations import Observations, identify, read_live
from lifecycle_stats.counters import Counters
from lifecycle_stats.exceptions import HypervisorError
from lifecycle_stats.interfaces import Outcome, Reader, Registry
from lifecycle_stats.records import StopAnnouncement, utcnow

LOG = logging.getLogger(__name__)


class ClosingReads:
    def __init__(self, *, reader: Reader, registry: Registry, observations: Observations,
                 counters: Counters, clock: Callable[[], datetime.datetime] = utcnow) -> None:
        self._reader = reader
        self._registry = registry
        self._observations = observations
        self._counters = counters
        self._clock = clock

    def handle(self, trigger: StopAnnouncement) -> Outcome:
        """Outcome.READ when the closing reading was taken, else Outcome.MISSED."""
        read_from = self._clock()
        try:
            live = read_live(self._reader, trigger.instance_id)
        except HypervisorError as exc:  # not the process's end: it may well run on
            self._counters.incr("flush.read_errors")
            self._counters.incr("flush.action_missed")
            LOG.warning("closing read of %s failed: %s", trigger.instance_id, exc)
            return Outcome.MISSED
        info = identify(self._registry, trigger.instance_id) if live is not None else None
        if live is None or info is None or not live.active:
            if live is None or not live.active:  # gone or off: ended before our read began
                self._observations.process_ended(trigger.instance_id, read_from)
            self._counters.incr("flush.action_missed")
            return Outcome.MISSED
        self._observations.observe(info, live, closing=True)
        self._counters.incr(f"flush.action.{trigger.action}")
        return Outcome.READ

