"""The shipped queue policy (etc/rabbitmq/lifecycle-stats-queue-policy.sh) on the real broker.

Direct mode: an agent's queue receives every INFO message of nova's exchange, so the policy
bounds it by age only. Tested by an agent outage under nova-like traffic: every delete.start
sent while the agent was down reaches it afterwards, while a length bound (what the script set
before) drops the oldest messages, delete.start included, under the same traffic.
Router mode: a full host queue refuses new events and the router parks them.

Each policy is applied with a pattern that matches only this run's queues, so other queues on
the shared broker are never touched, and it is cleared afterwards.
"""
from __future__ import annotations

import datetime
import json
import pathlib
import queue
import subprocess
import time
import uuid

import kombu
import pytest
from oslo_config import cfg

from lifecycle_stats.listeners import bus
from lifecycle_stats.listeners.router import relay
from tests.integration import harness
from tests.integration.conftest import RABBIT_VHOST, amqp_url
from tests.support.nova import legacy_start_payload

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

SCRIPT = (pathlib.Path(__file__).resolve().parents[2]
          / "etc/rabbitmq/lifecycle-stats-queue-policy.sh")
TTL_MS = 3000
# nova-like traffic: 50 INFO messages/s (a cluster of a few thousand instances: the hourly
# exists in both formats plus instance.update and the .start/.end of routine actions) for a
# 5-minute agent outage. ~1.9 KB per message, as nova's instance payloads are.
NOVA_RATE, OUTAGE_S = 50, 300
TRAFFIC = NOVA_RATE * OUTAGE_S
DELETES = 20  # delete.start for the down agent's host, the first one first of all
OLD_BOUND = TRAFFIC // 3  # a length bound as the script set before (scaled to the outage)


def policy(*args: str) -> subprocess.CompletedProcess:
    """The script on the integration tier's vhost (tools/start_rabbitmq.sh)."""
    return subprocess.run(["sh", str(SCRIPT), "--vhost", RABBIT_VHOST, *args],
                          capture_output=True, text=True, timeout=60, check=True)


def only(queue_name: str) -> str:
    return f"^{queue_name.replace('.', '[.]')}$"


def queue_info(queue_name: str) -> dict[str, str]:
    fields = ["name", "messages", "message_bytes", "memory", "policy"]  # RabbitMQ 3.10's
    out = subprocess.run(["rabbitmqctl", "-q", "list_queues", "-p", RABBIT_VHOST,
                          "--no-table-headers", *fields],
                         capture_output=True, text=True, timeout=60, check=True).stdout
    for line in out.splitlines():
        values = line.split("\t")
        if values[0] == queue_name:
            return dict(zip(fields, values))
    raise AssertionError(f"queue {queue_name} not listed")


def depth(conn: kombu.Connection, queue_name: str) -> int:
    """Messages ready, by a passive declare (fast: rabbitmqctl takes seconds to start)."""
    return conn.default_channel.queue_declare(queue=queue_name, passive=True).message_count


def direct_listener(rabbit_url: str, names: harness.BusNames, host: str, triggers: queue.Queue):
    """The agent's bus listener in direct mode, as agent.py builds it from its config."""
    conf = cfg.ConfigOpts()
    bus.register_opts(conf)
    conf([], project="lifecycle-stats-policy-test", default_config_files=[])
    for option, value in (("transport_url", rabbit_url), ("exchange", names.nova_exchange),
                          ("legacy_topic", names.legacy_topic),
                          ("versioned_topic", names.versioned_topic)):
        conf.set_override(option, value, group=bus.GROUP)
    return bus.from_conf(conf, host, triggers.put)


def envelope(event_type: str, host: str, message_id: str, instance_id: str) -> bytes:
    """An oslo.messaging 2.0 envelope as nova-compute's legacy notifier sends it."""
    payload = {**legacy_start_payload(instance_id, host), "state_description": "",
               "image_meta": {"base_image_ref": str(uuid.uuid4()), "min_disk": "1",
                              "container_format": "bare", "disk_format": "qcow2"},
               "metadata": {}, "access_ip_v4": None, "access_ip_v6": None,
               "launched_at": "2026-12-04T10:00:00.000000", "node": host,
               "fixed_ips": [{"address": "10.0.0.5", "type": "fixed", "version": 4,
                              "label": "private", "meta": {}, "floating_ips": []}],
               "image_ref_url": "http://glance:9292/images/" + str(uuid.uuid4()),
               "kernel_id": "", "ramdisk_id": "", "architecture": "x86_64",
               "os_type": None, "cell_name": "", "reservation_id": "r-" + "x" * 8,
               "availability_zone": "nova", "progress": "", "terminated_at": "",
               "deleted_at": "", "created_at": "2026-12-04 09:59:00+00:00",
               "hostname": "vm", "host_name": host, "locked": False, "tags": [],
               "old_state": "active", "state": "active", "old_task_state": None,
               "new_task_state": None, "audit_period_beginning": "2026-12-04T10:00:00Z",
               "audit_period_ending": "2026-12-04T10:05:00Z",
               "bandwidth": {}, "description": "d" * 600}
    message = {"message_id": message_id, "publisher_id": f"compute.{host}",
               "event_type": event_type, "priority": "INFO", "payload": payload,
               "timestamp": str(datetime.datetime.now(datetime.timezone.utc).replace(
                   tzinfo=None))}
    return json.dumps({"oslo.version": "2.0", "oslo.message": json.dumps(message)}).encode()


def nova_traffic(host: str, others: list[str]) -> tuple[list[tuple[str, bytes]], list[str]]:
    """TRAFFIC messages; DELETES of them are delete.start for ``host`` (the first message and
    then evenly spread), the rest other hosts' routine INFO messages. Returns (messages as
    (message id, body), (message id, instance id) of the delete.starts)."""
    step = TRAFFIC // DELETES
    events = ("compute.instance.update", "compute.instance.exists",
              "compute.instance.power_on.end", "compute.instance.create.end")
    messages, deletes = [], []
    for n in range(TRAFFIC):
        message_id, instance_id = str(uuid.uuid4()), str(uuid.uuid4())
        if n % step == 0 and len(deletes) < DELETES:
            messages.append((message_id, envelope("compute.instance.delete.start", host,
                                                  message_id, instance_id)))
            deletes.append((message_id, instance_id))
        else:
            messages.append((message_id, envelope(events[n % len(events)],
                                                  others[n % len(others)], message_id,
                                                  instance_id)))
    return messages, deletes


@pytest.fixture
def names(rabbit_url):
    made = harness.BusNames()
    yield made
    harness.delete_queues(amqp_url(rabbit_url), made.queues([]), [made.nova_exchange])


def test_direct_mode_outage_under_nova_traffic_loses_no_delete_start(rabbit_url, names):
    host = f"lst-qp-{uuid.uuid4().hex[:8]}"
    agent_queue = bus.default_pool(host)
    bounded = f"{agent_queue}.length-bound"
    triggers: queue.Queue = queue.Queue()
    listener = direct_listener(rabbit_url, names, host, triggers)
    listener.start()  # declares the agent's queue on nova's topics, as the agent does
    listener.stop()  # ... and the agent goes down
    name = f"lst-qp-{uuid.uuid4().hex[:8]}"
    policy("--mode", "direct", "--name", name, "--pattern", only(agent_queue),
           "--expires-ms", "600000")
    bound = f"{name}-old"
    subprocess.run(["rabbitmqctl", "-q", "set_operator_policy", "-p", RABBIT_VHOST,
                    "--apply-to", "queues", bound, only(bounded),
                    json.dumps({"max-length": OLD_BOUND})], check=True, timeout=60)
    messages, deletes = nova_traffic(host, [f"{host}-other-{n}" for n in range(7)])
    try:
        with kombu.Connection(amqp_url(rabbit_url), connect_timeout=5,
                              transport_options={"confirm_publish": True}) as conn:
            nova = kombu.Exchange(names.nova_exchange, "topic", durable=False)
            kombu.Queue(bounded, exchange=nova, routing_key=f"{names.legacy_topic}.info",
                        durable=False)(conn.default_channel).declare()
            time.sleep(1.0)  # policies reach queues asynchronously
            started = time.monotonic()
            producer = kombu.Producer(conn.default_channel, exchange=nova)
            for _, body in messages:
                producer.publish(body, routing_key=f"{names.legacy_topic}.info",
                                 content_type="application/json", content_encoding="utf-8")
            published_s = time.monotonic() - started
            info = queue_info(agent_queue)
            assert int(info["messages"]) == TRAFFIC  # all of it waits: no length bound
            # the same traffic under a length bound: the first delete.start is gone
            head = kombu.Queue(bounded, no_declare=True)(conn.default_channel).get(no_ack=True)
            assert json.loads(json.loads(head.body)["oslo.message"])["message_id"] \
                == messages[TRAFFIC - OLD_BOUND][0] != deletes[0][0]
        started = time.monotonic()
        listener = direct_listener(rabbit_url, names, host, triggers)
        listener.start()  # the agent is back
        got = [triggers.get(timeout=120) for _ in deletes]
        drained_s = time.monotonic() - started
        assert [t.instance_id for t in got] == [instance for _, instance in deletes]
        per_message = int(info["message_bytes"]) / TRAFFIC
        print(f"\n{TRAFFIC} messages ({NOVA_RATE}/s for {OUTAGE_S} s) published in "
              f"{published_s:.1f} s; queue held {int(info['message_bytes']) / 1e6:.1f} MB "
              f"of bodies ({per_message:.0f} B/message), {int(info['memory']) / 1e6:.1f} MB "
              f"of queue process memory; all {DELETES} delete.start received "
              f"{drained_s:.1f} s after the agent came back; a max-length {OLD_BOUND} "
              f"kept {OLD_BOUND} and dropped the first delete.start")
    finally:
        listener.stop()
        subprocess.run(["rabbitmqctl", "-q", "clear_operator_policy", "-p", RABBIT_VHOST,
                        bound], timeout=60)
        policy("--name", name, "--clear")
        harness.delete_queues(amqp_url(rabbit_url), [agent_queue, bounded])


def test_direct_mode_ages_messages_out(rabbit_url, names):
    host = f"lst-qp-{uuid.uuid4().hex[:8]}"
    agent_queue = bus.default_pool(host)
    listener = direct_listener(rabbit_url, names, host, queue.Queue())
    listener.start()
    listener.stop()
    name = f"lst-qp-{uuid.uuid4().hex[:8]}"
    policy("--name", name, "--pattern", only(agent_queue), "--message-ttl-ms", str(TTL_MS),
           "--expires-ms", "600000")
    try:
        listed = subprocess.run(["rabbitmqctl", "-q", "list_operator_policies", "-p",
                                 RABBIT_VHOST], capture_output=True, text=True, timeout=60,
                                check=True).stdout
        assert name in listed and f'"message-ttl":{TTL_MS}' in listed.replace(" ", "")
        time.sleep(1.0)
        with kombu.Connection(amqp_url(rabbit_url), connect_timeout=5,
                              transport_options={"confirm_publish": True}) as conn:
            producer = kombu.Producer(conn.default_channel)
            for n in range(3):
                producer.publish({"n": n}, exchange=names.nova_exchange,
                                 routing_key=f"{names.legacy_topic}.info", serializer="json")
            assert depth(conn, agent_queue) == 3  # publisher confirms: all enqueued
            deadline = time.monotonic() + TTL_MS / 1000 + 10
            while depth(conn, agent_queue) and time.monotonic() < deadline:
                time.sleep(0.2)
            assert depth(conn, agent_queue) == 0  # expired after message-ttl
    finally:
        policy("--name", name, "--clear")
        harness.delete_queues(amqp_url(rabbit_url), [agent_queue])
    assert name not in subprocess.run(["rabbitmqctl", "-q", "list_operator_policies", "-p",
                                       RABBIT_VHOST], capture_output=True, text=True,
                                      timeout=60).stdout


@pytest.mark.allow_error_logs
def test_router_mode_full_host_queue_parks_events(rabbit_url):
    """A host queue at its max-length (agent down for long) refuses new events; the router
    parks each in its parking queue, counted, instead of the broker dropping the oldest."""
    from tests.integration.router_site import Site, wait_for

    site = Site(rabbit_url)
    name = f"lst-qp-{uuid.uuid4().hex[:8]}"
    try:
        replica = site.replica()
        host = site.host("full")
        host_queue = f"lifecycle-stats.{host}"
        policy("--mode", "router", "--name", name, "--pattern", only(host_queue),
               "--max-length", "2")
        time.sleep(1.0)
        nova = site.nova(host)
        sent = [nova.legacy() for _ in range(2)]
        wait_for(lambda: replica.counters.get("router.routed") == 2)
        wait_for(lambda: queue_info(host_queue)["policy"] == f"{name}-overflow")
        parked = [nova.legacy() for _ in range(3)]
        wait_for(lambda: replica.counters.get("router.parked") == 3)
        assert site.queue_state(host_queue)[0] == 2
        with kombu.Connection(amqp_url(rabbit_url)) as conn:
            got = []
            for _ in parked:
                message = kombu.Queue(site.parking_queue, no_declare=True)(
                    conn.default_channel).get(no_ack=True)
                got.append((relay.decode(message.body)[2]["instance_id"],
                            message.headers["x-lifecycle-stats-host"]))
        assert got == [(instance, host) for instance in parked]
        agent = site.agent(host)
        assert {agent.received.get(timeout=15).instance_id for _ in sent} == set(sent)
    finally:
        policy("--name", name, "--clear")
        site.close()


def test_policy_script_refuses_bounds_that_would_drop_events():
    def run(*args):
        return subprocess.run(["sh", str(SCRIPT), *args], capture_output=True, text=True,
                              timeout=30)

    result = run("--mode", "router", "--max-length", "lots")
    assert result.returncode == 2 and "not a number: lots" in result.stderr
    result = run("--max-length", "1000")  # direct mode: a length bound drops delete.start
    assert result.returncode == 2 and "would drop delete.start" in result.stderr
    result = run("--mode", "router", "--message-ttl-ms", "1000")
    assert result.returncode == 2 and "silently" in result.stderr
    result = run("--mode", "fanout")
    assert result.returncode == 2 and "direct or router" in result.stderr


def test_router_mode_names_the_regular_policies_it_may_displace(rabbit_url):
    """Only one regular policy applies to a queue: the router mode's overflow policy (priority
    10) silently replaced a site's lower-priority one, an ha-all say, on the host queues (found
    by review). The script now names every other regular policy of the vhost."""
    name = f"lst-qp-{uuid.uuid4().hex[:8]}"
    site_policy = f"lst-site-{uuid.uuid4().hex[:8]}"
    pattern = only(f"lifecycle-stats.{name}")
    subprocess.run(["rabbitmqctl", "-q", "set_policy", "-p", RABBIT_VHOST, "--priority", "0",
                    site_policy, pattern, '{"max-length-bytes": 1000000000}'],
                   capture_output=True, text=True, timeout=60, check=True)
    try:
        done = policy("--mode", "router", "--name", name, "--pattern", pattern)
        assert f"regular policy {site_policy} (pattern {pattern}, priority 0" in done.stderr
        assert f"regular policy {name}-overflow" not in done.stderr
    finally:
        policy("--mode", "router", "--name", name, "--clear")
        subprocess.run(["rabbitmqctl", "-q", "clear_policy", "-p", RABBIT_VHOST, site_policy],
                       capture_output=True, timeout=60)
