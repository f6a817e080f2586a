"""The final sample: on a delete trigger, read the domain now and spool its delete.samples.

Runs on the thread that received the trigger and returns once the notification is durably
spooled, so the bus message is acknowledged only after that (at-least-once). The read goes
through the flush's own libvirt connection, never queued behind a running bulk poll.

Failures never drop a delete:
- transient (database locked or busy, disk full or any OSError under state_path, a libvirt
  read error with nothing cached): retried in-process with backoff (tenacity), then
  CaptureDeferred is raised and the bus requeues the message. Attempts are counted per capture
  in memory: the failing part is often the spool itself, so it cannot keep the count; a
  restart only restarts the count. A capture built but not spooled is kept with its count and
  spooled as it was on the next try or redelivery (the domain may be gone by then). After max_attempts a read error gives up to `unavailable`;
  a spool that stays unwritable keeps the message on the bus (logged as ERROR each time).
- permanent (the payload breaks its schema, a partial stats record raises KeyError, any other
  bug): the capture is kept in the spool's rejects table and a flagged `unavailable` event
  (`capture.flagged`, `capture.errors`) is published instead.

Usage (closing_reads.py): the live reading is the process's closing reading in the usage
ledger; `capture` says whether the figures are complete and the domain's real state; the
ledger's newest reading stands in for the in-memory cache after a restart; once spooled, the
ledger closes the instance and its final exists goes out (on_deleted).
"""
from __future__ import annotations

import collections
import contextlib
import datetime
import enum
import logging
import sqlite3
import threading
import time
from typing import Callable

import jsonschema
import tenacity
from oslo_config import cfg

from lifecycle_stats.capture import closing_reads
from lifecycle_stats.publishing import payloads, signing
from lifecycle_stats.counters import Counters
from lifecycle_stats.capture.stop_gate import StopGate
from lifecycle_stats.exceptions import CaptureDeferred, DomainGone, HypervisorError
from lifecycle_stats.interfaces import (
    NotificationStore, NoUsage, Reader, ReadingCache, Registry, UsageAccounts,
)
from lifecycle_stats.records import (
    DeleteTrigger, DomainReading, InstanceInfo, Notification, utcnow,
)

LOG = logging.getLogger(__name__)

# Failures that may pass, or at least are not this capture's fault: sqlite's "database is
# locked" / "database or disk is full" (OperationalError) and a file damaged under a running
# agent (DatabaseError: quarantined at the next start); a full or read-only state_path
# (OSError); a libvirt read that failed other than by the domain being gone (HypervisorError).
TRANSIENT = (sqlite3.DatabaseError, OSError, HypervisorError)
MAX_TRACKED = 1_000  # captures tracked at once (oldest forgotten first): ~10 KiB each

GROUP = "flush"
OPTS = [
    cfg.IntOpt("max_attempts", default=10, min=1,
               help="Deliveries of one delete.start a capture may fail transiently (locked or "
                    "full spool, libvirt read error) before a read error gives up to "
                    "`unavailable`; past it, a spool failure is logged as ERROR on every "
                    "further redelivery (the message is never acknowledged unspooled)."),
    cfg.IntOpt("tries_per_attempt", default=3, min=1,
               help="In-process tries of one capture, with backoff, before its message is "
                    "requeued."),
    cfg.FloatOpt("retry_wait", default=0.2, min=0.001,
                 help="Seconds before the second in-process try; doubles with each try."),
    cfg.FloatOpt("retry_max_wait", default=2.0, min=0.001,
                 help="Longest wait between in-process tries."),
]


class Outcome(enum.Enum):
    FINAL = payloads.FINAL
    LAST_KNOWN = payloads.LAST_KNOWN
    UNAVAILABLE = payloads.UNAVAILABLE
    FLAGGED = "flagged"  # published as a flagged `unavailable`; the capture kept in rejects
    DUPLICATE = "duplicate"
    NOT_NOVA = "not_nova"  # a domain nova does not own: never reported


class _Attempts:
    """Per capture id, in memory and bounded: failed attempts, and the capture an attempt
    built but could not spool. A redelivery spools that capture rather than reading again:
    the domain may be gone by then, and what was read as `final` stays `final`."""

    def __init__(self) -> None:
        self._entries: collections.OrderedDict[str, tuple[int, tuple | None]] = (
            collections.OrderedDict())
        self._lock = threading.Lock()

    def get(self, message_id: str) -> int:
        with self._lock:
            return self._entries.get(message_id, (0, None))[0]

    def built(self, message_id: str) -> tuple | None:
        with self._lock:
            return self._entries.get(message_id, (0, None))[1]

    def keep_built(self, message_id: str, built: tuple) -> None:
        with self._lock:
            self._entries[message_id] = (self._entries.get(message_id, (0, None))[0], built)
            self._trim()

    def bump(self, message_id: str) -> int:
        with self._lock:
            count, built = self._entries.pop(message_id, (0, None))
            self._entries[message_id] = (count + 1, built)
            self._trim()
            return count + 1

    def forget(self, message_id: str) -> None:
        with self._lock:
            self._entries.pop(message_id, None)

    def _trim(self) -> None:
        while len(self._entries) > MAX_TRACKED:
            self._entries.popitem(last=False)


class Flusher:
    """Reads through its own connection (the inspector it is given), never the poller's."""

    def __init__(self, *, inspector: Reader, registry: Registry, last_readings: ReadingCache,
                 spool: NotificationStore, host: str, publisher_id: str,
                 on_spooled: Callable[[], None] = lambda: None, counters: Counters | None = None,
                 clock: Callable[[], datetime.datetime] = utcnow, max_attempts: int = 10,
                 tries_per_attempt: int = 3, retry_wait: float = 0.2,
                 retry_max_wait: float = 2.0, sleep: Callable[[float], None] = time.sleep,
                 legacy_meters: bool = True,
                 telemetry_secret: str = signing.CEILOMETER_DEFAULT_SECRET,
                 usage: UsageAccounts | None = None,
                 on_deleted: Callable[[InstanceInfo, datetime.datetime, datetime.datetime | None],
                                     object] | None = None,
                 ) -> None:
        if max_attempts < 1 or tries_per_attempt < 1:
            raise ValueError(f"max_attempts and tries_per_attempt must be >= 1, got "
                             f"{max_attempts}, {tries_per_attempt}")
        self._inspector = inspector
        self._usage = usage if usage is not None else NoUsage()
        self._on_deleted = on_deleted
        self._registry = registry
        self._readings = last_readings
        self._spool = spool
        self._host = host
        self._publisher_id = publisher_id
        self._on_spooled = on_spooled
        self._counters = counters if counters is not None else Counters()
        self._clock = clock
        self._max_attempts = max_attempts
        self._attempts = _Attempts()
        self._sample_options = {"legacy_meters": legacy_meters,
                                "telemetry_secret": telemetry_secret}
        self._locks: dict[str, tuple[threading.Lock, int]] = {}  # lock, holders + waiters
        self._locks_guard = threading.Lock()
        self._gate = StopGate()
        self._retrying = tenacity.Retrying(
            stop=tenacity.stop_after_attempt(tries_per_attempt),
            wait=tenacity.wait_exponential(multiplier=retry_wait, max=retry_max_wait),
            retry=tenacity.retry_if_exception_type(TRANSIENT), sleep=sleep, reraise=True)

    def close(self, timeout: float) -> bool:
        """Refuse new triggers, wait (bounded) for flushes in flight; False if some still
        run. Nothing is spooled after this returns (stop_gate.py)."""
        return self._gate.close(timeout)

    def handle(self, trigger: DeleteTrigger) -> Outcome:
        """Capture and spool one delete attempt's delete.samples, once per attempt.

        Raises CaptureDeferred when nothing could be spooled yet (redeliver the trigger), and
        ShuttingDown once close() was called (redeliver it to the next run).
        """
        with self._gate.working(f"flushing {trigger.instance_id}"):
            return self._handle(trigger)

    def _handle(self, trigger: DeleteTrigger) -> Outcome:
        message_id = payloads.delete_message_id(trigger)
        with self._instance_lock(trigger.instance_id):
            try:
                outcome = self._retrying(self._capture_and_spool, trigger, message_id)
            except TRANSIENT as exc:
                raise self._deferred(trigger, message_id, exc) from exc
        self._attempts.forget(message_id)
        self._counters.incr("flush.duplicates" if outcome is Outcome.DUPLICATE
                            else f"flush.{outcome.value}")
        if outcome in (Outcome.DUPLICATE, Outcome.NOT_NOVA):
            return outcome
        self._on_spooled()
        if outcome is not Outcome.FINAL:
            LOG.warning("delete of %s captured as %s (trigger %s)", trigger.instance_id,
                        outcome.value, trigger.event_type)
        return outcome

    def _capture_and_spool(self, trigger: DeleteTrigger, message_id: str) -> Outcome:
        if self._spool.seen(message_id):
            return Outcome.DUPLICATE
        built = self._attempts.built(message_id)
        if built is None:
            built = self._build(trigger, message_id)
            if isinstance(built, Outcome):
                return built  # not nova's, or flagged and spooled
            self._attempts.keep_built(message_id, built)
        kind, notification, info, ended = built
        self._gate.write(self._spool.put, notification, kind="final")
        self._account_deletion(trigger, info, ended)
        return Outcome(kind)

    def _account_deletion(self, trigger: DeleteTrigger, info: InstanceInfo | None,
                          ended: datetime.datetime) -> None:
        """The ledger closes the instance; its final exists follows the delete.samples (same
        reading, stamped no later than nova's announcement either: Ceilometer's stock
        definitions turn a compute.instance.exists into samples stamped with its envelope time).
        Never at the delete.samples' expense: a failure here is logged, counted."""
        instance_id = trigger.instance_id
        try:
            self._usage.instance_deleted(instance_id, ended)
            if info is not None and self._on_deleted is not None:
                self._on_deleted(info, ended, trigger.announced_at)
        except Exception:
            self._counters.incr("usage.final_exists_errors")
            LOG.exception("final exists of %s not spooled", instance_id)

    def _build(self, trigger: DeleteTrigger, message_id: str) -> tuple | Outcome:
        """(kind, notification, identity, when its process ended at the latest) or an
        Outcome. A process not read live ended before our read began (a read racing nova's
        destroy waits for the destroy to finish): that bounds what went unread."""
        supersedes = self._spool.last_capture(trigger.instance_id)
        info, notification, read_from = None, None, self._clock()
        try:
            kind, info, reading, state = self._capture(trigger.instance_id, message_id)
            if kind == Outcome.NOT_NOVA.value:
                return Outcome.NOT_NOVA
            now = self._clock()
            live = kind == payloads.FINAL
            notification = payloads.delete_samples(
                kind=kind, trigger=trigger, info=info, reading=reading, host=self._host,
                publisher_id=self._publisher_id, now=now, supersedes=supersedes,
                figures=closing_reads.figures(self._usage, live, reading, state),
                **self._sample_options)
            payloads.validate(notification)
        except TRANSIENT:
            raise
        except Exception as exc:  # this capture can never be published as it is
            return self._flag(trigger, supersedes, info, notification, exc)
        return kind, notification, info, now if live else read_from

    def _flag(self, trigger: DeleteTrigger, supersedes: str | None, info: InstanceInfo | None,
              rejected: Notification | None, exc: Exception) -> Outcome:
        """Keep what was captured in rejects; publish identity-only, flagged, with the error."""
        error = f"{type(exc).__name__}: {exc}"
        flagged = None
        info = info or self._registry.get(trigger.instance_id)
        for identity in (info, None):  # nova's metadata may itself be what broke the schema
            flagged = payloads.delete_samples(
                kind=payloads.UNAVAILABLE, trigger=trigger, info=identity, reading=None,
                host=self._host, publisher_id=self._publisher_id, now=self._clock(),
                supersedes=supersedes, errors=[error])
            with contextlib.suppress(Exception):
                payloads.validate(flagged)
                break
        self._gate.write(self._spool.put_flagged, flagged, rejected or flagged, error)
        LOG.error("delete of %s could not be published as captured (%s): kept in the spool's "
                  "rejects, published flagged", trigger.instance_id, error,
                  exc_info=not isinstance(exc, jsonschema.ValidationError))
        return Outcome.FLAGGED

    def _deferred(self, trigger: DeleteTrigger, message_id: str,
                  exc: BaseException) -> CaptureDeferred:
        attempts = self._attempts.bump(message_id)
        self._counters.incr("flush.deferred")
        log = LOG.error if attempts >= self._max_attempts else LOG.warning
        log("delete of %s not spooled (attempt %d of %d: %s: %s); the trigger will be "
            "redelivered", trigger.instance_id, attempts, self._max_attempts,
            type(exc).__name__, exc)
        return CaptureDeferred(f"capture {message_id} of {trigger.instance_id} deferred "
                               f"after attempt {attempts}: {exc}")

    def _capture(self, instance_id: str, message_id: str
                 ) -> tuple[str, InstanceInfo | None, DomainReading | None, str]:
        """(kind, identity, reading, the domain's state now: its state, gone or unknown)."""
        read_error, state = None, closing_reads.GONE
        try:
            reading = self._read_live(instance_id)
        except HypervisorError as exc:
            self._counters.incr("flush.read_errors")
            LOG.warning("live read of %s failed: %s", instance_id, exc)
            reading, read_error, state = None, exc, "unknown"
        info = self._identify(instance_id) if reading is not None else None
        state = reading.state if reading is not None else state
        if reading is not None and reading.active and info is not None:
            self._readings.update(info, reading)
            self._usage.record(info, reading, closing=True)
            return payloads.FINAL, info, reading, state
        # Gone, shut off, or unidentifiable now (a read that waited out nova's destroy finds
        # the domain undefined and forgotten): the cache or the ledger knows what it was.
        known = closing_reads.newest_known(self._readings, self._usage, instance_id)
        if known is not None:
            return payloads.LAST_KNOWN, known[0], known[1], state
        if reading is not None and info is not None:  # off, never seen running: gauges only
            return payloads.FINAL, info, reading, state
        if read_error is not None and self._attempts.get(message_id) + 1 < self._max_attempts:
            raise read_error  # nothing known yet: a later attempt may still read it
        if self._registry.unusable(instance_id) is not None:
            # nova announced it, its metadata is broken: nova's word wins, identity from it
            self._counters.incr("flush.metadata_unusable")
            return payloads.UNAVAILABLE, None, None, state
        if self._registry.is_known(instance_id) and self._registry.get(instance_id) is None:
            return Outcome.NOT_NOVA.value, None, None, state  # positively not nova's
        return payloads.UNAVAILABLE, self._registry.get(instance_id), None, state

    def _read_live(self, instance_id: str) -> DomainReading | None:
        try:
            return self._inspector.read(instance_id)
        except DomainGone:
            return None

    def _identify(self, instance_id: str) -> InstanceInfo | None:
        try:
            return self._registry.identify(instance_id)
        except HypervisorError:
            return None

    @contextlib.contextmanager
    def _instance_lock(self, instance_id: str):
        """Serialise triggers of one instance. The lock is counted by the threads holding or
        awaiting it and dropped when the last one leaves, so every trigger of an instance in
        flight at once shares one lock; a later one finds the notification spooled (seen())."""
        with self._locks_guard:
            lock, users = self._locks.get(instance_id, (None, 0))
            lock = lock or threading.Lock()
            self._locks[instance_id] = (lock, users + 1)
        try:
            with lock:
                yield
        finally:
            with self._locks_guard:
                lock, users = self._locks[instance_id]
                if users == 1:
                    del self._locks[instance_id]
                else:
                    self._locks[instance_id] = (lock, users - 1)
