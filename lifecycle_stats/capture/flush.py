"""The final sample: on a deletion, read the domain now and spool its delete.samples.

Runs on the thread that received nova's announcement and returns once the notification is
durably spooled, so the bus message is acknowledged only after that (at-least-once). The read
goes through the flush's own libvirt connection, never queued behind a running bulk poll.
What is read is delete_read.py's decision; what follows the spooling (the ledger closes the
instance, its final exists) is the pipeline's (pipeline.py).

Failures never drop a delete:
- transient (database locked or busy, disk full or any OSError under state_path, a libvirt
  read error with nothing known): retried in-process with backoff (tenacity), then
  CaptureDeferred is raised and the bus requeues the message. Attempts are counted per capture
  in memory (attempts.py). A capture built but not spooled is kept with its count and spooled
  as it was on the next try or redelivery (the domain may be gone by then). After
  max_attempts a read error gives up to `unavailable`; a spool that stays unwritable keeps the
  message on the bus (logged as ERROR each time).
- permanent (the payload breaks its schema, a partial stats record raises KeyError, any other
  bug): the capture is kept in the spool's rejects table and a flagged `unavailable` event
  (`capture.flagged`, `capture.errors`) is published instead.
"""
from __future__ import annotations

import contextlib
import dataclasses
import datetime
import logging
import sqlite3
import time
from typing import Callable

import jsonschema
import tenacity
from oslo_config import cfg

from lifecycle_stats.capture.attempts import Attempts, InstanceLocks
from lifecycle_stats.capture.delete_read import DeleteReader
from lifecycle_stats.capture.observations import GONE, Observations
from lifecycle_stats.capture.settings import Settings
from lifecycle_stats.capture.stop_gate import StopGate
from lifecycle_stats.counters import Counters
from lifecycle_stats.exceptions import CaptureDeferred, HypervisorError
from lifecycle_stats.interfaces import NotificationStore, Outcome, Reader, Registry
from lifecycle_stats.publishing import payloads
from lifecycle_stats.records import DeleteTrigger, InstanceInfo, Notification, utcnow

LOG = logging.getLogger(__name__)

# Failures that may pass, or at least are not this capture's fault: sqlite's "database is
# locked" / "database or disk is full" (OperationalError) and a file damaged under a running
# agent (DatabaseError: quarantined at the next start); a full or read-only state_path
# (OSError); a libvirt read that failed other than by the domain being gone (HypervisorError).
TRANSIENT = (sqlite3.DatabaseError, OSError, HypervisorError)

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


@dataclasses.dataclass(frozen=True)
class Captured:
    """One deletion's capture, once spooled (or found spooled before)."""

    outcome: Outcome
    info: InstanceInfo | None = None  # whose final exists follows (None: no identity known)
    ended: datetime.datetime | None = None  # its QEMU process ended at the latest
    gone: bool = False  # the read found the domain gone: the delete happened


class Flusher:
    """Reads through its own connection (the reader it is given), never the poller's; spools
    through the gate, so nothing is written once the pipeline has closed."""

    def __init__(self, *, reader: Reader, registry: Registry, observations: Observations,
                 spool: NotificationStore, gate: StopGate, settings: Settings,
                 counters: Counters, clock: Callable[[], datetime.datetime] = utcnow,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        self._reads = DeleteReader(reader=reader, registry=registry,
                                   observations=observations, counters=counters)
        self._registry = registry
        self._observations = observations
        self._spool = spool
        self._gate = gate
        self._settings = settings
        self._counters = counters
        self._clock = clock
        self._attempts = Attempts()
        self._locks = InstanceLocks()
        retry = settings.retry
        self._retrying = tenacity.Retrying(
            stop=tenacity.stop_after_attempt(retry.tries_per_attempt),
            wait=tenacity.wait_exponential(multiplier=retry.wait, max=retry.max_wait),
            retry=tenacity.retry_if_exception_type(TRANSIENT), sleep=sleep, reraise=True)

    def capture(self, trigger: DeleteTrigger) -> Captured:
        """Capture and spool one delete attempt's delete.samples, once per attempt.

        Raises CaptureDeferred when nothing could be spooled yet (redeliver the trigger), and
        ShuttingDown once the gate closed (redeliver it to the next run).
        """
        message_id = payloads.delete_message_id(trigger)
        with self._locks.held(trigger.instance_id):
            try:
                captured = self._retrying(self._capture_and_spool, trigger, message_id)
            except TRANSIENT as exc:
                raise self._deferred(trigger, message_id, exc) from exc
        self._attempts.forget(message_id)
        outcome = captured.outcome
        self._counters.incr("flush.duplicates" if outcome is Outcome.DUPLICATE
                            else f"flush.{outcome.value}")
        if outcome.spooled and outcome is not Outcome.FINAL:
            LOG.warning("delete of %s captured as %s (trigger %s)", trigger.instance_id,
                        outcome.value, trigger.event_type)
        return captured

    def _capture_and_spool(self, trigger: DeleteTrigger, message_id: str) -> Captured:
        if self._spool.seen(message_id):
            return Captured(Outcome.DUPLICATE)
        built = self._attempts.built(message_id)
        if built is None:
            built = self._build(trigger, message_id)
            if isinstance(built, Outcome):
                return Captured(built)  # not nova's, or flagged and spooled
            self._attempts.keep_built(message_id, built)
        outcome, notification, info, ended = built
        self._gate.write(self._spool.put, notification, kind="final")
        gone = notification.payload.get("capture", {}).get("domain_state") == GONE
        return Captured(outcome, info, ended, gone)

    def _build(self, trigger: DeleteTrigger, message_id: str) -> tuple | Outcome:
        """(outcome, notification, identity, when its process ended at the latest) or an
        Outcome. A process not read live ended before our read began (a read racing nova's
        destroy waits for the destroy to finish): that bounds what went unread."""
        supersedes = self._spool.last_capture(trigger.instance_id)
        info, notification, read_from = None, None, self._clock()
        try:
            read = self._reads.read(trigger.instance_id, may_retry=(
                self._attempts.get(message_id) + 1 < self._settings.retry.max_attempts))
            if read.outcome is Outcome.NOT_NOVA:
                return Outcome.NOT_NOVA
            info, now = read.info, self._clock()
            notification = payloads.delete_samples(
                kind=read.outcome.value, trigger=trigger, info=info, reading=read.reading,
                host=self._settings.host, publisher_id=self._settings.publisher_id, now=now,
                supersedes=supersedes,
                figures=self._observations.figures(read.live, read.reading, read.state),
                legacy_meters=self._settings.legacy_meters,
                telemetry_secret=self._settings.telemetry_secret)
            payloads.validate(notification)
        except TRANSIENT:
            raise
        except Exception as exc:  # this capture can never be published as it is
            return self._flag(trigger, supersedes, info, notification, exc)
        return read.outcome, notification, info, now if read.live else read_from

    def _flag(self, trigger: DeleteTrigger, supersedes: str | None, info: InstanceInfo | None,
              rejected: Notification | None, exc: Exception) -> Outcome:
        """Keep what was captured in rejects; publish identity-only, flagged, with the error."""
        error = f"{type(exc).__name__}: {exc}"
        flagged = None
        info = info or self._registry.get(trigger.instance_id)
        for identity in (info, None):  # nova's metadata may itself be what broke the schema
            flagged = payloads.delete_samples(
                kind=payloads.UNAVAILABLE, trigger=trigger, info=identity, reading=None,
                host=self._settings.host, publisher_id=self._settings.publisher_id,
                now=self._clock(), supersedes=supersedes, errors=[error])
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
        max_attempts = self._settings.retry.max_attempts
        log = LOG.error if attempts >= max_attempts else LOG.warning
        log("delete of %s not spooled (attempt %d of %d: %s: %s); the trigger will be "
            "redelivered", trigger.instance_id, attempts, max_attempts,
            type(exc).__name__, exc)
        return CaptureDeferred(f"capture {message_id} of {trigger.instance_id} deferred "
                               f"after attempt {attempts}: {exc}")
