"""lifecycle_stats.listeners.bus on the real RabbitMQ, fed by oslo.messaging Notifiers configured as nova's.

Every test uses its own exchange, topics and host names (so nothing here lands in a real
``notifications.info`` queue), and deletes the queues and the exchange it made.
"""
from __future__ import annotations

import queue
import statistics
import time
import uuid

import kombu
import oslo_messaging
import pytest
from oslo_config import cfg
from oslo_messaging import opts as messaging_opts

from lifecycle_stats.listeners import bus
from tests.integration.conftest import amqp_url

pytestmark = pytest.mark.integration
WAIT = 10.0


def make_conf(exchange: str) -> cfg.ConfigOpts:
    conf = cfg.ConfigOpts()
    for group, opts in messaging_opts.list_opts():
        conf.register_opts(opts, group=group)
    conf([], project="lifecycle-stats-test", default_config_files=[])
    conf.set_override("control_exchange", exchange)  # nova's control_exchange is "nova"
    return conf


def legacy_payload(instance_id, host):
    return {"instance_id": instance_id, "host": host, "tenant_id": "t1", "user_id": "u1",
            "display_name": "vm", "instance_type": "m1.tiny", "memory_mb": 64, "vcpus": 1,
            "root_gb": 1, "ephemeral_gb": 0, "state": "active"}


def versioned_payload(instance_id, host):
    flavor = {"nova_object.name": "FlavorPayload", "nova_object.namespace": "nova",
              "nova_object.version": "1.4",
              "nova_object.data": {"name": "m1.tiny", "memory_mb": 64, "vcpus": 1,
                                   "root_gb": 1, "ephemeral_gb": 0}}
    return {"nova_object.name": "InstanceActionPayload", "nova_object.namespace": "nova",
            "nova_object.version": "1.8",
            "nova_object.data": {"uuid": instance_id, "host": host, "tenant_id": "t1",
                                 "user_id": "u1", "display_name": "vm", "flavor": flavor}}


class Nova:
    """Publishes delete.start the way nova-compute on ``host`` does (both formats)."""

    def __init__(self, broker, host):
        self.broker, self.host = broker, host
        self.legacy_notifier = oslo_messaging.Notifier(
            broker.transport, publisher_id=f"compute.{host}", driver="messaging",
            topics=[broker.legacy_topic])
        self.versioned_notifier = oslo_messaging.Notifier(
            broker.transport, publisher_id=f"nova-compute:{host}", driver="messagingv2",
            topics=[broker.versioned_topic])

    def legacy(self, instance_id=None):
        instance_id = instance_id or str(uuid.uuid4())
        self.legacy_notifier.info({}, "compute.instance.delete.start",
                                  legacy_payload(instance_id, self.host))
        return instance_id

    def versioned(self, instance_id=None):
        instance_id = instance_id or str(uuid.uuid4())
        self.versioned_notifier.info({}, "instance.delete.start",
                                     versioned_payload(instance_id, self.host))
        return instance_id


class Broker:
    def __init__(self, rabbit_url):
        self.run = uuid.uuid4().hex[:10]
        self.url = rabbit_url
        self.exchange = f"lst-nova-{self.run}"
        self.legacy_topic = f"lst-notifications-{self.run}"
        self.versioned_topic = f"lst-versioned-{self.run}"
        self.conf = make_conf(self.exchange)
        self.transport = oslo_messaging.get_notification_transport(self.conf, url=rabbit_url)
        self.listeners = []
        self.queues = {f"{self.legacy_topic}.info", f"{self.versioned_topic}.info"}

    def host(self, suffix):
        return f"lst-{self.run}-{suffix}"

    def listen(self, host, on_trigger=None, **heard):
        received: queue.Queue = queue.Queue()
        listen_transport = oslo_messaging.get_notification_transport(
            make_conf(self.exchange), url=self.url)
        listener = bus.NotificationListener(
            listen_transport, host=host, on_trigger=on_trigger or received.put,
            subscription=bus.Subscription(exchange=self.exchange, legacy_topic=self.legacy_topic,
                                          versioned_topic=self.versioned_topic, **heard),
            own_transport=True)
        listener.received = received
        self.listeners.append(listener)
        self.queues.add(listener.pool)
        listener.start()
        return listener

    def queue_state(self, name):
        """(messages, consumers) of a queue, by a passive declare."""
        with kombu.Connection(amqp_url(self.url)) as conn:
            _, messages, consumers = conn.channel().queue_declare(queue=name, passive=True)
            return messages, consumers

    def close(self):
        try:
            for listener in self.listeners:
                assert listener.stop()
        finally:
            self.transport.cleanup()
            with kombu.Connection(amqp_url(self.url)) as conn:
                channel = conn.channel()
                for name in sorted(self.queues):
                    channel.queue_delete(queue=name)
                channel.exchange_delete(exchange=self.exchange)


@pytest.fixture
def broker(rabbit_url):
    real = Broker(rabbit_url)
    yield real
    real.close()


def ids(listener, count):
    return [listener.received.get(timeout=WAIT).instance_id for _ in range(count)]


def wait_for(condition, timeout=WAIT):
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.02)


def test_both_formats_arrive_and_other_hosts_are_ignored(broker):
    host = broker.host("a")
    listener = broker.listen(host)
    assert listener.pool == f"lifecycle-stats.{host}"
    assert broker.queue_state(listener.pool)[1] == 1  # one consumer on the per-host queue
    nova, elsewhere = Nova(broker, host), Nova(broker, broker.host("z"))
    elsewhere.legacy()
    elsewhere.versioned()
    expected = {nova.legacy(), nova.versioned()}
    got = [listener.received.get(timeout=WAIT) for _ in range(2)]
    assert {t.instance_id for t in got} == expected
    assert {t.event_type for t in got} == {"compute.instance.delete.start",
                                           "instance.delete.start"}
    assert all(t.host == host and t.identity["memory_mb"] == 64 for t in got)
    wait_for(lambda: listener.counters.get("bus.ignored") == 2)
    assert listener.received.empty()


def test_two_hosts_each_get_their_own_though_both_hear_both(broker):
    one, two = broker.host("one"), broker.host("two")
    first, second = broker.listen(one), broker.listen(two)
    nova_one, nova_two = Nova(broker, one), Nova(broker, two)
    sent_one = {nova_one.legacy(), nova_one.versioned()}
    sent_two = {nova_two.legacy(), nova_two.versioned()}
    assert set(ids(first, 2)) == sent_one
    assert set(ids(second, 2)) == sent_two
    wait_for(lambda: first.counters.get("bus.ignored") == 2
             and second.counters.get("bus.ignored") == 2)


def test_a_shared_pool_would_lose_deletes(broker):
    """Why the pool is per host: listeners in one pool share one queue and split its messages."""
    one, two = broker.host("one"), broker.host("two")
    shared = f"lifecycle-stats.shared-{broker.run}"
    first, second = broker.listen(one, pool=shared), broker.listen(two, pool=shared)
    nova_one = Nova(broker, one)
    for _ in range(10):
        nova_one.legacy()
    wait_for(lambda: first.counters.get("bus.triggers.legacy")
             + second.counters.get("bus.ignored") == 10)
    assert first.counters.get("bus.triggers.legacy") < 10  # the rest went to the wrong host


def test_fifty_alternating_delete_starts_each_reach_on_trigger(broker):
    host = broker.host("lat")
    arrivals: queue.Queue = queue.Queue()
    listener = broker.listen(host, on_trigger=lambda t: arrivals.put(
        (t.instance_id, time.perf_counter())))
    nova = Nova(broker, host)
    latencies = []
    for n in range(50):
        started = time.perf_counter()
        sent = nova.legacy() if n % 2 == 0 else nova.versioned()
        instance_id, arrived = arrivals.get(timeout=WAIT)
        assert instance_id == sent
        latencies.append((arrived - started) * 1000)
    latencies.sort()
    median, p95 = statistics.median(latencies), latencies[int(len(latencies) * 0.95) - 1]
    print(f"\npublish→on_trigger over {len(latencies)} messages: median {median:.2f} ms, "
          f"p95 {p95:.2f} ms, max {latencies[-1]:.2f} ms")
    assert listener.counters.get("bus.triggers.legacy") == 25
    assert listener.counters.get("bus.triggers.versioned") == 25
    # Speed is measured by benchmarks/e2e_latency.py, never asserted here.
