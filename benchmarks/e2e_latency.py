"""End to end: nova's delete.start on RabbitMQ → delete.samples consumed by billing.

The real `lifecycle-stats-agent` process (tests/integration/harness.AgentProcess) on the real
broker and libvirtd, real QEMU guests, nova's legacy delete.start published as nova-compute
publishes it, and a billing consumer (harness.BillingConsumer) reading delete.samples.

  (i)  latency: delete.start published → delete.samples consumed, one delete at a time, for
       guests that stay alive meanwhile (some running, most paused); split at the capture's
       `captured_at` into publish → read and read → consumed (same clock, same machine).
  (ii) the race: delete.start published, the domain hard-stopped (virDomainDestroy, then
       undefine, as nova's driver does) Δ ms later; per Δ the share of `final` captures.
       Sequential by default: one guest at a time, Δ values interleaved, so each race runs
       alone on the machine. --concurrent runs each Δ's guests at once (threads released
       by a barrier): the agent then flushes several deletes together, which changes the race.

Issue 19's target for (i), against a floor measured in the same run: 2 broker hops (a
notification published and consumed on the same broker, probe topic of the run's own) plus
one libvirt read (Inspector.read of one guest), run as a pipeline after each delete in the
delete's conditions (_baselines.FloorRuns: after a quiet pause a hop, at once the first read
of the deleted guest's twin -- made with it, not read since -- then at once a second hop):
p50 <= 1.3 x floor, p99 <= 2.5 x floor. The old floor (back-to-back hops and reads) is
printed beside it.
The floor's hops are timed on open broker connections; so is (i): one delete before it, its
figure printed and not counted, is the agent's first publish since its start (the
publisher's connection to the broker is opened then).

    .venv/bin/python benchmarks/e2e_latency.py [--deletes 30] [--deltas 0,20,100]
                                               [--guests-per-delta 10] [--running 5]
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import pathlib
import random
import statistics
import sys
import threading
import time
import uuid
import warnings

import kombu.exceptions
import tenacity

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from benchmarks import _baselines, _common  # noqa: E402
from lifecycle_stats import agent  # noqa: E402
from tests.integration import harness  # noqa: E402

# oslo.messaging imports eventlet, which warns on import; the agent runs on native threads
warnings.filterwarnings("ignore", message=r"\s*Eventlet is deprecated")
RABBIT_URL = os.environ.get("LIFECYCLE_STATS_RABBIT_URL",
                            "rabbit://guest:guest@127.0.0.1:5672/lifecycle-stats-test")
BROKER_DOWN = (OSError, kombu.exceptions.OperationalError)
KINDS = ("final", "last_known", "unavailable")
WAIT_S = 30.0


class Bench:
    """The agent, nova and billing on one broker, with the run's own exchange/topic names."""

    def __init__(self, directory: str, uri: str, poll_interval: float,
                 extra: dict[str, dict[str, str]] | None = None,
                 event_types: tuple[str, ...] | None = ("compute.instance.delete.samples",),
                 executable: pathlib.Path = harness.AGENT):
        import oslo_messaging
        from oslo_config import cfg

        self.names = harness.BusNames()
        self.rabbit_url = RABBIT_URL
        self.host = f"bench-{uuid.uuid4().hex[:8]}"
        conf = cfg.ConfigOpts()
        conf([], project="lifecycle-stats-bench", default_config_files=[])
        self.transport = oslo_messaging.get_notification_transport(conf, url=RABBIT_URL)
        self.agent = harness.AgentProcess(
            pathlib.Path(directory), host=self.host, transport_url=RABBIT_URL,
            names=self.names, libvirt_uri=uri, poll_interval=poll_interval,
            # the run's own hook socket: the default path may be served by another agent
            extra={"DEFAULT": {"debug": "false"},
                   "hook": {"socket_path": os.path.join(directory, "hook.sock")},
                   **(extra or {})},
            executable=executable)
        self.nova = harness.Nova(self.transport, self.names)
        self.billing: harness.BillingConsumer | None = None
        self._event_types = event_types
        self._lock = threading.Lock()

    def start(self) -> None:
        self.billing = harness.BillingConsumer(self.transport, self.names,
                                               event_types=self._event_types)
        self.agent.start()
        # every guest has a cached reading (what a `last_known` capture would report)
        self.agent.wait_for(lambda s: s.get("counters", {}).get("poller.polls", 0) >= 1,
                            WAIT_S, "first bulk poll")

    def delete_start(self, guest) -> tuple[float, float]:
        """Publish nova's delete.start; (monotonic, wall-clock epoch) just before it."""
        mono, wall = time.monotonic(), time.time()
        self.nova.delete_start(guest, self.host)
        return mono, wall

    def samples_of(self, instance_id: str, timeout: float = WAIT_S) -> dict | None:
        """The delete.samples event billing consumed for instance_id (None: none came)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            events = self.billing.by_instance().get(instance_id)
            if events:
                return events[0]
            time.sleep(0.002)
        return None

    def close(self) -> None:
        try:
            if self.billing is not None:
                self.billing.stop()
        finally:
            try:
                code = self.agent.stop()
                if code != 0:
                    print(f"agent exited with {code}:\n{self.agent.log_tail()}", file=sys.stderr)
            finally:
                self.transport.cleanup()
                self._delete_queues()

    @tenacity.retry(stop=tenacity.stop_after_delay(60), wait=tenacity.wait_fixed(2),
                    retry=tenacity.retry_if_exception_type(BROKER_DOWN), reraise=True)
    def _delete_queues(self) -> None:
        """The run's queues and exchanges; waits out a broker restarted by another run."""
        harness.delete_queues(
            "amqp://" + RABBIT_URL.split("://", 1)[1], self.names.queues([self.host]),
            exchanges=[self.names.nova_exchange, self.names.control_exchange])


def captured_epoch(event: dict) -> float:
    return datetime.datetime.fromisoformat(event["payload"]["capture"]["captured_at"]).timestamp()


# -- (i) latency -------------------------------------------------------------------------------

def first_delete_ms(bench: Bench, guest) -> str:
    mono, _ = bench.delete_start(guest)
    event = bench.samples_of(guest.instance_id)
    return "missing" if event is None else f"{(event['consumed_at'] - mono) * 1e3:.1f}"


def latency(bench: Bench, made: list,
            floor: _baselines.FloorRuns) -> tuple[list[float], dict | None]:
    """e2e ms per delete, and one delete.samples payload as consumed; after each, one run of
    the floor."""
    e2e, to_read, to_billing, kinds, payload = [], [], [], {}, None
    for guest, dom in made:
        mono, wall = bench.delete_start(guest)
        event = bench.samples_of(guest.instance_id)
        floor.run_one()
        if event is None:
            kinds["missing"] = kinds.get("missing", 0) + 1
            continue
        kind = event["payload"]["capture"]["kind"]
        kinds[kind] = kinds.get(kind, 0) + 1
        payload = event["payload"]
        e2e.append((event["consumed_at"] - mono) * 1e3)
        read_ms = (captured_epoch(event) - wall) * 1e3
        to_read.append(read_ms)
        to_billing.append(e2e[-1] - read_ms)
    rows = [[label, *(_common.summary(v)[k] for k in ("n", "p50", "p99", "max"))]
            for label, v in (("published → consumed (e2e)", e2e),
                             ("published → read (captured_at)", to_read),
                             ("read → consumed", to_billing))]
    running = sum(1 for _, dom in made if dom.state()[0] == 1)  # VIR_DOMAIN_RUNNING
    print(f"\n(i) end-to-end latency, {len(made)} deletes one at a time "
          f"({running} running, {len(made) - running} paused guests), ms")
    print(_common.table(["", "n", "p50", "p99", "max"], rows))
    print("captures: " + " ".join(f"{k}={v}" for k, v in sorted(kinds.items())))
    return e2e, payload


def report_floor(e2e: list[float], floor: _baselines.FloorRuns, hops: list[float],
                 back_to_back: list[float], big_hops: list[float], payload_kb: float) -> None:
    got, hop, warm = (_common.summary(v) for v in (e2e, hops, back_to_back))
    old_floor = 2 * hop["p50"] + warm["p50"]
    parts = [_common.summary([run[i] for run in floor.runs])["p50"] for i in range(3)]
    print(f"old floor (sessions 1-7): 2 back-to-back hops (p50 {hop['p50']:.1f} ms) + a "
          f"back-to-back read of the twins (p50 {warm['p50']:.1f} ms) = {old_floor:.1f} ms: e2e "
          f"p50 {got['p50'] / old_floor:.2f}x, p99 {got['p99'] / old_floor:.2f}x that")
    if big_hops:
        print(f"one hop carrying a delete.samples payload ({payload_kb:.0f} KB), billing's "
              f"consumer: p50 {_common.summary(big_hops)['p50']:.1f} ms (the floor's probe: "
              f"{hop['p50']:.1f} ms)")
    floor_ms = _common.summary(floor.totals())["p50"]
    r50, r99 = got["p50"] / floor_ms, got["p99"] / floor_ms
    print(f"floor = a hop after idling (p50 {parts[0]:.1f} ms) + the twin's first read (p50 "
          f"{parts[1]:.1f} ms) + a hop at once (p50 {parts[2]:.1f} ms), run after each delete: "
          f"p50 {floor_ms:.1f} ms (n={len(floor.runs)}); e2e p50 {r50:.2f}x floor (target ≤ "
          f"1.3x: {'met' if r50 <= 1.3 else 'NOT met'}), p99 {r99:.2f}x floor (target ≤ 2.5x: "
          f"{'met' if r99 <= 2.5 else 'NOT met'})")


# -- (ii) final share vs Δ ---------------------------------------------------------------------

def race_one(bench: Bench, guest, dom, delta_ms: float, barrier=None) -> dict:
    if barrier is not None:
        barrier.wait()
    mono, _ = bench.delete_start(guest)
    time.sleep(max(0.0, mono + delta_ms / 1e3 - time.monotonic()))
    actual_ms = (time.monotonic() - mono) * 1e3
    dom.destroy()  # nova's driver.destroy: hard stop, then undefine
    dom.undefine()
    event = bench.samples_of(guest.instance_id)
    capture = event["payload"]["capture"] if event else {"kind": "missing"}
    return {"delta": delta_ms, "actual_ms": actual_ms, "kind": capture["kind"],
            "age_ms": capture.get("age_ms"),
            "e2e_ms": (event["consumed_at"] - mono) * 1e3 if event else None}


def race(bench: Bench, made: list, deltas: list[float], concurrent: bool) -> list[dict]:
    if not concurrent:  # Δ values interleaved, so drift over the run hits every Δ alike
        return [race_one(bench, guest, dom, deltas[i % len(deltas)])
                for i, (guest, dom) in enumerate(made)]
    results: list[dict] = []
    per = len(made) // len(deltas)
    for i, delta in enumerate(deltas):
        group = made[i * per:(i + 1) * per]
        barrier = threading.Barrier(len(group))
        threads = [threading.Thread(
            target=lambda g=g, d=d: results.append(race_one(bench, g, d, delta, barrier)))
            for g, d in group]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    return results


def report_race(results: list[dict], deltas: list[float], concurrent: bool) -> None:
    mode = "concurrent within each Δ" if concurrent else "sequential, one race at a time"
    print(f"\n(ii) capture kind vs Δ (delete.start published → virDomainDestroy), {mode}")
    rows = []
    for delta in deltas:
        group = [r for r in results if r["delta"] == delta]
        counts = {k: sum(1 for r in group if r["kind"] == k) for k in (*KINDS, "missing")}
        ages = [r["age_ms"] for r in group if r["age_ms"] is not None]
        e2e = {k: [r["e2e_ms"] for r in group if r["kind"] == k] for k in ("final", "last_known")}
        rows.append([f"{delta:g}", len(group),
                     statistics.median(r["actual_ms"] for r in group),
                     *(counts[k] for k in (*KINDS, "missing")),
                     f"{100 * counts['final'] / len(group):.0f}%",
                     statistics.median(ages) if ages else "-",
                     *(statistics.median(v) if v else "-" for v in e2e.values())])
    print(_common.table(["Δ ms", "n", "actual Δ med", *KINDS, "missing", "final %",
                         "age med", "e2e med final", "e2e med last_known"], rows))
    print("(ms; age: capture.age_ms of last_known; e2e: delete.start published → consumed)")


def report_counters(bench: Bench) -> None:
    time.sleep(1.0)  # the status file is rewritten every 0.5 s
    counters = bench.agent.status().get("counters", {})
    shown = {k: v for k, v in sorted(counters.items())
             if k.split(".", 1)[0] in ("flush", "events", "poller", "inspector")}
    print("agent counters: " + " ".join(f"{k}={v}" for k, v in shown.items()))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--deletes", type=int, default=30)
    parser.add_argument("--deltas", default="0,20,100",
                        help="comma-separated ms between delete.start and the destroy")
    parser.add_argument("--guests-per-delta", type=int, default=10)
    parser.add_argument("--running", type=int, default=5,
                        help="of the --deletes latency guests, how many run (others paused)")
    parser.add_argument("--concurrent", action="store_true",
                        help="race each Δ's guests at once instead of one at a time")
    parser.add_argument("--poll-interval", type=float, default=_common.AGENT_POLL_INTERVAL,
                        help="seconds between the agent's bulk polls (default: the agent's)")
    parser.add_argument("--uri", default="qemu:///system")
    args = parser.parse_args()
    print(f"agent bulk poll every {args.poll_interval:g} s"
          f"{' (the agent default)' if args.poll_interval == _common.AGENT_POLL_INTERVAL else ''}")
    deltas = [float(d) for d in args.deltas.split(",")]
    racers = len(deltas) * args.guests_per_delta
    if not 0 <= args.running <= args.deletes:
        parser.error("--running must be between 0 and --deletes")
    _common.exit_on_sigterm()
    agent.quiet_libvirt_stderr()
    latency_paused = args.deletes - args.running
    with _common.workdir("lifecycle-stats-e2e-") as directory, _common.guests(
            args.uri, directory, paused=2 * latency_paused + racers + 1,
            running=2 * args.running) as (_, made):
        paused, running = made[:len(made) - 2 * args.running], made[len(made) - 2 * args.running:]
        first, racing = paused[0], paused[1:1 + racers]
        pairs = list(zip(paused[1 + racers::2], paused[2 + racers::2]))
        pairs += list(zip(running[::2], running[1::2]))  # (deleted, its twin), alike
        random.shuffle(pairs)
        steady, twins = [d for d, _ in pairs], [t for _, t in pairs]
        bench = Bench(directory, args.uri, args.poll_interval)
        baseline = probe = None
        try:
            bench.start()
            baseline = _baselines.IdleGuestReads(args.uri, twins)
            probe = _baselines.HopProbe(bench)
            print(f"the agent's first delete since its start (not counted in (i)): "
                  f"{first_delete_ms(bench, first[0])} ms")
            floor = _baselines.FloorRuns(probe, baseline)
            e2e, payload = latency(bench, steady, floor)
            hops = probe.back_to_back()
            big = (_baselines.broker_hop_ms(bench, payload=payload) if payload is not None
                   else [])
            report_floor(e2e, floor, hops, baseline.back_to_back_ms(), big,
                         len(json.dumps(payload or {})) / 1024)
            report_race(race(bench, racing, deltas, args.concurrent), deltas, args.concurrent)
            report_counters(bench)
        finally:
            for closing in (probe, baseline):
                if closing is not None:
                    closing.close()
            bench.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
