"""One thread per conduit draining the spool in order: emit, then confirm.

A record that fails is retried (exponential backoff) before any later record is tried, so a
conduit sees notifications in the order they were captured. Stopping wakes a backoff sleep at
once; a record being sent when stop() is called was either confirmed or stays spooled for the
next start.

Poison records: a conduit that is down fails every record, a poison record fails alone, and
both raise EmitError. So after every `poison_probe_attempts` failures of one record (counted in
the spool, across restarts) the record behind it is tried once: if that one goes through, the
failing record is poison and moves to the spool's rejects (ERROR log, counter
`sender.<conduit>.rejected`); the conduit goes on. A broker outage never rejects anything this
way. `max_age_seconds` (off by default) also rejects a record still undelivered at that age.
"""
from __future__ import annotations

import logging
import threading
from typing import Callable

import tenacity

from lifecycle_stats import threads
from lifecycle_stats.counters import Counters
from lifecycle_stats.exceptions import EmitError
from lifecycle_stats.interfaces import Conduit
from lifecycle_stats.records import Notification
from lifecycle_stats.publishing.spool import Spool

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
                 max_age_seconds: float = 0.0):
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
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._progress = threading.Condition()
        self._thread: threading.Thread | None = None
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
        if self._thread is not None:
            raise RuntimeError(f"sender {self.conduit} already started")
        self._thread = threading.Thread(target=self._run, name=f"sender-{self.conduit}",
                                        daemon=True)
        self._thread.start()

    @property
    def thread_state(self) -> str:
        return threads.state(self._thread, self._stop.is_set())

    def wake(self) -> None:
        """New records were put: look now instead of at the next poll."""
        self._wake.set()

    def stop(self, timeout: float | None = None) -> bool:
        """Stop after the current attempt; True when the thread has ended."""
        self._stop.set()
        self._wake.set()
        if self._thread is None:
            return True
        self._thread.join(timeout)
        return not self._thread.is_alive()

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
                busy = self._send_batch()
            except Exception:  # the spool itself failed: keep the thread, try again later
                LOG.exception("sender %s: spool error; retrying in %.1f s", self.conduit,
                              self._poll)
                self._counters.incr(f"sender.{self.conduit}.errors")
                busy = False
            if not busy:
                self._notify_progress()
                self._wake.wait(self._poll)

    def _send_batch(self) -> bool:
        """Send what is pending; True if there may be more to do right away."""
        items = self._spool.pending(self.conduit, self._batch)
        for seq, notification in items:
            try:
                delivered = self._send(seq, notification)
            except _Poison as exc:
                self._reject(seq, notification, str(exc))
                return True  # a probe may have delivered the next record: re-read the spool
            if not delivered:
                return False
            self._confirm(seq)
        return bool(items)

    def _send(self, seq: int, notification: Notification) -> bool:
        """Emit with retries until confirmed (True) or stopped (False); _Poison: give up."""
        try:
            self._retrying(self._attempt, seq, notification)
        except (_Stopped, tenacity.RetryError):
            return False
        return True

    def _attempt(self, seq: int, notification: Notification) -> None:
        if self._stop.is_set():
            raise _Stopped()
        try:
            self._emit(notification)
        except EmitError as exc:
            attempts, age = self._spool.note_failure(seq, str(exc))
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
        behind = [(s, n) for s, n in self._spool.pending(self.conduit, 2) if s != seq]
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
        self._spool.confirm(seq, self.conduit)
        self._counters.incr(f"sender.{self.conduit}.sent")
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
