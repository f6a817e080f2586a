"""Flush latency: delete trigger received → final samples built and durably spooled.

Real QEMU guests (most paused, a few running) and an in-process core built as
lifecycle_stats.agent.Agent builds it, through capture.pipeline.Pipeline: a DomainRegistry,
one Hypervisor (libvirt connection) per reader, the device memory, a Spool and a usage
ledger on disk. Timed is Pipeline.announced(trigger) for a deletion: the read, the
delete.samples spooled, the ledger closing the instance and its final exists spooled (what
nova waits for on the hook). Every scenario gets a fresh spool and ledger, so dedupe never
short-circuits a flush. Scenarios, interleaved in rotating order within each round:

  (a) idle      one delete at a time, nothing else running (the baseline)
  (b) poll      one delete at a time while the poller's bulk poll of every guest runs in a
                loop on the poller's connection (the design point)
  (c) burst     one delete per guest, all at once (threads released by a barrier), while
                the bulk poll loop runs; per-flush latency and the burst's wall time
  (d) shared    as (b), but the flush reads through the poller's Hypervisor/connection: the
                counterfactual that shows what the separate connection buys

    .venv/bin/python benchmarks/flush_latency.py [--guests 20] [--running 3] [--rounds 10]
"""
from __future__ import annotations

import argparse
import contextlib
import os
import random
import statistics
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from benchmarks import _common  # noqa: E402
from lifecycle_stats import agent, counters  # noqa: E402
from lifecycle_stats.capture.pipeline import Pipeline, Readers, Settings  # noqa: E402
from lifecycle_stats.interfaces import Outcome  # noqa: E402
from lifecycle_stats.publishing import spool  # noqa: E402
from lifecycle_stats.reading import processes, registry  # noqa: E402
from lifecycle_stats.reading.hypervisor import Hypervisor  # noqa: E402
from lifecycle_stats.reading.inspector import Inspector  # noqa: E402
from lifecycle_stats.usage import periods, store as usage_store  # noqa: E402
from lifecycle_stats.usage.ledger import UsageLedger  # noqa: E402

HOST = "bench-host"
SCENARIOS = ("a idle", "b poll", "c burst", "d shared")


class TimedSpool:
    """The Spool, with the time of each put() recorded (the fsynced commit inside a flush)."""

    def __init__(self, real: spool.Spool, put_ms: list[float]):
        self._real = real
        self._put_ms = put_ms

    def seen(self, message_id: str) -> bool:
        return self._real.seen(message_id)

    def last_capture(self, instance_id: str) -> str | None:
        return self._real.last_capture(instance_id)

    def put_flagged(self, flagged, rejected, reason: str) -> bool:
        return self._real.put_flagged(flagged, rejected, reason)

    def put(self, notification, tier: str) -> bool:
        start = time.perf_counter()
        try:
            return self._real.put(notification, tier)
        finally:
            self._put_ms.append(_common.ms_since(start))

    def put_capture(self, message_id: str, instance_id: str, body: bytes) -> bool:
        start = time.perf_counter()
        try:
            return self._real.put_capture(message_id, instance_id, body)
        finally:
            self._put_ms.append(_common.ms_since(start))

    # what the publication thread uses (not timed: nova does not wait for it)
    def __getattr__(self, name: str):
        return getattr(self._real, name)


class Core:
    """The agent's core (no bus, no senders): its connections and registry, and a fresh
    Pipeline over a fresh spool and ledger per scenario (fresh())."""

    def __init__(self, uri: str, directory: str):
        self.directory = directory
        self.counters = counters.Counters()
        self.flush_hv, self.poll_hv, self.meta_hv = Hypervisor(uri), Hypervisor(uri), Hypervisor(uri)
        self.registry = registry.DomainRegistry(self.meta_hv, self.counters)
        memory = processes.DeviceMemory()  # shared, as the agent's
        self.readers = Readers(
            announced=Inspector(self.flush_hv, counters=self.counters, memory=memory),
            poll=Inspector(self.poll_hv, counters=self.counters, memory=memory),
            events=Inspector(self.meta_hv, counters=self.counters, memory=memory))
        self.put_ms: list[float] = []
        self._fresh = 0
        self.registry.sync()

    @contextlib.contextmanager
    def fresh(self, *, shared: bool = False):
        """A Pipeline over a fresh spool and ledger; shared=True reads deletions through the
        poller's connection (the counterfactual)."""
        self._fresh += 1
        store = spool.Spool(os.path.join(self.directory, f"spool-{self._fresh}.sqlite"),
                            conduits=["bench"], counters=self.counters)
        ledger_dir = os.path.join(self.directory, f"ledger-{self._fresh}")
        os.makedirs(ledger_dir)
        ledger = UsageLedger(usage_store.ledger_path(ledger_dir), periods.parse("hour"),
                             counters=self.counters)
        readers = self.readers
        if shared:
            readers = Readers(announced=readers.poll, poll=readers.poll, events=readers.events)
        try:
            yield Pipeline(readers=readers, registry=self.registry,
                           spool=TimedSpool(store, self.put_ms), ledger=ledger,
                           settings=Settings.for_host(HOST), counters=self.counters)
        finally:
            store.close()
            ledger.close()

    def close(self) -> None:
        for hv in (self.flush_hv, self.poll_hv, self.meta_hv):
            hv.close()


class BulkPollLoop:
    """Pipeline.poll() back to back on the poller's connection, while the block runs."""

    def __init__(self, core: Pipeline, poll_ms: list[float]):
        self._core = core
        self._poll_ms = poll_ms
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="bulk-poll-loop", daemon=True)

    def __enter__(self) -> "BulkPollLoop":
        self._thread.start()
        time.sleep(0.02)  # the first bulk call is under way
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.is_set():
            start = time.perf_counter()
            self._core.poll()
            self._poll_ms.append(_common.ms_since(start))


class Results:
    def __init__(self) -> None:
        self.flush_ms = {name: [] for name in SCENARIOS}
        self.outcomes = {name: {} for name in SCENARIOS}
        self.burst_wall_ms: list[float] = []
        self.idle_poll_ms: list[float] = []
        self.loaded_poll_ms: list[float] = []

    def record(self, scenario: str, ms: float, outcome: Outcome) -> None:
        self.flush_ms[scenario].append(ms)
        counts = self.outcomes[scenario]
        counts[outcome.value] = counts.get(outcome.value, 0) + 1


def one_at_a_time(core: Pipeline, made: list, results: Results, scenario: str, *,
                  jitter_s: float = 0.0) -> None:
    for guest, _ in random.sample(made, len(made)):
        trigger = _common.trigger(guest, HOST)
        start = time.perf_counter()
        outcome = core.announced(trigger)
        results.record(scenario, _common.ms_since(start), outcome)
        if jitter_s:
            time.sleep(random.uniform(0, jitter_s))  # land at varying points of a poll


def burst(core: Pipeline, made: list, results: Results) -> None:
    barrier = threading.Barrier(len(made))
    spans: list[tuple[float, float]] = []

    def delete(guest) -> None:
        trigger = _common.trigger(guest, HOST)
        barrier.wait()
        start = time.perf_counter()
        outcome = core.announced(trigger)
        end = time.perf_counter()
        spans.append((start, end))
        results.record("c burst", (end - start) * 1e3, outcome)

    threads = [threading.Thread(target=delete, args=(guest,)) for guest, _ in made]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    results.burst_wall_ms.append((max(e for _, e in spans) - min(s for s, _ in spans)) * 1e3)


def run_round(core: Core, made: list, results: Results, n: int, jitter_s: float) -> None:
    order = SCENARIOS[n % 4:] + SCENARIOS[:n % 4]
    for name in order:
        with core.fresh(shared=name == "d shared") as pipe:
            if name == "a idle":
                one_at_a_time(pipe, made, results, name)
                for _ in range(2):
                    results.idle_poll_ms.append(_timed(pipe.poll))
                continue
            with BulkPollLoop(pipe, results.loaded_poll_ms):
                if name == "c burst":
                    burst(pipe, made, results)
                else:
                    one_at_a_time(pipe, made, results, name, jitter_s=jitter_s)


def report(results: Results, guests: int, rounds: int, put_ms: list[float]) -> None:
    base = _common.summary(results.flush_ms["a idle"])
    rows = []
    for name in SCENARIOS:
        s = _common.summary(results.flush_ms[name])
        outcomes = " ".join(f"{k}={v}" for k, v in sorted(results.outcomes[name].items()))
        rows.append([name, s["n"], s["p50"], s["p99"], s["max"],
                     f"{s['p50'] / base['p50']:.2f}x", f"{s['p99'] / base['p99']:.2f}x",
                     outcomes])
    print(f"\nflush latency (Pipeline.announced of a deletion, ms), {guests} guests, "
          f"{rounds} rounds")
    print(_common.table(["scenario", "n", "p50", "p99", "max", "p50/a", "p99/a", "outcomes"],
                        rows))
    b, d = (_common.summary(results.flush_ms[k]) for k in ("b poll", "d shared"))
    print(f"separate vs shared connection under the bulk poll (b/d): "
          f"p50 {b['p50'] / d['p50']:.2f}x, p99 {b['p99'] / d['p99']:.2f}x")
    w = _common.summary(results.burst_wall_ms)
    print(f"burst of {guests} concurrent deletes: wall p50 {w['p50']:.1f} ms, "
          f"max {w['max']:.1f} ms ({w['n']} bursts)")
    s = _common.summary(put_ms)
    print(f"spool puts inside the flushes (fsynced group commits; the capture and the final "
          f"exists): "
          f"p50 {s['p50']:.1f} ms, "
          f"p99 {s['p99']:.1f} ms")
    for label, values in (("idle", results.idle_poll_ms),
                          ("during (b)-(d)", results.loaded_poll_ms)):
        print(f"bulk poll of {guests} guests, {label}: median "
              f"{statistics.median(values):.1f} ms, p99 {_common.percentile(values, 99):.1f} ms"
              f" (n={len(values)})")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--guests", type=int, default=20)
    parser.add_argument("--running", type=int, default=3, help="of --guests, how many run")
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--uri", default="qemu:///system")
    args = parser.parse_args()
    if not 0 <= args.running <= args.guests:
        parser.error("--running must be between 0 and --guests")
    _common.exit_on_sigterm()
    agent.quiet_libvirt_stderr()
    with _common.workdir("lifecycle-stats-flush-") as directory, _common.guests(
            args.uri, directory, paused=args.guests - args.running,
            running=args.running) as (_, made):
        core = Core(args.uri, directory)
        try:
            with core.fresh() as warm:  # warm the connections
                warm.poll()
                one_at_a_time(warm, made, Results(), "a idle")
                poll_ms = statistics.median([_timed(warm.poll) for _ in range(3)])
            results = Results()
            core.put_ms.clear()
            for n in range(args.rounds):
                run_round(core, made, results, n, jitter_s=poll_ms / 1e3)
            report(results, len(made), args.rounds, core.put_ms)
        finally:
            core.close()
    return 0


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return _common.ms_since(start)


if __name__ == "__main__":
    sys.exit(main())
