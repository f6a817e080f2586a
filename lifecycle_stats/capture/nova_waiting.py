"""Captures nova waits for come first: the agent's publishing waits while one runs (bounded).

A capture nova waits for (its notifier driver's, through the hook) is mostly libvirt's reply
and an fsync. What shares the agent and the host's two cores with it is publishing: senders
building and publishing earlier deletes and exists, the publication thread's swaps. Traced
on a quiet host (hook_latency.py): while the hook's read ran, a sender was building in 11 of
20 deletes and publishing in 16, and the agent's read took 3.4 ms longer than the same read
alone. So a sender and the publication thread wait, before each batch, until no such capture
is in flight, for at most MAX_WAIT seconds: never starved, at worst one capture later. A
capture nobody waits for (the bus's) does not hold them.
"""
from __future__ import annotations

import contextlib
import threading
from typing import Iterator

MAX_WAIT = 0.05  # seconds; a capture takes ~10 ms, and nova gives up after 0.5 s


class NovaWaiting:
    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._captures = 0

    @contextlib.contextmanager
    def capture(self) -> Iterator[None]:
        """Around a capture nova waits for, until nova has its answer."""
        with self._cond:
            self._captures += 1
        try:
            yield
        finally:
            with self._cond:
                self._captures -= 1
                if not self._captures:
                    self._cond.notify_all()

    def wait_clear(self, timeout: float = MAX_WAIT) -> bool:
        """Before a batch of publishing: True once no capture nova waits for is running,
        False when timeout passed first (the batch goes on anyway)."""
        with self._cond:
            return self._cond.wait_for(lambda: not self._captures, timeout)
