"""Long-lived threads: how one is doing, in the words the status file uses, the loop the
senders and the publication thread share (sleep until woken or stopped), and the periodic
threads' wait (the poller's, the status writer's), whose interval a reload may change."""
from __future__ import annotations

import threading
import time
from typing import Callable

NOT_STARTED = "not started"
ALIVE = "alive"
STOPPED = "stopped"
DEAD = "dead"  # ended although nobody stopped it: a bug the status command must show


def state(thread: threading.Thread | None, stopping: bool) -> str:
    if thread is None:
        return NOT_STARTED
    if thread.is_alive():
        return ALIVE
    return STOPPED if stopping else DEAD


class WakeableLoop:
    """One daemon thread that waits on `woken` between rounds and ends once `stopping` is set
    (a stop also wakes it). Its owner's target reads both events."""

    def __init__(self) -> None:
        self.stopping = threading.Event()
        self.woken = threading.Event()
        self.thread: threading.Thread | None = None

    def start(self, target: Callable[[], None], name: str) -> None:
        if self.thread is not None:
            raise RuntimeError(f"{name} already started")
        self.thread = threading.Thread(target=target, name=name, daemon=True)
        self.thread.start()

    def wake(self) -> None:
        self.woken.set()

    @property
    def state(self) -> str:
        return state(self.thread, self.stopping.is_set())

    def stop(self, timeout: float | None) -> bool:
        """Ask the thread to end and wait (bounded); True when it has ended or never started."""
        self.stopping.set()
        self.woken.set()
        if self.thread is None:
            return True
        self.thread.join(timeout)
        return not self.thread.is_alive()


def wait_interval(interval: Callable[[], float], began: float, stopping: threading.Event,
                  changed: threading.Event) -> None:
    """Return interval() seconds after `began` (time.monotonic()), or once stopping is set.
    Setting `changed` makes a new interval count at once, still from `began` (a reload that
    shortens a 60 s poll interval must not wait out the old one first)."""
    while not stopping.is_set():
        left = began + interval() - time.monotonic()
        if left <= 0:
            return
        changed.wait(left)
        changed.clear()
