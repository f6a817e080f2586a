"""What the latency targets of issue 19 are ratios of, measured like the path they measure
(doc/benchmarks.md, "Issue 19, session 8"): one read of a guest as the capture reads it, a
broker hop, and the end-to-end floor run as a pipeline after each delete. The old
back-to-back baselines are kept for comparison (IdleGuestReads.back_to_back_ms,
HopProbe.back_to_back).
"""
from __future__ import annotations

import threading
import time
import uuid
from typing import TYPE_CHECKING

from benchmarks._common import ms_since
from tests.integration import harness

if TYPE_CHECKING:
    from benchmarks.e2e_latency import Bench


class IdleGuestReads:
    """The baseline of the latency targets, read as the capture reads: one Inspector.read of a
    guest nobody has read since it was made -- as idle as the guests being deleted, made in the
    same batch -- one guest per delete, taken between the deletes after a quiet pause.

    A paused guest's first read after idling costs ~2 ms more than a read of a guest read a
    moment before (doc/benchmarks.md, "Issue 19, session 8"); the capture's read is such a
    first read, and back-to-back reads of fresh guests (back_to_back_ms) never see that
    cost."""

    QUIET = 0.05  # seconds before and after each read: the agent idle, libvirtd settled

    def __init__(self, uri: str, made: list) -> None:
        from lifecycle_stats.reading.hypervisor import Hypervisor
        from lifecycle_stats.reading.inspector import Inspector

        self._guests = [guest.instance_id for guest, _ in made]
        self._hv = Hypervisor(uri)
        self._inspector = Inspector(self._hv)
        self._hv.connection()  # opened now: a read must not time a connect
        self.ms: list[float] = []

    def read_next(self, quiet: bool = True) -> float:
        """Read the next guest (between quiet pauses, unless the caller keeps them); ms."""
        if len(self.ms) >= len(self._guests):
            raise RuntimeError(f"only {len(self._guests)} guests kept for the baseline")
        time.sleep(self.QUIET if quiet else 0)
        started = time.perf_counter()
        self._inspector.read(self._guests[len(self.ms)])
        self.ms.append(ms_since(started))
        time.sleep(self.QUIET if quiet else 0)
        return self.ms[-1]

    def back_to_back_ms(self, reads: int = 30) -> list[float]:
        """Sessions 1-7's baseline on the same guests, after their first reads: round-robin
        reads, one right after the other."""
        out = []
        for i in range(reads):
            started = time.perf_counter()
            self._inspector.read(self._guests[i % len(self._guests)])
            out.append(ms_since(started))
        return out

    def close(self) -> None:
        self._hv.close()


class HopProbe:
    """publish → consumed of one notification on the run's broker (a queue of its own), in
    this process: a small probe, or ``payload`` (what a delete.samples carries)."""

    def __init__(self, bench: Bench, payload: dict | None = None) -> None:
        import oslo_messaging

        self._topic = f"{bench.names.samples_topic}-hop-{uuid.uuid4().hex[:8]}"
        self._rabbit_url = bench.rabbit_url
        self._payload = payload
        self._got, self._cond = {}, threading.Condition()  # probe number → when consumed
        self._n = 0
        got, cond = self._got, self._cond

        class Endpoint:
            def info(self, ctxt, publisher_id, event_type, payload, metadata):
                with cond:
                    got[payload["n"]] = time.perf_counter()
                    cond.notify_all()

        target = oslo_messaging.Target(exchange=bench.names.control_exchange, topic=self._topic)
        self._listener = oslo_messaging.get_notification_listener(
            bench.transport, [target], [Endpoint()], executor="threading")
        self._listener.start()
        self._notifier = oslo_messaging.Notifier(bench.transport, publisher_id="hop",
                                                 driver="messagingv2", topics=[self._topic])
        # until the listener's queue is bound a probe is dropped: warm up until one arrives
        if next((1 for _ in range(40) if self.one(0.5) is not None), None) is None:
            self.close()
            raise RuntimeError(f"no probe came back on {self._topic} within 20 s")

    def one(self, timeout: float = 10.0) -> float | None:
        self._n += 1
        n = self._n
        started = time.perf_counter()
        self._notifier.info({}, "hop.probe",
                            {"n": n} if self._payload is None else {**self._payload, "n": n})
        with self._cond:
            self._cond.wait_for(lambda: n in self._got, timeout)
        return (self._got[n] - started) * 1e3 if n in self._got else None

    def back_to_back(self, hops: int = 30) -> list[float]:
        return [ms for ms in (self.one() for _ in range(hops)) if ms is not None]

    def close(self) -> None:
        self._listener.stop()
        self._listener.wait()
        harness.delete_queues("amqp://" + self._rabbit_url.split("://", 1)[1],
                              [f"{self._topic}.info"])


def broker_hop_ms(bench: Bench, hops: int = 30, payload: dict | None = None) -> list[float]:
    """Back-to-back hops (HopProbe) on a queue of their own."""
    probe = HopProbe(bench, payload)
    try:
        return probe.back_to_back(hops)
    finally:
        probe.close()


class FloorRuns:
    """The floor as a pipeline, measured after each delete in the delete's conditions: after a
    quiet pause, a probe's hop (nova's delete.start reaching an idle agent), then at once one
    read of the deleted guest's twin (made with it, not read since), then at once a second hop
    (the agent publishing the moment it has read). A hop after idling costs ~1 ms more than
    back-to-back hops, a guest's first read ~1-2 ms more than back-to-back reads
    (doc/benchmarks.md, "Issue 19, session 8"); the old floor, from back-to-back hops and
    reads, is printed beside it."""

    def __init__(self, probe: HopProbe, twins: IdleGuestReads) -> None:
        self._probe, self._twins = probe, twins
        self.runs: list[tuple[float, float, float]] = []  # (hop, read, hop) ms

    def run_one(self) -> None:
        time.sleep(IdleGuestReads.QUIET)
        first = self._probe.one()
        read = self._twins.read_next(quiet=False)
        second = self._probe.one()
        if first is not None and second is not None:
            self.runs.append((first, read, second))
        time.sleep(IdleGuestReads.QUIET)

    def totals(self) -> list[float]:
        return [sum(run) for run in self.runs]
