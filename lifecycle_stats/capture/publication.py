"""Publish after: each durable capture built into its delete.samples, and its deletion accounted.

Nova's delete waits for the capture alone (flush.py: the read, one durable append). Senders
publish a capture as soon as it is durable, built by `build` (the publishing side's
Spool.pending calls it): build, validate and sign from the capture record
(capture_record.py), once per capture however many conduits ask (a memo shared with this
thread). This thread then, off the delivery path, accounts each deletion (on_built: the usage
ledger hears of the delete; its final exists follows the end) and swaps the capture for its
notification in the spool, many in one transaction (publishing/capture_rows.py); the record
leaves the spool only after that, so a crash before it redoes the accounting. What is waiting
at start (a crash between capture and publication) is built and sent like any capture, so
nothing captured is lost, and what was read as `final` stays `final`. A capture that cannot be
published as captured is kept in the spool's rejects and published flagged
(`capture.flagged`), as a capture that failed at the read is, and its deletion is accounted all
the same; a record that cannot be read at all, or neither built nor flagged, moves to rejects
(`spool.corrupt`), and senders wait for that.
"""
from __future__ import annotations

import collections
import contextlib
import logging
import threading
from typing import Callable, NamedTuple

from oslo_config import cfg

from lifecycle_stats import threads
from lifecycle_stats.capture import capture_record
from lifecycle_stats.capture.settings import Settings
from lifecycle_stats.counters import Counters
from lifecycle_stats.publishing import capture_rows, payloads
from lifecycle_stats.records import StopAnnouncement, InstanceInfo, Notification

LOG = logging.getLogger(__name__)
# Captures built, held and swapped at once. A delete.samples is ~60 KiB of Python objects, and
# what batches of 100 held in a burst stayed resident after it (pymalloc keeps an arena while
# any object in it lives). Off the delivery path, so more swap commits cost nova and billing
# nothing; the senders keep 100 (16 there measured ~0.3 s later on a burst's last delivery).
BATCH = 16

OPTS = [
    cfg.FloatOpt("linger", default=0.02, min=0.0, max=60.0,
                 help="Seconds the publication thread waits after a capture before it "
                      "accounts the deletion and swaps the capture for its delete.samples. "
                      "The senders meanwhile build and publish the capture alone (they "
                      "publish it as soon as it is durable), and more captures of a burst "
                      "share one transaction. Nova never waits for it; the usage ledger hears "
                      "of each delete up to this much later. A stop goes on at once."),
]


def flagged_samples(settings: Settings, trigger: StopAnnouncement, info: InstanceInfo | None,
                    supersedes: str | None, error: str, now) -> Notification:
    """The identity-only `unavailable` delete.samples that says why (nova's metadata may
    itself be what broke the schema: then without it)."""
    flagged = None
    for identity in (info, None):
        flagged = payloads.delete_samples(
            kind=payloads.UNAVAILABLE, trigger=trigger, info=identity, reading=None,
            host=settings.host, publisher_id=settings.publisher_id, now=now,
            supersedes=supersedes, errors=[error])
        with contextlib.suppress(Exception):
            payloads.validate(flagged)
            break
    return flagged


class _Built(NamedTuple):
    row: tuple  # capture_rows.Built's fields
    capture: capture_record.Capture | None  # decoded, built or flagged: its deletion is accounted


class _Memo:
    """One build per capture, shared by the senders and this thread: the first to ask builds,
    the others wait for it. Forgotten after the swap (the spool then holds the notification)."""

    SWAPPED_KEPT = 4096  # seqs swapped lately: a sender that read one just before its swap

    def __init__(self, build: Callable[[capture_rows.Waiting], _Built]) -> None:
        self._build = build
        self._lock = threading.Lock()
        self._entries: dict[int, tuple[threading.Event, list]] = {}
        self._swapped: collections.OrderedDict[int, None] = collections.OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, waiting: capture_rows.Waiting) -> _Built:
        with self._lock:  # one hold: a swap between the two looks would leave an entry behind
            late = waiting.seq in self._swapped
            entry = None if late else self._entries.get(waiting.seq)
            mine = entry is None and not late
            if mine:
                entry = self._entries[waiting.seq] = (threading.Event(), [])
        if late:  # read before its swap, asked after: built again, never remembered
            return self._build(waiting)
        done, result = entry
        if mine:
            try:
                result.append(self._build(waiting))
            finally:
                if not result:  # the build itself failed: the next one asking tries again
                    self.forget([waiting.seq])
                done.set()
        done.wait()
        if not result:
            raise RuntimeError(f"building capture {waiting.message_id} failed")
        return result[0]

    def forget(self, seqs: list[int], *, swapped: bool = False) -> None:
        with self._lock:
            for seq in seqs:
                self._entries.pop(seq, None)
                if swapped:
                    self._swapped[seq] = None
            while len(self._swapped) > self.SWAPPED_KEPT:
                self._swapped.popitem(last=False)


class Publication:
    def __init__(self, *, spool, settings: Settings, counters: Counters,
                 on_published: Callable[[], None] = lambda: None,
                 on_built: Callable[[capture_record.Capture], None] = lambda capture: None,
                 batch: int = BATCH,
                 poll_interval: float = 1.0, linger: float = 0.0,
                 before_batch: Callable[[], object] = lambda: None) -> None:
        self._spool = spool
        self._before_batch = before_batch  # yields to a capture nova waits for
        self._settings = settings
        self._counters = counters
        self._on_published = on_published
        self._on_built = on_built
        self._batch = batch
        self._poll = poll_interval
        self._linger = linger
        self._loop = threads.WakeableLoop()
        self._stop, self._wake = self._loop.stopping, self._loop.woken
        self._memo = _Memo(self._build)

    def build(self, waiting: capture_rows.Waiting) -> Notification | None:
        """The notification a sender publishes for this capture (Spool.pending's build);
        None for a record that cannot be read (this thread moves it to rejects)."""
        return self._memo.get(waiting).row[1]

    def start(self) -> None:
        self._loop.start(self._run, "lifecycle-stats-publication")

    def wake(self) -> None:
        self._loop.wake()

    @property
    def thread_state(self) -> str:
        return self._loop.state

    def stop(self, timeout: float) -> bool:
        """Build what is waiting (bounded by timeout), then end; True when the thread ended.
        What is not built by then is built at the next start."""
        return self._loop.stop(timeout)

    def build_waiting(self) -> int:
        """Build every capture waiting now (the thread's work; the replay player calls it
        directly); how many were published."""
        published = 0
        while True:
            self._before_batch()
            waiting = capture_rows.waiting(self._spool, self._batch)
            if not waiting:
                break
            built = [self._memo.get(w) for w in waiting]
            for capture in (b.capture for b in built if b.capture is not None):
                self._on_built(capture)  # before the swap: a crash in between redoes both
            published += capture_rows.publish(
                self._spool, [capture_rows.Built(*b.row) for b in built])
            self._memo.forget([w.seq for w in waiting], swapped=True)
            self._counters.incr("publication.batches")
            self._on_published()
            if len(waiting) < self._batch:
                break
        return published

    def _run(self) -> None:
        while True:
            self._wake.clear()
            try:
                self.build_waiting()
            except Exception:  # the spool failed: keep the thread, try again later
                self._counters.incr("publication.errors")
                LOG.exception("building captured deletions failed; retrying in %.1f s",
                              self._poll)
            if self._stop.is_set():
                return
            if self._wake.wait(self._poll) and self._linger:
                self._stop.wait(self._linger)  # gather a burst; a stop ends it at once

    def _build(self, waiting: capture_rows.Waiting) -> _Built:
        try:
            capture = capture_record.decode(waiting.body)
        except ValueError as exc:
            return _Built((waiting, None, waiting.body, str(exc)), None)
        notification = None
        try:
            notification = payloads.delete_samples(
                kind=capture.outcome, trigger=capture.trigger, info=capture.info,
                reading=capture.reading, host=self._settings.host,
                publisher_id=self._settings.publisher_id, now=capture.now,
                supersedes=capture.supersedes, figures=capture.figures,
                legacy_meters=self._settings.legacy_meters,
                telemetry_secret=self._settings.telemetry_secret)
            payloads.validate(notification)
        except Exception as exc:  # this capture can never be published as it is
            try:
                return self._flag(waiting, capture, notification, exc)
            except Exception as flag_exc:  # not even flagged: unusable as a record
                LOG.exception("capture %s cannot be built nor flagged", waiting.message_id)
                return _Built((waiting, None, waiting.body,
                               f"{type(exc).__name__}: {exc}; flagging it: "
                               f"{type(flag_exc).__name__}: {flag_exc}"), None)
        self._counters.incr("publication.built")
        return _Built((waiting, notification), capture)

    def _flag(self, waiting: capture_rows.Waiting, capture: capture_record.Capture,
              rejected: Notification | None, exc: Exception) -> _Built:
        error = f"{type(exc).__name__}: {exc}"
        flagged = flagged_samples(self._settings, capture.trigger, capture.info,
                                  capture.supersedes, error, capture.now)
        self._counters.incr("publication.flagged")
        LOG.error("delete of %s could not be published as captured (%s): kept in the spool's "
                  "rejects, published flagged", capture.trigger.instance_id, error)
        # the delete happened all the same: its deletion is accounted (on_built) as any
        return _Built((waiting, flagged, rejected or waiting.body, error), capture)
