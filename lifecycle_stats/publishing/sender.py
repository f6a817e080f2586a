"""One thread per conduit draining the spool in order: publish a batch, retire it.

Up to `batch` pending records are published in order (a conduit's emit_batch when it has
one, else emit each), a deletion's capture as soon as it is durable, built by `build`; the
leading ones the conduit confirmed are retired in one spool transaction (one fsync for the
batch). A record that fails is retried (exponential backoff) before any later record is tried, so a
conduit sees notifications in the order they were captured. Stopping wakes a backoff sleep at
once; a record being sent when stop() is called was either confirmed or stays spooled for the
next start.

Poison records: a conduit that is down fails every record, a poison record fails alone, and
both raise EmitError. So after every `poison_probe_attempts` failures of one record by this
conduit (counted in the spool per conduit, across restarts) the record behind it is tried
once: if that one goes through, the failing record is poison and moves to the spool's rejects
(ERROR log, counter `sender.<conduit>.rejected`); the conduit goes on. A broker outage never rejects anything this
way. `max_age_seconds` (off by default) also rejects a record still undelivered at that age.

`on_drained` runs on the sender's thread when it finds nothing left to send after it
delivered `drained_after` records since the last time: the end of a burst (the agent gives the
heap's free pages back then), not every lull inside one (a sender that keeps pace with
captures drains after nearly every one).
"""
from __future__ import annotations

import logging
import threading
from typing import Callable

import tenacity

from lifecycle_stats import threads
from lifecycle_stats.counters import Counters
from lifecycle_stats.exceptions import BatchEmitError, EmitError
from lifecycle_stats.interfaces import Conduit
from lifecycle_stats.records import Notification
from lifecycle_stats.publishing.spool import Build, Spool

LOG = logging.getLogger(__name__)

class _Stopped(Exception):
    """stop() was called before the next attempt."""


class _Poison(Exception):
    """This record will never be delivered by this conduit; the message says why."""


class Sender:
    def __init__(self, spool: Spool, conduit_name: str, emitter: Conduit, *,
                 counters: Counters | None = None, wait_initial: float = 0.5,
                 wait_max: float = 30.0, sleep: Callable[[float], object] | None = None,
                 batch: int = 100, poll_interval: float = 1.0, probe_after: int = 5,
                 max_age_seconds: float = 0.0, build: Build | None = None,
                 on_drained: Callable[[], object] = lambda: None, drained_after: int = 64,
                 before_batch: Callable[[], object] = lambda: None):
        if not 0 < wait_initial <= wait_max:
            raise ValueError(f"need 0 < wait_initial <= wait_max, got {wait_initial}, {wait_max}")
        if batch < 1 or probe_after < 1 or max_age_seconds < 0:
            raise ValueError(f"need batch >= 1, probe_after >= 1, max_age_seconds >= 0, got "
                             f"{batch}, {probe_after}, {max_age_seconds}")
        if conduit_name not in spool.conduits:
            raise ValueError(f"conduit {conduit_name!r} is not one of the spool's "
                             f"{spool.conduits}")
        self.conduit = conduit_name
        self._spool = spool
        self._emitter = emitter
        self._counters = counters if counters is not None else Counters()
        self._batch = batch
        self._poll = poll_interval
        self._probe_after = probe_after
        self._max_age = max_age_seconds
        self._build = build  # a capture, built to send (capture/publication.py); None: wait
        self._on_drained = on_drained
        self._before_batch = before_batch  # yields to a capture nova waits for (bounded)
        self._drained_after = drained_after
        self._delivered_since_drained = 0
        self._loop = threads.WakeableLoop()
        self._stop, self._wake = self._loop.stopping, self._loop.woken
        self._progress = threading.Condition()
        self._retrying = tenacity.Retrying(
            sleep=sleep if sleep is not None else self._stop.wait,
            wait=tenacity.wait_exponential(multiplier=wait_initial, min=wait_initial,
                                           max=wait_max),
            stop=tenacity.stop_when_event_set(self._stop),
            retry=tenacity.retry_if_exception_type(EmitError),
            before_sleep=self._before_sleep,
        )

    # -- control ----------------------------------------------------------------------------

    def start(self) -> None:
        self._loop.start(self._run, f"sender-{self.conduit}")

    @property
    def thread_state(self) -> str:
        return self._loop.state

    def wake(self) -> None:
        """New records were put: look now instead of at the next poll."""
        self._loop.wake()

    def stop(self, timeout: float | None = None) -> bool:
        """Stop after the current attempt; True when the thread has ended."""
        return self._loop.stop(timeout)

    def drain(self, timeout: float) -> bool:
        """Wait until this conduit has nothing pending; False on timeout."""
        self.wake()
        with self._progress:
            return self._progress.wait_for(lambda: self._spool.pending_count(self.conduit) == 0,
                                           timeout)

    # -- the thread -------------------------------------------------------------------------

    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.clear()
            try:
                self._before_batch()
                busy = self._send_batch()
                if not busy:
                    self._drained()
            except Exception:  # the spool itself failed: keep the thread, try again later
                LOG.exception("sender %s: spool error; retrying in %.1f s", self.conduit,
                              self._poll)
                self._counters.incr(f"sender.{self.conduit}.errors")
                busy = False
            if not busy:
                self._notify_progress()
                self._wake.wait(self._poll)

    def _drained(self) -> None:
        if (self._delivered_since_drained >= self._drained_after
                and self._spool.pending_count(self.conduit) == 0):
            self._delivered_since_drained = 0
            self._on_drained()

    def _send_batch(self) -> bool:
        """Publish what is pending as one batch and retire what the conduit confirmed in one
        transaction; the first record it could not deliver goes the one-at-a-time way
        (retries, poison probe; the batch's try is its first attempt) before anything
        behind it. True: there may be more to do right away."""
        items = self._spool.pending(self.conduit, self._batch, self._build)
        delivered, error = self._publish_batch([notification for _, notification in items])
        if delivered:
            self._confirm_many([seq for seq, _ in items[:delivered]])
        if error is None:
            return bool(items) and delivered == len(items)
        seq, notification = items[delivered]
        try:
            if not self._send(seq, notification, error):
                return False
        except _Poison as exc:
            self._reject(seq, notification, str(exc))
            return True  # a probe may have delivered the next record: re-read the spool
        self._confirm(seq)
        return True

    def _publish_batch(self, notifications: list[Notification]
                       ) -> tuple[int, EmitError | None]:
        """(how many leading notifications the conduit confirmed, the failure it stopped at)."""
        emit_batch = getattr(self._emitter, "emit_batch", None)
        if emit_batch is None or not notifications:
            return self._emit_each(notifications)
        try:
            emit_batch(notifications)
        except BatchEmitError as exc:
            return min(max(exc.delivered, 0), len(notifications) - 1), exc
        except Exception as exc:  # noqa: BLE001 - a conduit bug: nothing counts as confirmed
            LOG.error("sender %s: emit_batch raised %s", self.conduit, type(exc).__name__,
                      exc_info=not isinstance(exc, EmitError))
            return 0, EmitError(f"{type(exc).__name__}: {exc}")
        return len(notifications), None

    def _emit_each(self, notifications: list[Notification]) -> tuple[int, EmitError | None]:
        for done, notification in enumerate(notifications):
            if self._stop.is_set():  # what was sent is confirmed; nothing more goes out
                return done, None
            try:
                self._emit(notification)
            except EmitError as exc:
                return done, exc
        return len(notifications), None

    def _send(self, seq: int, notification: Notification,
              first_error: EmitError | None = None) -> bool:
        """Emit with retries until confirmed (True) or stopped (False); _Poison: give up.
        first_error: the first attempt already failed so (in the batch)."""
        try:
            self._retrying(self._attempt, seq, notification,
                           [] if first_error is None else [first_error])
        except (_Stopped, tenacity.RetryError):
            return False
        return True

    def _attempt(self, seq: int, notification: Notification, earlier: list[EmitError]) -> None:
        if self._stop.is_set():
            raise _Stopped()
        try:
            if earlier:
                raise earlier.pop()
            self._emit(notification)
        except EmitError as exc:
            attempts, age = self._spool.note_failure(seq, str(exc), self.conduit)
            if self._max_age and age >= self._max_age:
                raise _Poison(f"undelivered after {age:.0f} s ({attempts} attempts): "
                              f"{exc}") from exc
            if attempts % self._probe_after == 0 and self._next_goes_through(seq):
                raise _Poison(f"failed {attempts} times while the next record was "
                              f"delivered: {exc}") from exc
            raise

    def _emit(self, notification: Notification) -> None:
        try:
            self._emitter.emit(notification)
        except EmitError:
            raise
        except Exception as exc:
            LOG.error("sender %s: emitter raised %s instead of EmitError for %s",
                      self.conduit, type(exc).__name__, notification.message_id, exc_info=True)
            raise EmitError(f"{type(exc).__name__}: {exc}") from exc

    def _next_goes_through(self, seq: int) -> bool:
        """Try the record behind seq once: delivered (and confirmed) means the conduit works."""
        behind = [(s, n) for s, n in self._spool.pending(self.conduit, 2, self._build) if s != seq]
        if not behind:
            return False  # nothing is held up behind this record: keep trying it
        next_seq, notification = behind[0]
        try:
            self._emit(notification)
        except EmitError:
            return False
        self._confirm(next_seq)
        return True

    def _confirm(self, seq: int) -> None:
        self._confirm_many([seq])

    def _confirm_many(self, seqs: list[int]) -> None:
        self._spool.confirm_many(seqs, self.conduit)
        self._delivered_since_drained += len(seqs)
        self._counters.incr(f"sender.{self.conduit}.sent", len(seqs))
        self._counters.incr(f"sender.{self.conduit}.retired_batches")
        self._notify_progress()

    def _reject(self, seq: int, notification: Notification, reason: str) -> None:
        self._spool.reject(seq, self.conduit, reason)
        self._counters.incr(f"sender.{self.conduit}.rejected")
        LOG.error("sender %s: gave up on %s (%s): moved to the spool's rejects table",
                  self.conduit, notification.message_id, reason)
        self._notify_progress()

    def _before_sleep(self, state: tenacity.RetryCallState) -> None:
        self._counters.incr(f"sender.{self.conduit}.retries")
        notification = state.args[1]
        LOG.warning("sender %s: %s not delivered (attempt %d: %s); retrying in %.2f s",
                    self.conduit, notification.message_id, state.attempt_number,
                    state.outcome.exception(), state.next_action.sleep)

    def _notify_progress(self) -> None:
        with self._progress:
            self._progress.notify_all()
