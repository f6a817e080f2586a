"""The final sample: on a delete trigger, read the domain now and spool its delete.samples.

Runs on the thread that received the trigger and returns once the notification is durably
spooled, so the bus message is acknowledged only after that (at-least-once). The read goes
through the flush's own libvirt connection, never queued behind a running bulk poll.
"""
from __future__ import annotations

import collections
import contextlib
import datetime
import enum
import logging
import threading
from typing import Callable

from lifecycle_stats.publishing import payloads, signing
from lifecycle_stats.counters import Counters
from lifecycle_stats.exceptions import DomainGone, HypervisorError
from lifecycle_stats.interfaces import NotificationStore, Reader, ReadingCache, Registry
from lifecycle_stats.records import DeleteTrigger, DomainReading, InstanceInfo, utcnow

LOG = logging.getLogger(__name__)


class Outcome(enum.Enum):
    FINAL = payloads.FINAL
    LAST_KNOWN = payloads.LAST_KNOWN
    UNAVAILABLE = payloads.UNAVAILABLE
    DUPLICATE = "duplicate"
    NOT_NOVA = "not_nova"  # a domain nova does not own: never reported


class Flusher:
    """Reads through its own connection (the inspector it is given), never the poller's."""

    def __init__(self, *, inspector: Reader, registry: Registry, last_readings: ReadingCache,
                 spool: NotificationStore, host: str, publisher_id: str,
                 on_spooled: Callable[[], None] = lambda: None, counters: Counters | None = None,
                 clock: Callable[[], datetime.datetime] = utcnow, legacy_meters: bool = True,
                 telemetry_secret: str = signing.CEILOMETER_DEFAULT_SECRET) -> None:
        self._inspector = inspector
        self._registry = registry
        self._readings = last_readings
        self._spool = spool
        self._host = host
        self._publisher_id = publisher_id
        self._on_spooled = on_spooled
        self._counters = counters if counters is not None else Counters()
        self._clock = clock
        self._sample_options = {"legacy_meters": legacy_meters,
                                "telemetry_secret": telemetry_secret}
        self._locks: dict[str, threading.Lock] = collections.defaultdict(threading.Lock)
        self._locks_guard = threading.Lock()

    def handle(self, trigger: DeleteTrigger) -> Outcome:
        """Capture and spool one instance's delete.samples, once per instance."""
        message_id = payloads.delete_message_id(trigger.instance_id)
        with self._instance_lock(trigger.instance_id):
            if self._spool.seen(message_id):
                self._counters.incr("flush.duplicates")
                return Outcome.DUPLICATE
            kind, info, reading = self._capture(trigger.instance_id)
            if kind == Outcome.NOT_NOVA.value:
                self._counters.incr("flush.not_nova")
                return Outcome.NOT_NOVA
            notification = payloads.delete_samples(
                kind=kind, trigger=trigger, info=info, reading=reading, host=self._host,
                publisher_id=self._publisher_id, now=self._clock(), **self._sample_options)
            payloads.validate(notification)
            self._spool.put(notification, kind="final")
        self._counters.incr(f"flush.{kind}")
        self._on_spooled()
        if kind != payloads.FINAL:
            LOG.warning("delete of %s captured as %s (trigger %s)", trigger.instance_id, kind,
                        trigger.event_type)
        return Outcome(kind)

    def _capture(self, instance_id: str) -> tuple[str, InstanceInfo | None, DomainReading | None]:
        reading = self._read_live(instance_id)
        if reading is not None and reading.active:
            info = self._identify(instance_id)
            if info is not None:
                self._readings.update(info, reading)
                return payloads.FINAL, info, reading
        # Gone, shut off, or unidentifiable now (a read that waited out nova's destroy finds
        # the domain undefined and forgotten): the cache knows what it was.
        cached = self._readings.get(instance_id)
        if cached is not None:
            return payloads.LAST_KNOWN, cached[0], cached[1]
        if self._registry.is_known(instance_id) and self._registry.get(instance_id) is None:
            return Outcome.NOT_NOVA.value, None, None  # positively not nova's
        return payloads.UNAVAILABLE, self._registry.get(instance_id), None

    def _read_live(self, instance_id: str) -> DomainReading | None:
        try:
            return self._inspector.read(instance_id)
        except DomainGone:
            return None
        except HypervisorError as exc:
            self._counters.incr("flush.read_errors")
            LOG.warning("live read of %s failed: %s", instance_id, exc)
            return None

    def _identify(self, instance_id: str) -> InstanceInfo | None:
        try:
            return self._registry.identify(instance_id)
        except HypervisorError:
            return None

    @contextlib.contextmanager
    def _instance_lock(self, instance_id: str):
        """Serialise triggers of one instance. The lock is dropped afterwards: a later
        trigger that makes a fresh one finds the notification already spooled (seen())."""
        with self._locks_guard:
            lock = self._locks[instance_id]
        with lock:
            try:
                yield
            finally:
                with self._locks_guard:
                    self._locks.pop(instance_id, None)
