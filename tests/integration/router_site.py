"""A router site for the integration tests: nova's exchange and topics, router replicas
(in-process or the lifecycle-stats-router process) and router-mode agents' listeners, all
named for one test and deleted by close(); nova publishing there (Nova)."""
from __future__ import annotations

import pathlib
import queue
import subprocess
import sys
import time
import uuid

import kombu
import oslo_messaging

from lifecycle_stats.listeners import bus
from lifecycle_stats.listeners.router import relay
from tests.integration import harness
from tests.integration.conftest import amqp_url
from tests.integration.harness import delete_queues
from tests.support.nova import legacy_start_payload, messaging_conf, versioned_start_payload

WAIT = 15.0
ROUTER = pathlib.Path(sys.executable).with_name("lifecycle-stats-router")


class Site:
    """nova's exchange, router replicas and router-mode agents, all named for one test."""

    def __init__(self, rabbit_url: str, durable: bool = False):
        """durable: [oslo_messaging_rabbit] amqp_durable_queues for nova, router and agents."""
        self.run = uuid.uuid4().hex[:10]
        self.durable = durable
        self.url = rabbit_url
        self.exchange = f"lst-nova-{self.run}"
        self.topics = (f"lst-notifications-{self.run}", f"lst-versioned-{self.run}")
        self.router_queue = f"lst-router-{self.run}"
        self.out_exchange = f"lst-routed-{self.run}"
        self.parking_queue = f"lst-parked-{self.run}"
        nova_conf = messaging_conf(self.exchange)
        nova_conf.set_override("amqp_durable_queues", durable, group="oslo_messaging_rabbit")
        self.transport = oslo_messaging.get_notification_transport(nova_conf, url=rabbit_url)
        self.relays: list[relay.Relay] = []
        self.listeners: list[bus.NotificationListener] = []
        self.processes: list[subprocess.Popen] = []
        self.hosts: set[str] = set()

    def host(self, suffix: str) -> str:
        name = f"lst-{self.run}-{suffix}"
        self.hosts.add(name)
        return name

    def settings(self, **changes) -> relay.RelaySettings:
        return relay.RelaySettings(url=amqp_url(self.url), queue=self.router_queue,
                                   nova_exchange=self.exchange, topics=self.topics,
                                   out_exchange=self.out_exchange,
                                   parking_queue=self.parking_queue, durable=self.durable,
                                   **changes)

    def replica(self, **changes) -> relay.Relay:
        replica = relay.Relay(self.settings(**changes))
        self.relays.append(replica)
        replica.start()
        assert replica.ready.wait(WAIT), "router replica did not start consuming"
        return replica

    def router_process(self, tmp_path: pathlib.Path, metrics_port: int = 0) -> subprocess.Popen:
        config = tmp_path / f"router-{len(self.processes)}.conf"
        config.write_text(
            f"[DEFAULT]\ntransport_url = {self.url}\nlog_file = {config}.log\n\n"
            f"[router]\nqueue = {self.router_queue}\nnova_exchange = {self.exchange}\n"
            f"topics = {','.join(self.topics)}\nout_exchange = {self.out_exchange}\n"
            f"parking_queue = {self.parking_queue}\nstats_interval = 0\n"
            f"[metrics]\nport = {metrics_port}\n")
        proc = subprocess.Popen([str(ROUTER), "--config-file", str(config)],
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        self.processes.append(proc)
        wait_for(lambda: self.consumers(self.router_queue) > len(self.relays) + len(
            [p for p in self.processes if p.poll() is None]) - 1 or proc.poll() is not None)
        assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
        return proc

    def agent(self, host: str, on_audit=None) -> bus.NotificationListener:
        """The agent's bus listener as agent.py builds it, with source = router."""
        conf = messaging_conf(self.exchange)
        conf.set_override("amqp_durable_queues", self.durable, group="oslo_messaging_rabbit")
        bus.register_opts(conf)
        conf.set_override("source", "router", group=bus.GROUP)
        conf.set_override("router_exchange", self.out_exchange, group=bus.GROUP)
        conf.set_override("transport_url", self.url, group=bus.GROUP)
        received: queue.Queue = queue.Queue()
        listener = bus.from_conf(conf, host, received.put, on_audit=on_audit)
        listener.received = received
        self.listeners.append(listener)
        listener.start()
        return listener

    def nova(self, host: str) -> "Nova":
        return Nova(self.transport, host, *self.topics)

    def publish_raw(self, body: bytes, topic_index: int = 0) -> None:
        """A message on nova's topic that no oslo.messaging Notifier would send."""
        with kombu.Connection(amqp_url(self.url)) as conn:
            producer = kombu.Producer(conn.channel())
            producer.publish(body, exchange=self.exchange, content_type="application/json",
                             content_encoding="utf-8",
                             routing_key=f"{self.topics[topic_index]}.info")

    def queue_state(self, name: str) -> tuple[int, int]:
        """(messages ready, consumers) of a queue, by a passive declare."""
        with kombu.Connection(amqp_url(self.url)) as conn:
            _, messages, consumers = conn.channel().queue_declare(queue=name, passive=True)
            return messages, consumers

    def consumers(self, name: str) -> int:
        """Consumers of a queue; 0 while it does not exist yet."""
        try:
            return self.queue_state(name)[1]
        except Exception:  # amqp's NotFound closes the channel; any failure means "not yet"
            return 0

    def close(self) -> None:
        try:
            for listener in self.listeners:
                listener.stop()
            for replica in self.relays:
                replica.stop()
            for proc in self.processes:
                if proc.poll() is None:
                    proc.kill()
                proc.wait(10)
        finally:
            self.transport.cleanup()
            self._delete_entities()

    def _delete_entities(self) -> None:
        queues = ([self.router_queue, self.parking_queue]
                  + [f"lifecycle-stats.{h}" for h in self.hosts]
                  + [f"{t}.info" for t in self.topics])
        delete_queues(amqp_url(self.url), queues, [self.exchange, self.out_exchange])


class Nova(harness.NovaNotifiers):
    """Publishes as nova-compute on ``host``: both delete.start forms, other events, and
    nova's usage audit."""

    def exists(self, instance_id=None, *, versioned=False) -> str:
        """nova-compute's usage audit (_instance_usage_audit) for the hour 11:00-12:00."""
        instance_id = instance_id or str(uuid.uuid4())
        if versioned:
            payload = versioned_start_payload(instance_id, self.host)
            payload["nova_object.name"], payload["nova_object.version"] = (
                "InstanceExistsPayload", "2.1")
            payload["nova_object.data"]["audit_period"] = {
                "nova_object.name": "AuditPeriodPayload", "nova_object.version": "1.0",
                "nova_object.data": {"audit_period_beginning": "2026-12-01T11:00:00Z",
                                     "audit_period_ending": "2026-12-01T12:00:00Z"}}
            self.versioned_notifier.info({}, "instance.exists", payload)
        else:
            payload = {**legacy_start_payload(instance_id, self.host),
                       "audit_period_beginning": "2026-12-01 11:00:00",
                       "audit_period_ending": "2026-12-01 12:00:00"}
            self.legacy_notifier.info({}, "compute.instance.exists", payload)
        return instance_id


def wait_for(condition, timeout=WAIT):
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.02)
