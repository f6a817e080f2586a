"""lifecycle-stats-demo: the whole agent on an embedded default, no services needed.

libvirt's in-process test:///default driver holds the domains (three of them nova's, one
not) and oslo.messaging's in-memory fake:// transport is the bus. The demo plays nova
(publishing delete.start) and a billing consumer (reading delete.samples), and prints what
the consumer received.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import threading
import time

DEMO_HOST = "demo-compute-1"


class BillingConsumer:
    """Collects compute.instance.delete.samples the way a billing pipeline would."""

    def __init__(self) -> None:
        self.events: list[dict] = []
        self._lock = threading.Condition()

    def info(self, ctxt, publisher_id, event_type, payload, metadata):
        if event_type == "compute.instance.delete.samples":
            with self._lock:
                self.events.append({"publisher_id": publisher_id, "payload": payload,
                                    "message_id": metadata.get("message_id")})
                self._lock.notify_all()

    def wait_for(self, count: int, timeout: float) -> list[dict]:
        with self._lock:
            self._lock.wait_for(lambda: len(self.events) >= count, timeout)
            return list(self.events)


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
    conf.set_override("socket_path", f"{state_path}/hook/hook.sock", group="hook")
    conf.set_override("socket_group", "", group="hook")  # the demo's own group; no nova here
    log.set_defaults(default_log_levels=["lifecycle_stats=WARNING", "oslo_messaging=WARNING"])
    log.setup(conf, "lifecycle-stats")
    return conf


def run(show_json: bool) -> int:
    import oslo_messaging

    from lifecycle_stats.agent import Agent
    from lifecycle_stats.emitters.messaging import MessagingEmitter

    state = tempfile.mkdtemp(prefix="lifecycle-stats-demo-")
    conf = build_conf(state)
    transport = oslo_messaging.get_notification_transport(conf, url="fake://")
    consumer, billing = start_billing(conf, transport)
    agent = Agent(conf, emitters={"messagingv2": MessagingEmitter(conf, transport)},
                  listen_transport=transport)
    domains, guests = make_guests()
    agent.start()
    try:
        time.sleep(1.5)  # one bulk poll caches every nova domain's reading
        print(f"agent on {DEMO_HOST}: nova domains {len(agent.registry.instances())}, "
              f"all domains {len(domains.conn.listAllDomains(0))}\n")
        play_nova(transport, domains, guests)
        consumer.wait_for(3, timeout=10)
        time.sleep(0.5)  # anything extra would show up now
        events = consumer.events
    finally:
        agent.stop()
        billing.stop()
        billing.wait()
        domains.cleanup()
    return report(events, agent.counters.snapshot(), show_json)


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


def report(events: list[dict], counters: dict, show_json: bool) -> int:
    print(f"\nbilling ← {len(events)} compute.instance.delete.samples")
    for event in events:
        p = event["payload"]
        cap = p["capture"]
        volumes = {s["name"]: s["volume"] for s in p["samples"] if s["resource_id"] == p["instance_id"]}
        age = f" age {cap['age_ms']} ms" if "age_ms" in cap else ""
        print(f"  {p['display_name']:<8} {p['instance_id']}  {cap['kind']:<10}{age}  "
              f"via {cap['trigger']}\n"
              f"           {len(p['samples'])} samples: cpu={volumes.get('cpu')} ns  "
              f"vcpus={volumes.get('vcpus')}  memory={volumes.get('memory')} MiB  "
              f"disk.read.bytes={volumes.get('disk.read.bytes')}")
    print("\ncounters: " + ", ".join(f"{k}={v}" for k, v in sorted(counters.items())
                                      if k.startswith(("flush.", "bus."))))
    if show_json:
        print(json.dumps(events, indent=2, sort_keys=True))
    kinds = sorted(e["payload"]["capture"]["kind"] for e in events)
    expected = ["final", "final", "last_known"]
    if kinds != expected:
        print(f"\nunexpected result: {kinds}, wanted {expected}", file=sys.stderr)
        return 1
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="lifecycle-stats-demo", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", action="store_true", help="also print the full payloads")
    return run(parser.parse_args(argv).json)


if __name__ == "__main__":
    sys.exit(main())
