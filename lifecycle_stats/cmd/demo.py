"""lifecycle-stats-demo: the whole agent on an embedded default, no services needed.

libvirt's in-process test:///default driver holds the domains (three of them nova's, one
not) and oslo.messaging's in-memory fake:// transport is the bus. The demo plays nova
(publishing delete.start) and a billing consumer, and prints what billing received: the usage
of a short audit period (compute.instance.exists), the final samples of each deleted instance
(compute.instance.delete.samples) and its usage up to the deletion (the final exists).
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import textwrap
import threading
import time

DEMO_HOST = "demo-compute-1"
AUDIT_PERIOD = "5s"  # the agent's short period (usage/periods.py): one ends within seconds
DELETE_SAMPLES, EXISTS = "compute.instance.delete.samples", "compute.instance.exists"


class BillingConsumer:
    """Collects delete.samples and exists the way a billing pipeline would."""

    def __init__(self) -> None:
        self.events: list[dict] = []
        self._lock = threading.Condition()

    def info(self, ctxt, publisher_id, event_type, payload, metadata):
        if event_type in (DELETE_SAMPLES, EXISTS):
            with self._lock:
                self.events.append({"event_type": event_type, "publisher_id": publisher_id,
                                    "payload": payload,
                                    "message_id": metadata.get("message_id")})
                self._lock.notify_all()

    def of(self, event_type: str, source: str | None = None) -> list[dict]:
        with self._lock:
            return [e for e in self.events if e["event_type"] == event_type
                    and source in (None, e["payload"].get("period_source"))]

    def wait_for(self, count: int, timeout: float, event_type: str,
                 source: str | None = None) -> list[dict]:
        with self._lock:
            self._lock.wait_for(lambda: len(self.of(event_type, source)) >= count, timeout)
        return self.of(event_type, source)


def build_conf(state_path: str):
    from oslo_config import cfg
    from oslo_log import log

    from lifecycle_stats import opts

    conf = cfg.ConfigOpts()
    opts.register_all(conf)
    log.register_options(conf)
    conf([], project="lifecycle-stats", default_config_files=[])
    conf.set_override("host", DEMO_HOST)
    conf.set_override("state_path", state_path)
    conf.set_override("uri", "test:///default", group="libvirt")
    conf.set_override("interval", 1.0, group="poller")
    conf.set_override("status_interval", 1.0)
    conf.set_override("audit_period", AUDIT_PERIOD, group="usage")
    conf.set_override("socket_path", f"{state_path}/hook/hook.sock", group="hook")
    conf.set_override("socket_group", "", group="hook")  # the demo's own group; no nova here
    conf.set_override("port", 0, group="metrics")  # beside a real agent on its default port
    log.set_defaults(default_log_levels=["lifecycle_stats=WARNING", "oslo_messaging=WARNING"])
    log.setup(conf, "lifecycle-stats")
    return conf


def run(show_json: bool) -> int:
    import oslo_messaging

    from lifecycle_stats.agent import Agent
    from lifecycle_stats.emitters.messaging import MessagingConduit

    state = tempfile.mkdtemp(prefix="lifecycle-stats-demo-")
    conf = build_conf(state)
    transport = oslo_messaging.get_notification_transport(conf, url="fake://")
    consumer, billing = start_billing(conf, transport)
    agent = Agent(conf, emitters={"messagingv2": MessagingConduit(conf, transport)},
                  listen_transport=transport)
    domains, guests = make_guests()
    agent.start()
    try:
        time.sleep(1.5)  # one bulk poll caches every nova domain's reading
        print(f"agent on {DEMO_HOST}: nova domains {len(agent.registry.instances())}, "
              f"all domains {len(domains.conn.listAllDomains(0))}, audit period "
              f"{AUDIT_PERIOD}\n")
        # the first period began before the agent: wait for the end of a whole one
        period = consumer.wait_for(6, 20, EXISTS, "agent_period")[3:6]
        print_exists(f"for the audit period {window_of(period)}", period)
        print()
        play_nova(transport, domains, guests)
        consumer.wait_for(3, 10, DELETE_SAMPLES)
        destroy_deleted(domains, guests)  # the evidence: an instance ends when its domain goes
        consumer.wait_for(3, 10, EXISTS, "deleted")
        time.sleep(0.5)  # anything extra would show up now
    finally:
        agent.stop()
        billing.stop()
        billing.wait()
        domains.cleanup()
    return report(consumer, agent.counters.snapshot(), show_json)


def start_billing(conf, transport):
    """A billing consumer on the agent's exchange, in its own pool."""
    import oslo_messaging

    consumer = BillingConsumer()
    billing = oslo_messaging.get_notification_listener(
        transport, [oslo_messaging.Target(exchange=conf.control_exchange, topic="notifications")],
        [consumer], executor="threading", pool="billing")
    billing.start()
    return consumer, billing


def make_guests():
    """Three nova domains (web-1, db-1, batch-7) and one that is not nova's, all running."""
    from lifecycle_stats.cmd.demo_nova import DemoDomains

    domains = DemoDomains(prefix="demo")
    nova = [domains.create(display_name=name, flavor_name=flavor)
            for name, flavor in (("web-1", "m1.small"), ("db-1", "m1.large"),
                                 ("batch-7", "m1.small"))]
    foreign = domains.create(metadata=None, display_name="not-nova")
    return domains, (*nova, foreign)


def play_nova(transport, domains, guests) -> None:
    """nova's side: delete.start in both formats, a domain destroyed before its delete.start
    arrives, a domain that is not nova's, and a delete for another host."""
    from lifecycle_stats.cmd.demo_nova import publish_start

    web, db, gone, foreign = guests
    domains.destroy(gone)  # nova destroyed batch-7 before its delete.start reached us
    plays = [(web, DEMO_HOST, False, ""), (web, DEMO_HOST, True, "  (same instance again)"),
             (db, DEMO_HOST, True, ""), (gone, DEMO_HOST, False, "  (domain already gone)"),
             (foreign, DEMO_HOST, False, "  (not nova's domain)"),
             (db, "another-host", False, " on another-host")]
    for guest, host, versioned, note in plays:
        publish_start(transport, guest, host, versioned=versioned)
        event = "instance.delete.start         " if versioned else "compute.instance.delete.start "
        print(f"  nova  → {event} {guest.display_name}{note}")


def destroy_deleted(domains, guests) -> None:
    """nova's destroy follows its delete.start: only then has the instance ended, and only
    then does the ledger send its final exists (a delete that fails leaves usage running)."""
    web, db, _gone, _foreign = guests
    for guest in (web, db):
        domains.destroy(guest)
    print(f"  nova  → destroys the domains of {web.display_name} and {db.display_name}")


def window_of(events: list[dict]) -> str:
    """nova's "YYYY-MM-DD HH:MM:SS[.ffffff]" window of the first event, as HH:MM:SS times."""
    if not events:
        return "(none received)"
    p = events[0]["payload"]
    return (f"{p['audit_period_beginning'][11:19]} → {p['audit_period_ending'][11:19]} UTC")


def print_exists(title: str, events: list[dict]) -> None:
    print(f"billing ← {len(events)} {EXISTS} {title}")
    for event in sorted(events, key=lambda e: e["payload"]["display_name"]):
        p = event["payload"]
        used = p["usage"]
        state = "complete" if used["complete"] else f"incomplete {used['incomplete_seconds']} s"
        print(f"  {p['display_name']:<8} {p['instance_id'][:8]}…  {p['period_source']:<12} "
              f"{p['audit_period_beginning'][11:19]} → {p['audit_period_ending'][11:23]:<12} "
              f"cpu_time_ns={used['cpu_time_ns']}  observed {used['observed_seconds']} s  "
              f"{state}")


def print_delete_samples(events: list[dict]) -> None:
    print(f"billing ← {len(events)} {DELETE_SAMPLES}")
    for event in sorted(events, key=lambda e: e["payload"]["display_name"]):
        p = event["payload"]
        cap = p["capture"]
        volumes = {s["name"]: s["volume"] for s in p["samples"]
                   if s["resource_id"] == p["instance_id"]}
        age = f" age {cap['age_ms']} ms" if "age_ms" in cap else ""
        print(f"  {p['display_name']:<8} {p['instance_id'][:8]}…  {cap['kind']:<10}{age}  "
              f"via {cap['trigger']}\n"
              f"           {len(p['samples'])} samples: cpu={volumes.get('cpu')} ns  "
              f"vcpus={volumes.get('vcpus')}  memory={volumes.get('memory')} MiB  "
              f"disk.read.bytes={volumes.get('disk.read.bytes')}")


def report(consumer: BillingConsumer, counters: dict, show_json: bool) -> int:
    samples, finals = consumer.of(DELETE_SAMPLES), consumer.of(EXISTS, "deleted")
    print()
    print_delete_samples(samples)
    print()
    print_exists("at deletion (final: usage from the period's start to the delete)", finals)
    shown = [f"{k}={v}" for k, v in sorted(counters.items())
             if k.startswith(("flush.", "bus.", "usage."))]
    print("\n" + textwrap.fill(", ".join(shown), 96, initial_indent="counters: ",
                               subsequent_indent=" " * 10, break_on_hyphens=False))
    if show_json:
        print(json.dumps(consumer.events, indent=2, sort_keys=True))
    return check(consumer)


def check(consumer: BillingConsumer) -> int:
    """0 when billing got what the demo shows; else 1, saying what differs."""
    kinds = sorted(e["payload"]["capture"]["kind"] for e in consumer.of(DELETE_SAMPLES))
    got = {"delete.samples": kinds,
           "period exists": len(consumer.of(EXISTS, "agent_period")) >= 6,
           "final exists": sorted(e["payload"]["display_name"]
                                  for e in consumer.of(EXISTS, "deleted"))}
    wanted = {"delete.samples": ["final", "final", "last_known"], "period exists": True,
              "final exists": ["batch-7", "db-1", "web-1"]}
    if got != wanted:
        print(f"\nunexpected result: {got}, wanted {wanted}", file=sys.stderr)
        return 1
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="lifecycle-stats-demo", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", action="store_true", help="also print the full payloads")
    return run(parser.parse_args(argv).json)


if __name__ == "__main__":
    sys.exit(main())
