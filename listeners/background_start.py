"""Start a server whose start() may block for as long as its peer is unreachable, on a daemon
thread, so nothing else waits for it.

oslo.messaging's rabbit driver retries a listener's first connection forever, inside the
server's start(); whatever else that call raises is retried here with tenacity. cancel() never
waits for a start in progress: a start that completes after it undoes itself.
"""
from __future__ import annotations

import logging
import threading
from typing import Callable

import tenacity

from lifecycle_stats import threads
from lifecycle_stats.counters import Counters

LOG = logging.getLogger(__name__)

CONNECTING = "connecting"


class BackgroundStart:
    def __init__(self, start: Callable[[], None], stop: Callable[[], None], *, name: str,
                 counters: Counters, error_counter: str, retry_max_wait: float = 30.0,
                 on_started: Callable[[], None] = lambda: None) -> None:
        self._start, self._stop, self._on_started = start, stop, on_started
        self._name = name
        self._counters, self._error_counter = counters, error_counter
        self._retry_max_wait = retry_max_wait
        self._lock = threading.Lock()  # started vs cancel()
        self._cancelled = threading.Event()
        self._thread: threading.Thread | None = None
        self.started = False

    @property
    def state(self) -> str:
        """"alive" once started, "connecting" while trying, else threads.state's words."""
        if self.started:
            return threads.ALIVE
        if self._cancelled.is_set():
            return threads.STOPPED
        if self.connecting:
            return CONNECTING
        return threads.state(self._thread, stopping=False)

    @property
    def connecting(self) -> bool:
        """Still trying (a start may be blocked inside the server)."""
        return (self._thread is not None and self._thread.is_alive() and not self.started
                and not self._cancelled.is_set())

    def begin(self, wait: float) -> bool:
        """Start trying; returns after at most `wait` seconds, True if started by then."""
        if self._thread is not None:
            raise RuntimeError(f"{self._name} already started")
        self._thread = threading.Thread(target=self._run, name=f"start-{self._name}",
                                        daemon=True)
        self._thread.start()
        self._thread.join(wait)
        return self.started

    def cancel(self) -> bool:
        """Stop trying. True if it had started: the caller stops what runs."""
        with self._lock:
            self._cancelled.set()
            started, self.started = self.started, False
            return started

    def _run(self) -> None:
        retrying = tenacity.Retrying(
            wait=tenacity.wait_exponential(multiplier=0.5, max=self._retry_max_wait),
            stop=tenacity.stop_when_event_set(self._cancelled), sleep=self._cancelled.wait,
            retry=tenacity.retry_if_exception_type(Exception), before_sleep=self._log_retry)
        try:
            retrying(self._attempt)
        except tenacity.RetryError:  # cancelled before it could start
            pass

    def _attempt(self) -> None:
        if self._cancelled.is_set():
            return
        self._start()  # may block for as long as the peer is unreachable
        with self._lock:
            cancelled = self._cancelled.is_set()
            self.started = not cancelled
        if cancelled:
            self._stop()
        else:
            self._on_started()

    def _log_retry(self, state: tenacity.RetryCallState) -> None:
        LOG.warning("%s could not start (attempt %d: %s); retrying in %.1f s", self._name,
                    state.attempt_number, state.outcome.exception(), state.next_action.sleep)
        self._counters.incr(self._error_counter)
