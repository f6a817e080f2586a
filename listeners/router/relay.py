"""The relay: nova's shared notification queue → one routing key per host, confirmed.

Replicas compete on ONE queue (``queue``) bound to nova's ``notifications.info`` and
``versioned_notifications.info``: RabbitMQ hands each message to one replica. A replica keeps
only the lifecycle `.start` events (events.LIFECYCLE_START_EVENTS), republishes each, body and
properties unchanged, to ``out_exchange`` with routing key ``lifecycle_stats.<host>.info`` and
acknowledges the input only after the broker confirmed the republish (publisher confirms).
So a replica killed at any point loses nothing: what it had not acknowledged is redelivered
to another replica (at-least-once; the agent's flush is idempotent per instance).

Two connections: deliveries arrive on one while the other waits for a publish confirm (on one
connection the confirm wait would dispatch further deliveries re-entrantly).

The router also declares each host's agent queue (``<host_queue_prefix><host>``, as the agent
declares it), so a host whose agent is down or not yet started keeps its events, as nova's own
default queues do.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import socket
import threading

import amqp.exceptions
import kombu
import tenacity

from lifecycle_stats.counters import Counters
from lifecycle_stats.exceptions import RejectedMessage
from lifecycle_stats.listeners.router import events

LOG = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class RelaySettings:
    url: str  # kombu URL(s), ';'-separated for failover
    queue: str = "lifecycle-stats-router"
    nova_exchange: str = "nova"
    topics: tuple[str, ...] = ("notifications", "versioned_notifications")
    out_exchange: str = "lifecycle_stats"
    host_queue_prefix: str = "lifecycle-stats."  # the agent's default pool
    durable: bool = False  # oslo.messaging's amqp_durable_queues: must match nova and agents
    quorum: bool = False  # oslo.messaging's rabbit_quorum_queue
    prefetch: int = 64
    heartbeat: float = 30.0


def decode(body: bytes | str) -> tuple[object, object, object]:
    """(event_type, publisher_id, payload) of an oslo.messaging notification, envelope 1 or 2."""
    try:
        message = json.loads(body)
        if isinstance(message, dict) and "oslo.message" in message:
            message = json.loads(message["oslo.message"])
    except (ValueError, TypeError) as exc:
        raise RejectedMessage(f"not an oslo.messaging notification: {exc}") from None
    if not isinstance(message, dict):
        raise RejectedMessage(f"notification must be a dict, got {type(message).__name__}")
    return message.get("event_type"), message.get("publisher_id"), message.get("payload")


class Relay:
    """One router replica; run() blocks until stop(), reconnecting (tenacity) meanwhile."""

    def __init__(self, settings: RelaySettings, counters: Counters | None = None):
        self.settings = settings
        self.counters = counters if counters is not None else Counters()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._declared_hosts: set[str] = set()
        self.ready = threading.Event()  # set once consuming (tests, benchmarks)

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> None:
        self._thread = threading.Thread(target=self.run, name="router-relay", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def run(self) -> None:
        retrying = tenacity.Retrying(
            retry=tenacity.retry_if_exception(lambda _: not self._stopping.is_set()),
            wait=tenacity.wait_exponential(multiplier=0.2, max=10.0),
            before_sleep=self._log_reconnect, reraise=True)
        try:
            retrying(self._serve)
        except Exception:
            if not self._stopping.is_set():
                raise

    def _log_reconnect(self, state: tenacity.RetryCallState) -> None:
        self.counters.incr("router.reconnects")
        self.ready.clear()
        LOG.warning("router connection lost (%s); reconnecting", state.outcome.exception())

    # -- serving -----------------------------------------------------------------------------

    def _serve(self) -> None:
        s = self.settings
        with kombu.Connection(s.url, heartbeat=s.heartbeat) as consuming, \
                kombu.Connection(s.url, heartbeat=s.heartbeat,
                                 transport_options={"confirm_publish": True}) as publishing:
            self._declared_hosts.clear()  # a new connection may face a restarted broker
            self._publishing = publishing
            producer = kombu.Producer(publishing.channel(), exchange=self._out_exchange())
            producer.declare()
            channel = consuming.channel()
            channel.basic_qos(0, s.prefetch, False)
            handler = lambda message: self._on_message(message, producer)  # noqa: E731
            with kombu.Consumer(channel, [self._input_queue()], on_message=handler,
                                no_ack=False):
                self.ready.set()
                LOG.info("router consuming %s from %s/%s", s.queue, s.nova_exchange,
                         ",".join(s.topics))
                self._drain(consuming)

    def _drain(self, consuming: kombu.Connection) -> None:
        while not self._stopping.is_set():
            try:
                consuming.drain_events(timeout=0.5)
            except socket.timeout:
                consuming.heartbeat_check()

    def _on_message(self, message, producer: kombu.Producer) -> None:
        try:
            event_type, publisher_id, payload = decode(message.body)
            if not events.is_lifecycle_start(event_type, payload):
                self.counters.incr("router.dropped")
                message.ack()
                return
            host = events.origin_host(event_type, publisher_id, payload)
            key = events.routing_key(host)
        except RejectedMessage as exc:
            self.counters.incr("router.malformed")
            LOG.warning("dropping a malformed message: %s", exc)
            message.ack()  # never redelivered: it would fail the same way forever
            return
        self._republish(message, producer, host, key)
        message.ack()  # only now: the broker has confirmed the copy
        self.counters.incr("router.routed")

    def _republish(self, message, producer: kombu.Producer, host: str, key: str) -> None:
        if host not in self._declared_hosts:
            self._declare_host_queue(producer, host, key)
            self._declared_hosts.add(host)
        # confirm_publish: returns once the broker acknowledged, raises on a nack
        producer.publish(message.body, routing_key=key, content_type=message.content_type,
                         content_encoding=message.content_encoding,
                         headers=message.headers or {}, delivery_mode=2)

    def _declare_host_queue(self, producer: kombu.Producer, host: str, key: str) -> None:
        """Declare the host's queue; one declared otherwise (an agent with other durability
        settings) is counted and logged, and the event is still published to it."""
        try:
            self._host_queue(host, key)(producer.channel).declare()
        except amqp.exceptions.PreconditionFailed as exc:
            self.counters.incr("router.host_queue_mismatch")
            LOG.error("queue %s%s exists with other arguments than [oslo_messaging_rabbit] "
                      "gives the router (%s); publishing to it anyway",
                      self.settings.host_queue_prefix, host, exc)
            producer.revive(self._publishing.channel())  # the broker closed the channel

    # -- entities ----------------------------------------------------------------------------

    def _queue_arguments(self) -> dict:
        return {"x-queue-type": "quorum"} if self.settings.quorum else {}

    def _durable(self) -> bool:
        return self.settings.durable or self.settings.quorum

    def _out_exchange(self) -> kombu.Exchange:
        return kombu.Exchange(self.settings.out_exchange, "topic", durable=self._durable())

    def _input_queue(self) -> kombu.Queue:
        s = self.settings
        nova = kombu.Exchange(s.nova_exchange, "topic", durable=self._durable())
        bindings = [kombu.binding(nova, routing_key=f"{topic}{events.PRIORITY_SUFFIX}")
                    for topic in s.topics]
        return kombu.Queue(s.queue, bindings=bindings, durable=self._durable(),
                           auto_delete=False, queue_arguments=self._queue_arguments())

    def _host_queue(self, host: str, key: str) -> kombu.Queue:
        return kombu.Queue(self.settings.host_queue_prefix + host,
                           exchange=self._out_exchange(), routing_key=key,
                           durable=self._durable(), auto_delete=False,
                           queue_arguments=self._queue_arguments())
