"""Captures nova waits for come first: the agent's publishing waits while one runs (bounded),
and until nova has sent its own announcement of it.

A capture nova waits for (its notifier driver's, through the hook) is mostly libvirt's reply
and an fsync. What shares the agent and the host's cores with it is publishing: senders
building and publishing earlier deletes and exists, the publication thread's swaps. Traced
on a quiet host (hook_latency.py): while the hook's read ran, a sender was building in 11 of
20 deletes and publishing in 16, and the agent's read took 3.4 ms longer than the same read
alone. So a sender and the publication thread wait, before each batch, until no such capture
is in flight, for at most MAX_WAIT seconds: never starved, at worst one capture later. A
capture nobody waits for (the bus's) does not hold them.

Nova is not done when the agent answers: with the answer, the same notify() goes on to
messagingv2, which publishes nova's own copy of the announcement. The agent building and
publishing the capture's delete.samples at that moment slowed nova's publish (measured with
hook_latency.py, doc/benchmarks.md "Issue 19, session 8"). So after the answer publishing
keeps yielding until that copy comes back to the agent from the bus (``heard_on_bus``: nova
has published it), for at most HOLD seconds (no bus listener, a bus down): delete.samples
leave a millisecond or two later, nova's delete goes on sooner.

Counted (Counters, exported as metrics): `nova_waiting.holds` (answers publishing yielded
after), `nova_waiting.holds_expired` (of those, ended at HOLD: nova's copy never came back, so
each hooked delete.samples left HOLD later -- an agent not hearing the topic nova publishes
on), `nova_waiting.waits_timed_out` (a batch went on at MAX_WAIT while captures still ran).
"""
from __future__ import annotations

import contextlib
import threading
import time
from typing import Callable, Iterator

from lifecycle_stats.counters import Counters

MAX_WAIT = 0.05  # seconds; a capture takes ~10 ms, and nova gives up after 0.5 s
HOLD = 0.02  # seconds publishing yields after an answer, unless nova's copy comes back first


class NovaWaiting:
    def __init__(self, hold: float = HOLD, clock: Callable[[], float] = time.monotonic,
                 counters: Counters | None = None) -> None:
        self._counters = counters if counters is not None else Counters()
        self._cond = threading.Condition()
        self._captures = 0
        self._hold, self._clock = hold, clock
        self._holds: dict[str, float] = {}  # instance -> until when publishing yields
        self._heard: dict[str, float] = {}  # instance -> when nova's copy came back meanwhile

    @contextlib.contextmanager
    def capture(self, instance_id: str | None = None) -> Iterator[None]:
        """Around a capture nova waits for, until nova has its answer; then publishing
        yields until nova's copy of ``instance_id``'s announcement is back (or HOLD)."""
        with self._cond:
            self._captures += 1
        try:
            yield
        finally:
            with self._cond:
                self._captures -= 1
                now = self._drop_expired()
                heard = self._heard.pop(instance_id, None)
                if instance_id is not None and self._hold > 0 and (
                        heard is None or heard < now - self._hold):
                    self._holds[instance_id] = now + self._hold
                    self._counters.incr("nova_waiting.holds")
                self._cond.notify_all()

    def heard_on_bus(self, instance_id: str) -> None:
        """Nova's own announcement of ``instance_id`` came back from the bus: nova has
        published it, so publishing need not yield for it any longer."""
        with self._cond:
            now = self._clock()
            if self._holds.pop(instance_id, None) is not None:
                self._cond.notify_all()
            elif self._captures:  # the driver ran after messagingv2: back before the answer
                self._heard = {i: t for i, t in self._heard.items() if t >= now - self._hold}
                self._heard[instance_id] = now

    def wait_clear(self, timeout: float = MAX_WAIT) -> bool:
        """Before a batch of publishing: True once no capture nova waits for is running and
        no answer is held for, False when timeout passed first (the batch goes on anyway)."""
        with self._cond:
            end = self._clock() + timeout
            while True:
                now = self._drop_expired()
                if not self._captures and not self._holds:
                    return True
                if now >= end:
                    self._counters.incr("nova_waiting.waits_timed_out")
                    return False
                self._cond.wait(min([end, *self._holds.values()]) - now)

    def _drop_expired(self) -> float:
        """Forget the holds whose time is up (under the lock); now."""
        now = self._clock()
        kept = {i: until for i, until in self._holds.items() if until > now}
        if len(kept) < len(self._holds):
            self._counters.incr("nova_waiting.holds_expired", len(self._holds) - len(kept))
        self._holds = kept
        return now
