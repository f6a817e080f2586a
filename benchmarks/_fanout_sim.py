"""The fan-out benchmark's simulated site: unique names, N lightweight agents (kombu consumers),
and nova's notification mix published at a set rate (benchmarks/fanout_scale.py)."""
from __future__ import annotations

import json
import os
import random
import threading
import time
import uuid

import kombu
import kombu.exceptions
import tenacity

RABBIT_URL = os.environ.get("LIFECYCLE_STATS_RABBIT_URL", "rabbit://guest:guest@127.0.0.1:5672/")
AMQP_URL = "amqp://" + RABBIT_URL.split("://", 1)[1]
# nova's mix: many instance.update per action, exists per instance per audit period, few deletes
MIX = (("update", 0.70), ("exists", 0.25), ("delete", 0.05))
EVENT_TYPES = {"update": ("compute.instance.update", "instance.update"),
               "exists": ("compute.instance.exists", "instance.exists"),
               "delete": ("compute.instance.delete.start", "instance.delete.start")}
BROKER_DOWN = (OSError, kombu.exceptions.OperationalError)


class Names:
    def __init__(self) -> None:
        self.run = uuid.uuid4().hex[:8]
        self.nova_exchange = f"lst-nova-{self.run}"
        self.topics = (f"lst-notifications-{self.run}", f"lst-versioned-{self.run}")
        self.router_exchange = f"lst-routed-{self.run}"
        self.router_queue = f"lst-router-{self.run}"

    def host(self, i: int) -> str:
        return f"lst-{self.run}-h{i}"

    def agent_queue(self, host: str) -> str:
        return f"lifecycle-stats.{host}"  # the router's host_queue_prefix default

# -- simulated agents --------------------------------------------------------------------------

class SimAgents:
    """One queue + consumer per host, spread over a few connections (one thread each)."""

    def __init__(self, hosts: list[str], queue_for, connections: int = 4):
        self.hosts = hosts
        self._queue_for = queue_for
        self.delivered = [0] * connections
        self.latencies_ms: dict[str, float] = {}  # delete id → ms, owner's receipt only
        self.wrong_host = [0] * connections  # another host's delete (direct: all of them)
        self._stop = threading.Event()
        self._ready = threading.Barrier(connections + 1)
        self._threads = [threading.Thread(target=self._serve, args=(i, hosts[i::connections]),
                                          daemon=True) for i in range(connections)]

    def start(self) -> None:
        for thread in self._threads:
            thread.start()
        self._ready.wait(120)

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(10)

    def total(self) -> int:
        return sum(self.delivered)

    def _serve(self, slot: int, hosts: list[str]) -> None:
        with kombu.Connection(AMQP_URL, heartbeat=0) as conn:
            channel = conn.channel()
            channel.basic_qos(0, 200, False)
            consumers = [kombu.Consumer(channel, [self._queue_for(host)], no_ack=False,
                                        on_message=self._handler(slot, host))
                         for host in hosts]
            for consumer in consumers:
                consumer.consume()
            self._ready.wait(120)
            while not self._stop.is_set():
                try:
                    conn.drain_events(timeout=0.2)
                except TimeoutError:
                    pass

    def _handler(self, slot: int, host: str):
        def on_message(message) -> None:
            now = time.monotonic()
            self.delivered[slot] += 1
            headers = message.headers or {}
            owner = headers.get("bench-delete")
            if owner == host:
                self.latencies_ms[headers["bench-id"]] = (now - headers["bench-sent"]) * 1e3
            elif owner is not None:
                self.wrong_host[slot] += 1
            message.ack()
        return on_message


# -- nova --------------------------------------------------------------------------------------

def envelope(event_type: str, host: str, versioned: bool) -> bytes:
    instance_id = str(uuid.uuid4())
    if versioned:
        payload = {"nova_object.name": "InstanceActionPayload", "nova_object.namespace": "nova",
                   "nova_object.version": "1.8",
                   "nova_object.data": {"uuid": instance_id, "host": host,
                                        "tenant_id": "t" * 32, "user_id": "u" * 32,
                                        "display_name": "vm", "state": "active",
                                        "metadata": {"k%d" % i: "v" * 20 for i in range(20)}}}
        publisher = f"nova-compute:{host}"
    else:
        payload = {"instance_id": instance_id, "host": host, "tenant_id": "t" * 32,
                   "user_id": "u" * 32, "display_name": "vm", "state": "active",
                   "instance_type": "m1.small", "memory_mb": 2048,
                   "metadata": {"k%d" % i: "v" * 20 for i in range(20)}}
        publisher = f"compute.{host}"
    message = {"message_id": str(uuid.uuid4()), "publisher_id": publisher,
               "event_type": event_type, "priority": "INFO", "payload": payload,
               "timestamp": "2026-11-22 02:00:00.000000"}
    return json.dumps({"oslo.version": "2.0", "oslo.message": json.dumps(message)}).encode()


def publish(names: Names, hosts: list[str], rate: float, seconds: float, seed: int) -> dict:
    """nova's mix at `rate` messages/s for `seconds`; {kind: count} and the delete ids."""
    rng = random.Random(seed)
    kinds, weights = zip(*MIX)
    sent = {kind: 0 for kind in kinds}
    sent["delete_ids"] = []
    with kombu.Connection(AMQP_URL, transport_options={"confirm_publish": True}) as conn:
        producer = kombu.Producer(conn.channel())
        exchange = kombu.Exchange(names.nova_exchange, "topic", durable=False)
        started = time.monotonic()
        for n in range(int(rate * seconds)):
            time.sleep(max(0.0, started + n / rate - time.monotonic()))
            kind = rng.choices(kinds, weights)[0]
            host, versioned = rng.choice(hosts), rng.random() < 0.5
            headers = {}
            if kind == "delete":
                delete_id = uuid.uuid4().hex
                headers = {"bench-delete": host, "bench-id": delete_id,
                           "bench-sent": time.monotonic()}
                sent["delete_ids"].append(delete_id)
            producer.publish(envelope(EVENT_TYPES[kind][versioned], host, versioned),
                             exchange=exchange, routing_key=f"{names.topics[versioned]}.info",
                             content_type="application/json", content_encoding="utf-8",
                             headers=headers, delivery_mode=2)
            sent[kind] += 1
    return sent

def queue_state(name: str) -> tuple[int, int]:
    try:
        with kombu.Connection(AMQP_URL) as conn:
            _, messages, consumers = conn.channel().queue_declare(queue=name, passive=True)
            return messages, consumers
    except Exception:  # not declared yet
        return 0, 0


@tenacity.retry(stop=tenacity.stop_after_delay(60), wait=tenacity.wait_fixed(2),
                retry=tenacity.retry_if_exception_type(BROKER_DOWN), reraise=True)
def delete_entities(queues: list[str], exchanges: list[str]) -> None:
    """Waits out a broker that another run on this machine stops and starts."""
    with kombu.Connection(AMQP_URL) as conn:
        channel = conn.channel()
        for name in queues:
            channel.queue_delete(queue=name)
        for name in exchanges:
            channel.exchange_delete(exchange=name)
