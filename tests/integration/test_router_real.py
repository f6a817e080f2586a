"""The fan-out router (listeners.router) on the real RabbitMQ, with agents' listeners bound in
``source = router`` mode and nova publishing through oslo.messaging Notifiers.

Every test uses its own exchanges, topics, router queue and host names, and deletes what it
declared (nova's default ``<topic>.info`` queues included).
"""
from __future__ import annotations

import os
import pathlib
import queue
import signal
import subprocess
import sys
import threading
import time
import uuid

import kombu
import oslo_messaging
import pytest
from oslo_config import cfg

from lifecycle_stats.listeners import bus
from lifecycle_stats.listeners.router import relay
from tests.integration.conftest import amqp_url
from tests.integration import harness
from tests.support.nova import messaging_conf

pytestmark = pytest.mark.integration
WAIT = 15.0
ROUTER = pathlib.Path(sys.executable).with_name("lifecycle-stats-router")


class Site:
    """nova's exchange, router replicas and router-mode agents, all named for one test."""

    def __init__(self, rabbit_url: str):
        self.run = uuid.uuid4().hex[:10]
        self.url = rabbit_url
        self.exchange = f"lst-nova-{self.run}"
        self.topics = (f"lst-notifications-{self.run}", f"lst-versioned-{self.run}")
        self.router_queue = f"lst-router-{self.run}"
        self.out_exchange = f"lst-routed-{self.run}"
        self.transport = oslo_messaging.get_notification_transport(messaging_conf(self.exchange),
                                                                   url=rabbit_url)
        self.relays: list[relay.Relay] = []
        self.listeners: list[bus.NotificationListener] = []
        self.processes: list[subprocess.Popen] = []
        self.hosts: set[str] = set()

    def host(self, suffix: str) -> str:
        name = f"lst-{self.run}-{suffix}"
        self.hosts.add(name)
        return name

    def settings(self) -> relay.RelaySettings:
        return relay.RelaySettings(url=amqp_url(self.url), queue=self.router_queue,
                                   nova_exchange=self.exchange, topics=self.topics,
                                   out_exchange=self.out_exchange)

    def replica(self) -> relay.Relay:
        replica = relay.Relay(self.settings())
        self.relays.append(replica)
        replica.start()
        assert replica.ready.wait(WAIT), "router replica did not start consuming"
        return replica

    def router_process(self, tmp_path: pathlib.Path) -> subprocess.Popen:
        config = tmp_path / f"router-{len(self.processes)}.conf"
        config.write_text(
            f"[DEFAULT]\ntransport_url = {self.url}\nlog_file = {config}.log\n\n"
            f"[router]\nqueue = {self.router_queue}\nnova_exchange = {self.exchange}\n"
            f"topics = {','.join(self.topics)}\nout_exchange = {self.out_exchange}\n"
            f"stats_interval = 0\n")
        proc = subprocess.Popen([str(ROUTER), "--config-file", str(config)],
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        self.processes.append(proc)
        wait_for(lambda: self.consumers(self.router_queue) > len(self.relays) + len(
            [p for p in self.processes if p.poll() is None]) - 1 or proc.poll() is not None)
        assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
        return proc

    def agent(self, host: str) -> bus.NotificationListener:
        """The agent's bus listener as agent.py builds it, with source = router."""
        conf = cfg.ConfigOpts()
        bus.register_opts(conf)
        conf([], project="lifecycle-stats-test", default_config_files=[])
        conf.set_override("source", "router", group=bus.GROUP)
        conf.set_override("router_exchange", self.out_exchange, group=bus.GROUP)
        conf.set_override("transport_url", self.url, group=bus.GROUP)
        received: queue.Queue = queue.Queue()
        listener = bus.from_conf(conf, host, received.put)
        listener.received = received
        self.listeners.append(listener)
        listener.start()
        return listener

    def nova(self, host: str) -> harness.NovaNotifiers:
        return harness.NovaNotifiers(self.transport, host, *self.topics)

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
        queues = ([self.router_queue] + [f"lifecycle-stats.{h}" for h in self.hosts]
                  + [f"{t}.info" for t in self.topics])
        with kombu.Connection(amqp_url(self.url)) as conn:
            channel = conn.channel()
            for name in queues:
                channel.queue_delete(queue=name)
            for name in (self.exchange, self.out_exchange):
                channel.exchange_delete(exchange=name)


@pytest.fixture
def site(rabbit_url):
    made = Site(rabbit_url)
    yield made
    made.close()


def wait_for(condition, timeout=WAIT):
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.02)


def drain(listener, timeout=1.0) -> list:
    """Triggers received until none came for ``timeout`` seconds."""
    got = []
    while True:
        try:
            got.append(listener.received.get(timeout=timeout))
        except queue.Empty:
            return got


def test_each_delete_reaches_only_its_own_host(site):
    replica = site.replica()
    one, two = site.host("one"), site.host("two")
    agent_one, agent_two = site.agent(one), site.agent(two)
    nova_one, nova_two = site.nova(one), site.nova(two)
    sent_one = {nova_one.legacy(), nova_one.versioned()}
    sent_two = {nova_two.legacy()}
    assert {t.instance_id for t in drain(agent_one)} == sent_one
    assert {t.instance_id for t in drain(agent_two)} == sent_two
    # the other host's deletes never reached these queues at all (direct mode: 'ignored')
    for listener in (agent_one, agent_two):
        assert listener.counters.get("bus.ignored") == 0
        assert listener.counters.get("bus.rejected") == 0
    assert replica.counters.get("router.routed") == 3
    assert site.queue_state(site.router_queue) == (0, 1)


def test_other_events_are_dropped_and_counted_lifecycle_starts_routed(site):
    replica = site.replica()
    host = site.host("mix")
    agent = site.agent(host)
    nova = site.nova(host)
    for _ in range(5):
        nova.legacy("compute.instance.update")
        nova.versioned("instance.update")
    nova.legacy("compute.instance.exists")
    nova.legacy("compute.instance.delete.end")
    power_off = nova.versioned("instance.power_off.start")
    delete = nova.legacy()
    wait_for(lambda: replica.counters.get("router.routed") == 2)
    wait_for(lambda: replica.counters.get("router.dropped") == 12)
    # power_off.start is routed and parsed too: a closing read for the usage ledger (issue 9)
    got = drain(agent)
    assert [(t.instance_id, t.action) for t in got] == [(power_off, "power_off"),
                                                        (delete, "delete")]
    assert agent.counters.get("bus.ignored") == 0
    assert power_off != delete


def test_malformed_messages_are_counted_acknowledged_and_block_nothing(site):
    replica = site.replica()
    host = site.host("bad")
    agent = site.agent(host)
    site.publish_raw(b"{not json")
    site.publish_raw(b"[1, 2, 3]")
    site.publish_raw(b'{"oslo.version": "2.0", "oslo.message": "{broken"}', topic_index=1)
    no_host = {"event_type": "compute.instance.delete.start", "publisher_id": "api.x",
               "payload": {"instance_id": str(uuid.uuid4())}}
    star_host = {"event_type": "compute.instance.delete.start", "publisher_id": "compute.x",
                 "payload": {"instance_id": str(uuid.uuid4()), "host": "a.*"}}
    import json
    for message in (no_host, star_host):
        site.publish_raw(json.dumps(message).encode())
    good = site.nova(host).legacy()
    assert [t.instance_id for t in drain(agent)] == [good]
    wait_for(lambda: replica.counters.get("router.malformed") == 5)
    assert replica.counters.get("router.routed") == 1
    assert site.queue_state(site.router_queue)[0] == 0  # all acknowledged, none redelivered


def test_two_replicas_share_one_queue_and_lose_nothing(site):
    first, second = site.replica(), site.replica()
    assert site.queue_state(site.router_queue)[1] == 2
    host = site.host("pair")
    agent = site.agent(host)
    nova = site.nova(host)
    sent = {nova.legacy() if n % 2 else nova.versioned() for n in range(60)}
    wait_for(lambda: first.counters.get("router.routed")
             + second.counters.get("router.routed") == 60)
    assert {t.instance_id for t in drain(agent)} == sent
    assert first.counters.get("router.routed") > 0 and second.counters.get("router.routed") > 0


@pytest.mark.allow_error_logs
def test_a_host_queue_declared_otherwise_still_gets_its_events(site):
    """An agent whose queue is durable (amqp_durable_queues = true) while the router's
    settings say transient: the router's declare is refused; it counts, logs, and publishes."""
    replica = site.replica()
    host, other = site.host("durable"), site.host("plain")
    queue_name = f"lifecycle-stats.{host}"
    with kombu.Connection(amqp_url(site.url)) as conn:
        routed = kombu.Exchange(site.out_exchange, "topic", durable=False)
        kombu.Queue(queue_name, exchange=routed, routing_key=f"lifecycle_stats.{host}.info",
                    durable=True)(conn.channel()).declare()
    site.nova(host).legacy()
    site.nova(other).legacy()
    wait_for(lambda: replica.counters.get("router.routed") == 2)
    assert replica.counters.get("router.host_queue_mismatch") == 1
    assert site.queue_state(queue_name)[0] == 1
    assert site.queue_state(f"lifecycle-stats.{other}")[0] == 1


def test_events_wait_in_the_host_queue_for_an_agent_not_yet_started(site):
    site.replica()
    host = site.host("late")
    sent = site.nova(host).legacy()
    wait_for(lambda: site.queue_state(f"lifecycle-stats.{host}")[0] == 1)
    agent = site.agent(host)
    assert [t.instance_id for t in drain(agent)] == [sent]


def test_router_killed_mid_stream_loses_nothing(site, tmp_path):
    """kill -9 of the router process while nova publishes; a new replica takes over the queue
    and every delete.start reaches the agent (at-least-once: duplicates allowed)."""
    host = site.host("kill")
    agent = site.agent(host)
    first = site.router_process(tmp_path)
    nova = site.nova(host)
    sent: list[str] = []
    done = threading.Event()

    def publish():
        for _ in range(400):
            sent.append(nova.legacy())
            time.sleep(0.002)
        done.set()

    publisher = threading.Thread(target=publish)
    publisher.start()
    received = []
    while len(received) < 80:
        received.append(agent.received.get(timeout=WAIT).instance_id)
    os.kill(first.pid, signal.SIGKILL)
    first.wait(10)
    killed_at = len(received)
    site.router_process(tmp_path)
    publisher.join(WAIT)
    assert done.is_set()
    deadline = time.monotonic() + WAIT
    while set(received) != set(sent) and time.monotonic() < deadline:
        try:
            received.append(agent.received.get(timeout=0.5).instance_id)
        except queue.Empty:
            pass
    missing = set(sent) - set(received)
    assert not missing, f"{len(missing)} of {len(sent)} lost (killed after {killed_at})"
    assert killed_at < len(sent)  # the kill really was mid-stream
    assert site.queue_state(site.router_queue)[0] == 0
    print(f"killed after {killed_at} received; {len(received) - len(set(received))} "
          f"redelivered twice; {len(sent)} sent")


def test_the_agent_process_in_router_mode_captures_a_real_guest(
        rabbit_url, libvirt_uri, guest_factory, tmp_path):
    """nova → router → the real lifecycle-stats-agent (source = router) reading a real QEMU
    guest → delete.samples consumed by billing; other hosts' deletes never reach it."""

    names = harness.BusNames()
    host = f"lst-router-e2e-{names.nova_exchange[-8:]}"
    out_exchange, router_queue = f"lst-routed-{names.nova_exchange[-8:]}", f"lst-router-{host}"
    replica = relay.Relay(relay.RelaySettings(
        url=amqp_url(rabbit_url), queue=router_queue, nova_exchange=names.nova_exchange,
        topics=(names.legacy_topic, names.versioned_topic), out_exchange=out_exchange))
    conf = cfg.ConfigOpts()
    conf([], project="lifecycle-stats-test", default_config_files=[])
    transport = oslo_messaging.get_notification_transport(conf, url=rabbit_url)
    agent = harness.AgentProcess(
        tmp_path, host=host, transport_url=rabbit_url, names=names, libvirt_uri=libvirt_uri,
        extra={"notification_listener": {"source": "router", "router_exchange": out_exchange}})
    billing = None
    try:
        replica.start()
        assert replica.ready.wait(WAIT)
        billing = harness.BillingConsumer(transport, names)
        agent.start()
        guest, _ = guest_factory.create(paused=True)
        other, _ = guest_factory.create(paused=True)
        nova = harness.Nova(transport, names)
        nova.delete_start(other, f"{host}-elsewhere")
        nova.delete_start(guest, host, versioned=True)
        events = billing.wait_for_instances([guest.instance_id], WAIT)[guest.instance_id]
        assert events[0]["payload"]["capture"]["kind"] == "final"
        agent.wait_for(lambda s: s["counters"].get("flush.final") == 1, WAIT, "flush counted")
        assert replica.counters.get("router.routed") == 2
        assert agent.counter("bus.ignored") == 0  # the other host's delete never came here
        assert other.instance_id not in billing.by_instance()
    finally:
        try:
            if billing is not None:
                billing.stop()
            assert agent.stop() == 0, agent.log_tail()
        finally:
            replica.stop()
            transport.cleanup()
            harness.delete_queues(
                amqp_url(rabbit_url),
                names.queues([host, f"{host}-elsewhere"]) + [router_queue],
                [names.nova_exchange, names.control_exchange, out_exchange])
