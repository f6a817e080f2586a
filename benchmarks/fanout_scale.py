"""Fan-out at scale on the real broker: direct per-host binding vs the router, side by side.

N simulated agents (lightweight kombu consumers: one queue and consumer each, acknowledging
every message as oslo.messaging does, on a few shared connections) and nova's notification
mix published at a set rate through a confirming kombu producer (nova's oslo.messaging
publishes with confirms too), in oslo.messaging's 2.0 envelope: instance.update, exists and
delete.start, legacy and versioned forms alike. Each mode runs for the same time:

  direct  every agent's queue binds nova's notifications.info + versioned_notifications.info
  router  `lifecycle-stats-router` processes (the real console script) consume one shared
          queue and republish each lifecycle .start to its host's routing key only

Printed per mode: broker deliveries per delete (consumer-side count, and RabbitMQ's own
global counters via `rabbitmqctl eval`, which include other traffic on a shared broker),
broker CPU (beam.smp utime+stime from /proc, minus an idle baseline measured in the same run)
and memory (VmRSS), router CPU, delete.start published → owning agent received (the moment
the real agent would start its capture) p50/p99, triggers missing and the backlog left. Then
a projection to 1,000 and 10,000 hosts from the measured CPU per delivery.

The simulated agents read the delete's host and send time from message headers (set by the
publisher, kept by the router) instead of decoding JSON: their own CPU is not what is measured.

    .venv/bin/python benchmarks/fanout_scale.py [--agents 200] [--rate 20] [--seconds 15]
                                                [--replicas 1]
"""
from __future__ import annotations

import argparse
import os
import pathlib
import signal
import subprocess
import sys
import time

import kombu

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from benchmarks import _common  # noqa: E402
from benchmarks._fanout_sim import (  # noqa: E402
    MIX, RABBIT_URL, Names, SimAgents, delete_entities, publish, queue_state,
)
from benchmarks._procstats import Sampler, beam_pid  # noqa: E402
from lifecycle_stats.listeners.router import events  # noqa: E402

ROUTER = pathlib.Path(sys.executable).with_name("lifecycle-stats-router")
DRAIN_S = 15.0


# -- one mode ----------------------------------------------------------------------------------

class Mode:
    """Declares, measures and removes one side: 'direct' or 'router'."""

    def __init__(self, name: str, names: Names, hosts: list[str], replicas: int, tmp: str):
        self.name, self.names, self.hosts = name, names, hosts
        self.replicas, self.tmp = replicas, tmp
        self.routers: list[subprocess.Popen] = []
        self.agents = SimAgents(hosts, self._queue_for)

    def _queue_for(self, host: str) -> kombu.Queue:
        name = self.names.agent_queue(host)
        if self.name == "direct":  # as listeners.bus binds in source = direct
            nova = kombu.Exchange(self.names.nova_exchange, "topic", durable=False)
            return kombu.Queue(name, durable=False, auto_delete=False, bindings=[
                kombu.binding(nova, routing_key=f"{topic}.info") for topic in self.names.topics])
        # as the router and agents in router mode declare them by default: durable
        routed = kombu.Exchange(self.names.router_exchange, "topic", durable=True)
        return kombu.Queue(name, exchange=routed, routing_key=events.routing_key(host),
                           durable=True, auto_delete=False)

    def start(self) -> None:
        started = time.perf_counter()
        if self.name == "router":
            for i in range(self.replicas):
                self.routers.append(self._router(i))
            _wait(lambda: queue_state(self.names.router_queue)[1] == self.replicas, 30,
                  "router replicas consuming")
        self.agents.start()
        print(f"[{self.name}] {len(self.hosts)} agent queues + consumers ready in "
              f"{time.perf_counter() - started:.1f} s", flush=True)

    def _router(self, i: int) -> subprocess.Popen:
        config = pathlib.Path(self.tmp) / f"router-{i}.conf"
        config.write_text(
            f"[DEFAULT]\ntransport_url = {RABBIT_URL}\nlog_file = {config}.log\n\n"
            f"[router]\nqueue = {self.names.router_queue}\n"
            f"nova_exchange = {self.names.nova_exchange}\n"
            f"topics = {','.join(self.names.topics)}\n"
            f"out_exchange = {self.names.router_exchange}\n"
            f"parking_queue = {self.names.router_queue}-parked\nstats_interval = 0\n"
            f"[metrics]\nport = 0\n")  # several replicas: no fixed metrics port
        return subprocess.Popen([str(ROUTER), "--config-file", str(config)],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def expected_agent_deliveries(self, sent: dict) -> int:
        published = sum(sent[kind] for kind, _ in MIX)
        # the router hands each host its lifecycle events and its nova exists (enrichment)
        return published * len(self.hosts) if self.name == "direct" else (
            sent["delete"] + sent["exists"])

    def drained(self, sent: dict) -> bool:
        if self.agents.total() < self.expected_agent_deliveries(sent):
            return False
        return self.name == "direct" or queue_state(self.names.router_queue)[0] == 0

    def close(self) -> None:
        try:
            self.agents.stop()
        finally:
            for proc in self.routers:
                proc.send_signal(signal.SIGTERM)
            for proc in self.routers:
                try:
                    proc.wait(15)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(5)
            delete_entities([self.names.agent_queue(h) for h in self.hosts]
                            + [self.names.router_queue, f"{self.names.router_queue}-parked"],
                            [])



def _wait(condition, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out waiting for {what}")
        time.sleep(0.1)


def run_mode(mode: Mode, args, beam: int, idle_cores: float) -> dict:
    mode.start()
    try:
        with Sampler(beam, [p.pid for p in mode.routers]) as sampled:
            sent = publish(mode.names, mode.hosts, args.rate, args.seconds, args.seed)
            deadline = time.monotonic() + DRAIN_S
            while not mode.drained(sent) and time.monotonic() < deadline:
                time.sleep(0.1)
        backlog = sum(queue_state(mode.names.agent_queue(h))[0] for h in mode.hosts)
        if mode.name == "router":
            backlog += queue_state(mode.names.router_queue)[0]
    finally:
        mode.close()
    return figures(mode, sent, sampled, idle_cores, backlog)


def figures(mode: Mode, sent: dict, sampled: Sampler, idle_cores: float, backlog: int) -> dict:
    published = sum(sent[kind] for kind, _ in MIX)
    router_deliveries = published if mode.name == "router" else 0
    deliveries = mode.agents.total() + router_deliveries
    deletes = max(1, sent["delete"])
    latencies = [mode.agents.latencies_ms[i] for i in sent["delete_ids"]
                 if i in mode.agents.latencies_ms]
    broker_cpu = max(0.0, sampled.cpu - idle_cores * sampled.elapsed)
    return {
        "published": published, "deletes": sent["delete"], "deliveries": deliveries,
        "per_delete": deliveries / deletes,
        "broker_per_delete": sampled.broker.get("messages_delivered_total", 0) / deletes
        if sampled.broker else float("nan"),
        "wrong_host": sum(mode.agents.wrong_host), "window_s": sampled.elapsed,
        "broker_cores": broker_cpu / sampled.elapsed, "broker_cpu_s": broker_cpu,
        "us_per_delivery": broker_cpu / max(1, deliveries) * 1e6,
        "rss_peak": sampled.rss_peak, "router_cores": sampled.router_cpu / sampled.elapsed,
        "router_us_per_message": sampled.router_cpu / max(1, router_deliveries) * 1e6
        if router_deliveries else float("nan"),
        "latency": _common.summary(latencies), "missing": sent["delete"] - len(latencies),
        "backlog": backlog,
    }


# -- report ------------------------------------------------------------------------------------

ROWS = (("notifications published", "published", "{:d}"),
        ("delete.start published", "deletes", "{:d}"),
        ("deliveries (consumers + router)", "deliveries", "{:d}"),
        ("deliveries per delete", "per_delete", "{:.1f}"),
        ("  broker counter / delete (shared broker)", "broker_per_delete", "{:.1f}"),
        ("other hosts' deletes delivered", "wrong_host", "{:d}"),
        ("broker CPU, cores (minus idle)", "broker_cores", "{:.3f}"),
        ("broker CPU per delivery, µs", "us_per_delivery", "{:.1f}"),
        ("broker RSS peak, MiB", "rss_peak", "{:.0f}"),
        ("router CPU, cores (all replicas)", "router_cores", "{:.3f}"),
        ("router CPU per message, µs", "router_us_per_message", "{:.1f}"),
        ("delete → trigger p50, ms", ("latency", "p50"), "{:.1f}"),
        ("delete → trigger p99, ms", ("latency", "p99"), "{:.1f}"),
        ("delete → trigger max, ms", ("latency", "max"), "{:.1f}"),
        ("triggers missing", "missing", "{:d}"),
        ("backlog left in queues", "backlog", "{:d}"))


def cell(result: dict, key, fmt: str) -> str:
    value = result[key[0]][key[1]] if isinstance(key, tuple) else result[key]
    return "-" if value != value else fmt.format(value)  # nan → "-"


def report(results: dict[str, dict], args, idle_cores: float) -> None:
    print(f"\nfan-out, {args.agents} simulated agents, nova's mix "
          f"({', '.join(f'{k} {w:.0%}' for k, w in MIX)}) at {args.rate:g}/s for "
          f"{args.seconds:g} s, {args.replicas} router replica(s); broker idle baseline "
          f"{idle_cores:.3f} cores")
    print(_common.table(["", *results], [[label, *(cell(r, key, fmt) for r in results.values())]
                                         for label, key, fmt in ROWS]))


def fit_costs(results: dict[str, dict]) -> tuple[float, float]:
    """Broker CPU µs per published message and per delivery, solved from the two modes
    (cpu = publishes × c_pub + deliveries × c_deliv; the router's republish is a publish).
    Falls back to all cost on deliveries when the two runs are too close or too noisy."""
    rows = [(r["published"] + (r["deletes"] if name == "router" else 0), r["deliveries"],
             r["broker_cpu_s"] * 1e6) for name, r in results.items()]
    (p1, d1, c1), (p2, d2, c2) = rows
    det = p1 * d2 - p2 * d1
    if det:
        c_pub, c_deliv = (c1 * d2 - c2 * d1) / det, (p1 * c2 - p2 * c1) / det
        if c_pub >= 0 and c_deliv >= 0:
            return c_pub, c_deliv
    return 0.0, c1 / max(1, d1)


def projection(results: dict[str, dict], args) -> None:
    """Broker cores at 1,000 and 10,000 hosts from the measured costs.

    Model: nova's cluster rate grows with the hosts (per_host_rate each); direct delivers
    every notification to every host; the router takes each once, republishes each delete
    and each exists (for enrichment) and delivers it once more."""
    c_pub, c_deliv = fit_costs(results)
    router_us = results["router"]["router_us_per_message"]
    delete_share = dict(MIX)["delete"]
    routed_share = delete_share + dict(MIX)["exists"]
    print(f"\nprojection at {args.per_host_rate:g} nova notifications/s per host "
          f"({delete_share:.0%} deletes, {routed_share:.0%} routed); broker cost fitted "
          f"from both runs: "
          f"{c_pub:.1f} µs per publish, {c_deliv:.1f} µs per delivery; router "
          f"{router_us:.0f} µs per message:")
    rows = []
    for hosts in (args.agents, 1000, 10000):
        rate = hosts * args.per_host_rate
        direct_rate, router_rate = hosts * rate, rate * (1 + routed_share)
        rows.append([f"{hosts} hosts", rate, direct_rate,
                     (rate * c_pub + direct_rate * c_deliv) / 1e6, router_rate,
                     (rate * (1 + routed_share) * c_pub + router_rate * c_deliv) / 1e6,
                     rate * router_us / 1e6])
    print(_common.table(["", "nova msg/s", "direct deliv/s", "direct broker cores",
                         "router deliv/s", "router broker cores", "router replicas cores"],
                        [[r[0], *(f"{v:,.3f}" if v < 10 else f"{v:,.0f}" for v in r[1:])]
                         for r in rows]))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--agents", type=int, default=200)
    parser.add_argument("--rate", type=float, default=20.0, help="nova messages/s published")
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--replicas", type=int, default=1)
    parser.add_argument("--idle-seconds", type=float, default=4.0)
    parser.add_argument("--per-host-rate", type=float, default=0.005,
                        help="for the projection: nova notifications/s per host")
    parser.add_argument("--seed", type=int, default=14)
    args = parser.parse_args()
    _common.exit_on_sigterm()
    names = Names()
    hosts = [names.host(i) for i in range(args.agents)]
    beam = beam_pid()
    with Sampler(beam, []) as idle:
        time.sleep(args.idle_seconds)
    idle_cores = idle.cpu / idle.elapsed
    results = {}
    try:
        with _common.workdir("lifecycle-stats-fanout-") as tmp:
            for name in ("direct", "router"):
                results[name] = run_mode(Mode(name, names, hosts, args.replicas, tmp), args,
                                         beam, idle_cores)
    finally:
        delete_entities([], [names.nova_exchange, names.router_exchange])
    report(results, args, idle_cores)
    projection(results, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
