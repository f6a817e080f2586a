"""The shipped queue policy (etc/rabbitmq/lifecycle-stats-queue-policy.sh) on the real broker:
it bounds an agent's per-host queue by length (oldest dropped first) and by message age.

The queue is declared exactly as the agent declares it (listeners/bus.py with its default
per-host pool); the policy is applied with a pattern that matches only this run's queue, so
other queues on the shared broker are never touched, and it is cleared afterwards.
"""
from __future__ import annotations

import pathlib
import subprocess
import time
import uuid

import kombu
import oslo_messaging
import pytest
from oslo_config import cfg

from lifecycle_stats.counters import Counters
from lifecycle_stats.listeners import bus
from tests.integration import harness
from tests.integration.conftest import RABBIT_VHOST, amqp_url

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

SCRIPT = pathlib.Path(__file__).resolve().parents[2] / "etc/rabbitmq/lifecycle-stats-queue-policy.sh"
MAX_LENGTH = 5
TTL_MS = 3000
LIST_POLICIES = ["rabbitmqctl", "-q", "list_operator_policies", "-p", RABBIT_VHOST]


def policy(*args: str) -> subprocess.CompletedProcess:
    """The script on the integration tier's vhost (tools/start_rabbitmq.sh)."""
    return subprocess.run(["sh", str(SCRIPT), "--vhost", RABBIT_VHOST, *args],
                          capture_output=True, text=True, timeout=60, check=True)


@pytest.fixture
def idle_agent_queue(rabbit_url):
    """The agent's queue for a unique host, declared by the real listener, then left without
    a consumer (an agent that is down). Yields (queue name, names, kombu connection)."""
    names = harness.BusNames()
    host = f"lst-qp-{uuid.uuid4().hex[:8]}"
    conf = cfg.ConfigOpts()
    conf([], project="lifecycle-stats-policy-test", default_config_files=[])
    transport = oslo_messaging.get_notification_transport(conf, url=rabbit_url)
    listener = bus.NotificationListener(
        transport, host=host, on_trigger=lambda t: None,
        subscription=bus.Subscription(exchange=names.nova_exchange,
                                      legacy_topic=names.legacy_topic,
                                      versioned_topic=names.versioned_topic),
        counters=Counters())
    listener.start()
    listener.stop()
    transport.cleanup()
    queue = bus.default_pool(host)
    # Publisher confirms: publish() returns once the broker enqueued (and capped) the message.
    conn = kombu.Connection(amqp_url(rabbit_url), connect_timeout=5,
                            transport_options={"confirm_publish": True})
    try:
        yield queue, names, conn
    finally:
        conn.release()
        harness.delete_queues(amqp_url(rabbit_url), [queue] + names.queues([]),
                              [names.nova_exchange])


def queue_depth(conn: kombu.Connection, queue: str) -> int:
    return conn.default_channel.queue_declare(queue=queue, passive=True).message_count


def test_policy_caps_length_and_age_of_a_down_agents_queue(idle_agent_queue):
    queue, names, conn = idle_agent_queue
    name = f"lst-qp-{uuid.uuid4().hex[:8]}"
    policy("--name", name, "--pattern", f"^{queue.replace('.', '[.]')}$",
           "--max-length", str(MAX_LENGTH), "--message-ttl-ms", str(TTL_MS),
           "--expires-ms", "600000")
    try:
        listed = subprocess.run(LIST_POLICIES, capture_output=True, text=True, timeout=60,
                                check=True).stdout
        assert name in listed and f'"max-length":{MAX_LENGTH}' in listed.replace(" ", "")
        time.sleep(1.0)  # policies reach queues asynchronously
        producer = kombu.Producer(conn.default_channel)
        for n in range(MAX_LENGTH + 3):
            producer.publish({"n": n}, exchange=names.nova_exchange,
                             routing_key=f"{names.legacy_topic}.info", serializer="json")
        assert queue_depth(conn, queue) == MAX_LENGTH  # the 3 oldest were dropped
        first = kombu.Queue(queue, no_declare=True)(conn.default_channel).get(no_ack=False)
        assert first.payload == {"n": 3}
        first.requeue()
        deadline = time.monotonic() + TTL_MS / 1000 + 10
        while queue_depth(conn, queue) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert queue_depth(conn, queue) == 0  # expired after message-ttl
    finally:
        policy("--name", name, "--clear")
    assert name not in subprocess.run(LIST_POLICIES, capture_output=True, text=True,
                                      timeout=60).stdout


def test_policy_script_rejects_bad_numbers():
    result = subprocess.run(["sh", str(SCRIPT), "--max-length", "lots"], capture_output=True,
                            text=True, timeout=30)
    assert result.returncode == 2 and "not a number: lots" in result.stderr
