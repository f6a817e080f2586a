"""lifecycle_stats.listeners.bus on the real RabbitMQ, fed by oslo.messaging Notifiers configured as nova's.

Every test uses its own exchange, topics and host names (so nothing here lands in a real
``notifications.info`` queue), and deletes the queues and the exchange it made.
"""
from __future__ import annotations

import queue
import statistics
import time

import pytest

from tests.integration import harness
from tests.support.nova import IDENTITY

pytestmark = pytest.mark.integration
WAIT = 10.0


@pytest.fixture
def broker(rabbit_url):
    real = harness.Broker(rabbit_url)
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
    nova, elsewhere = broker.nova(host), broker.nova(broker.host("z"))
    elsewhere.legacy()
    elsewhere.versioned()
    expected = {nova.legacy(), nova.versioned()}
    got = [listener.received.get(timeout=WAIT) for _ in range(2)]
    assert {t.instance_id for t in got} == expected
    assert {t.event_type for t in got} == {"compute.instance.delete.start",
                                           "instance.delete.start"}
    assert all(t.host == host and t.identity["memory_mb"] == IDENTITY["memory_mb"] for t in got)
    wait_for(lambda: listener.counters.get("bus.ignored") == 2)
    assert listener.received.empty()


def test_two_hosts_each_get_their_own_though_both_hear_both(broker):
    one, two = broker.host("one"), broker.host("two")
    first, second = broker.listen(one), broker.listen(two)
    nova_one, nova_two = broker.nova(one), broker.nova(two)
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
    nova_one = broker.nova(one)
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
    nova = broker.nova(host)
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
