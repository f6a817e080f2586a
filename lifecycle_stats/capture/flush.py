"""The final sample: on a deletion, read the domain now and spool what was read.

Runs on the thread that received nova's announcement and returns once the capture (the read
and one durable append of what was read: capture_record.py) is in the spool, so nova's delete
waits for that alone and the bus message is acknowledged only after it (at-least-once). The
delete.samples is built from the capture afterwards, on the publication thread
(publication.py); a crash in between loses nothing (built at the next start). The read
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
- permanent (a partial stats record raises KeyError, any other bug): a flagged `unavailable`
  event is spooled instead, and kept in the spool's rejects (`flush.flagged`); a payload that
  breaks its schema is found at the build and flagged there (publication.py).
"""
from __future__ import annotations

import dataclasses
import datetime
import logging
import sqlite3
import time
from typing import Callable

import tenacity
from oslo_config import cfg

from lifecycle_stats.capture import capture_record, publication
from lifecycle_stats.capture.attempts import Attempts, InstanceLocks
from lifecycle_stats.capture.delete_read import DeleteReader
from lifecycle_stats.capture.observations import Observations
from lifecycle_stats.capture.settings import Settings
from lifecycle_stats.capture.stop_gate import StopGate
from lifecycle_stats.counters import Counters
from lifecycle_stats.exceptions import CaptureDeferred, HypervisorError
from lifecycle_stats.interfaces import NotificationStore, Outcome, Reader, Registry
from lifecycle_stats.publishing import payloads
from lifecycle_stats.records import StopAnnouncement, InstanceInfo, utcnow

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

    def capture(self, trigger: StopAnnouncement) -> Captured:
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

    def _capture_and_spool(self, trigger: StopAnnouncement, message_id: str) -> Captured:
        if self._spool.seen(message_id):
            return Captured(Outcome.DUPLICATE)
        built = self._attempts.built(message_id)
        if built is None:
            built = self._read(trigger, message_id)
            if isinstance(built, Outcome):
                return Captured(built)  # not nova's, or flagged and spooled
            self._attempts.keep_built(message_id, built)
        outcome, body, info, ended = built
        self._gate.write(self._spool.put_capture, message_id, trigger.instance_id, body)
        return Captured(outcome, info, ended)

    def _read(self, trigger: StopAnnouncement, message_id: str) -> tuple | Outcome:
        """(outcome, capture record, identity, when its process ended at the latest) or an
        Outcome. A process not read live ended before our read began (a read racing nova's
        destroy waits for the destroy to finish): that bounds what went unread. The
        delete.samples is built from the record later (publication.py)."""
        supersedes = self._spool.last_capture(trigger.instance_id)
        info, read_from = None, self._clock()
        try:
            read = self._reads.read(trigger.instance_id, may_retry=(
                self._attempts.get(message_id) + 1 < self._settings.retry.max_attempts))
            if read.outcome is Outcome.NOT_NOVA:
                return Outcome.NOT_NOVA
            info, now = read.info, self._clock()
            ended = now if read.live else read_from
            body = capture_record.encode(capture_record.Capture(
                message_id=message_id, trigger=trigger, outcome=read.outcome.value, info=info,
                reading=read.reading, supersedes=supersedes, now=now, ended=ended,
                figures=self._observations.figures(read.live, read.reading, read.state)))
        except TRANSIENT:
            raise
        except Exception as exc:  # this capture can never be published as it is
            return self._flag(trigger, supersedes, info, exc)
        return read.outcome, body, info, ended

    def _flag(self, trigger: StopAnnouncement, supersedes: str | None, info: InstanceInfo | None,
              exc: Exception) -> Outcome:
        """Keep what is known in rejects; publish identity-only, flagged, with the error."""
        error = f"{type(exc).__name__}: {exc}"
        info = info or self._registry.get(trigger.instance_id)
        flagged = publication.flagged_samples(self._settings, trigger, info, supersedes, error,
                                              self._clock())
        self._gate.write(self._spool.put_flagged, flagged, flagged, error)
        LOG.error("delete of %s could not be captured (%s): kept in the spool's rejects, "
                  "published flagged", trigger.instance_id, error, exc_info=True)
        return Outcome.FLAGGED

    def _deferred(self, trigger: StopAnnouncement, message_id: str,
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
