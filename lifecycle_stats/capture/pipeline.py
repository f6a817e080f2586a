"""The core's one front door: what the outside world does to it, and nothing else.

  announced(trigger)  nova announced a stop (bus, hook): a deletion gets its delete.samples
                      and the instance's final exists; any other stop a closing reading
  lifecycle(event)    libvirt told of a domain's lifecycle (registry upkeep, stop/start reads)
  audit(window)       nova audited an instance's usage (its own exists, enriched)
  poll()              the periodic bulk read (also the poller thread's, and the period closer's)
  resync()            re-list libvirt's domains (at start, after the event connection was lost)

The agent (agent.py), the replay player (replay/player.py) and every benchmark build the core
through Pipeline; nothing else builds its parts. Follow a deletion from here:
announced → Flusher.capture (delete_read.DeleteReader.read → capture_record → spool.put_capture)
→ nova's answer and the senders woken, which publish the capture built by Publication.build
(payloads, validation, signing); then on the publication thread: observations.delete_announced
(the ledger ends the instance once its domain is gone: found gone by that read, libvirt's
undefine, or a resync) → ExistsReporter.final_due, and the capture swapped for its notification.
"""
from __future__ import annotations

import dataclasses
import datetime
import logging
import time
from typing import Callable

from lifecycle_stats.capture import capture_record, closing_reads, domain_events, flush, poller
from lifecycle_stats.capture.last_readings import LastReadings
from lifecycle_stats.capture.observations import GONE, Observations
from lifecycle_stats.capture.nova_waiting import NovaWaiting
from lifecycle_stats.capture.publication import Publication
from lifecycle_stats.capture.settings import Retry, Settings
from lifecycle_stats.capture.stop_gate import StopGate
from lifecycle_stats.counters import Counters
from lifecycle_stats.exceptions import HypervisorError
from lifecycle_stats.interfaces import (
    NotificationStore, Outcome, Reader, Registry, UsageAccounts,
)
from lifecycle_stats.records import (
    DELETE, AuditWindow, StopAnnouncement, LifecycleEvent, utcnow,
)
from lifecycle_stats.usage.reports import ExistsReporter

__all__ = ["Pipeline", "Readers", "Retry", "Settings"]

LOG = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class Readers:
    """One reader per job, so none waits behind another (the agent gives each its own libvirt
    connection): the read at nova's announcement, the bulk poll, the reads at libvirt events."""

    announced: Reader
    poll: Reader
    events: Reader

    @classmethod
    def one(cls, reader: Reader) -> "Readers":
        return cls(announced=reader, poll=reader, events=reader)

    def learn_domains(self) -> None:
        """Off nova's wait (after each poll, at a resync): the announced reader keeps a handle
        of every domain, so a delete's read makes one libvirt call (reading/domain_handles.py).
        Optional for a reader; a failure costs the next read a lookup, nothing else."""
        learn = getattr(self.announced, "learn_domains", None)
        if learn is None:
            return
        try:
            learn()
        except HypervisorError as exc:
            LOG.warning("could not list domains for the delete reads: %s", exc)


class Pipeline:
    def __init__(self, *, readers: Readers, registry: Registry, spool: NotificationStore,
                 ledger: UsageAccounts, settings: Settings, counters: Counters | None = None,
                 clock: Callable[[], datetime.datetime] = utcnow,
                 sleep: Callable[[float], None] = time.sleep,
                 on_spooled: Callable[[], None] = lambda: None) -> None:
        counters = counters if counters is not None else Counters()
        self.settings = settings
        self.registry = registry
        self._on_spooled = on_spooled
        self._counters = counters
        self._gate = StopGate()
        self.observations = Observations(LastReadings(clock=clock), ledger)
        self.reporter = ExistsReporter(
            ledger=ledger, spool=spool, host=settings.host,
            publisher_id=settings.publisher_id, counters=counters, on_spooled=on_spooled,
            clock=clock)
        ledger.on_instance_ended = self.reporter.final_due  # its final exists
        seen = dict(registry=registry, observations=self.observations, counters=counters)
        self._flusher = flush.Flusher(reader=readers.announced, spool=spool, gate=self._gate,
                                      settings=settings, clock=clock, sleep=sleep, **seen)
        # capture first, publish after: built from the durable capture on its own thread
        self.nova_waiting = NovaWaiting(counters=counters)
        self.publication = Publication(spool=spool, settings=settings, counters=counters,
                                       before_batch=self.nova_waiting.wait_clear,
                                       on_published=on_spooled, on_built=self._account_built,
                                       linger=settings.publication_linger)
        self._closing = closing_reads.ClosingReads(reader=readers.announced, clock=clock,
                                                   **seen)
        self._events = domain_events.DomainEventHandler(reader=readers.events, clock=clock,
                                                        **seen)
        self.poller = poller.Poller(reader=readers.poll, interval=settings.poll_interval,
                                    clock=clock, on_polled=readers.learn_domains, **seen)
        self._readers = readers

    # -- what the outside world does -------------------------------------------------
    def announced(self, trigger: StopAnnouncement,
                  answer: Callable[[Outcome], None] | None = None) -> Outcome:
        """Nova announced a stop. Returns once a deletion's capture is durably spooled (its
        delete.samples is built after, on the publication thread);
        raises CaptureDeferred (nothing spooled yet: redeliver) or ShuttingDown (after
        close(): redeliver to the next run). ``answer`` hears a deletion's outcome first,
        before the senders are woken: the hook answers nova there (measured: woken senders
        held the answer back 0.5 ms at p50, 25 ms at p99; doc/benchmarks.md)."""
        if answer is None:  # the bus's: nova has published it, publishing may go on
            self.nova_waiting.heard_on_bus(trigger.instance_id)
            return self._announced(trigger, None)
        # publishing waits for this one, then for nova's own copy of it (nova_waiting.py)
        with self.nova_waiting.capture(trigger.instance_id):
            return self._announced(trigger, answer)

    def _announced(self, trigger: StopAnnouncement,
                   answer: Callable[[Outcome], None] | None) -> Outcome:
        if trigger.action != DELETE:  # reboot, power-off, shelve, ...: a closing reading
            # and an earlier delete failed: a hard reboot's undefine must not end the instance
            self.observations.stop_announced(trigger.instance_id,
                                             trigger.announced_at or trigger.received_at)
            return self._closing.handle(trigger)
        with self._gate.working(f"flushing {trigger.instance_id}"):
            captured = self._flusher.capture(trigger)
            if answer is not None:
                _tell(answer, captured.outcome)
            if captured.outcome.spooled:
                self._on_spooled()  # first: senders publish a capture as soon as it is durable
            if captured.outcome.spooled and captured.outcome is not Outcome.FLAGGED:
                self.publication.wake()  # then, off delivery: the ledger (on_built), the swap
            elif captured.outcome is not Outcome.NOT_NOVA:  # flagged or a redelivery
                self._account_deletion(trigger, captured.ended, gone=False)
        return captured.outcome

    def lifecycle(self, event: LifecycleEvent) -> None:
        self._events(event)

    def audit(self, window: AuditWindow) -> None:
        self.reporter.nova_audit(window, self.registry.get(window.instance_id))

    def poll(self) -> int:
        """One bulk poll; returns how many nova instances were read."""
        return self.poller.poll_once()

    def resync(self) -> None:
        self._events.resync()
        self._readers.learn_domains()

    def close(self, timeout: float) -> bool:
        """Refuse new deletions, wait (bounded) for those in flight; False if some still run.
        Nothing is spooled by a deletion after this returns (stop_gate.py)."""
        return self._gate.close(timeout)

    # -- the deletion, after its delete.samples ----------------------------------------
    def _account_built(self, capture: capture_record.Capture) -> None:
        """On the publication thread, before its delete.samples takes the capture's place."""
        gone = capture.figures.get("domain_state") == GONE
        reading = capture.reading
        if (capture.outcome == Outcome.FINAL.value and capture.info is not None
                and reading is not None and reading.active):  # read live: a closing reading
            self.observations.deletion_captured(capture.info, reading)
        self._account_deletion(capture.trigger, capture.ended, gone=gone)

    def _account_deletion(self, trigger: StopAnnouncement, ended: datetime.datetime | None, *,
                          gone: bool) -> None:
        """The ledger hears of the delete (also of a redelivered one: idempotent). Not an
        end — nova's delete can fail or be retried — unless the read found the domain gone;
        the final exists follows the end, stamped no later than nova's announcement
        (Ceilometer's stock definitions turn a compute.instance.exists into samples stamped
        with its envelope time). A failing ledger is counted there, never costs the capture."""
        self.observations.delete_announced(
            trigger.instance_id, ended or trigger.received_at,
            sent_by=trigger.announced_at, gone=gone)


def _tell(answer: Callable[[Outcome], None], outcome: Outcome) -> None:
    """A listener's failure to answer must not keep the senders asleep."""
    try:
        answer(outcome)
    except Exception:
        LOG.exception("answering %s failed", outcome.value)
