"""The relay: nova's shared notification queue → one routing key per host, confirmed.

Replicas compete on ONE queue (``queue``, durable unless ``queue_durable`` is off) bound to
nova's ``notifications.info`` and ``versioned_notifications.info``: RabbitMQ hands each
message to one replica. A replica keeps only the events a host's agent uses
(events.ROUTED_EVENTS), republishes each, body and properties unchanged, to ``out_exchange``
with routing key ``lifecycle_stats.<host>.info`` and acknowledges the input only after the
broker confirmed the republish (publisher confirms). So a replica killed at any point loses
nothing: what it had not acknowledged is redelivered to another replica (at-least-once; the
agent's flush is idempotent per instance).

Every republish is ``mandatory``: a host queue deleted meanwhile (by hand, by an ``expires``
policy) makes the broker return the message; the router counts it (``router.returned``),
declares the queue again and republishes (tenacity), so nothing is dropped silently. A host
queue that is full (a length bound with reject-publish) nacks: the event is parked
(host_queues). Events nobody consumes are counted and logged (host_queues).

Two connections: deliveries arrive on one while the other waits for a publish confirm (on one
connection the confirm wait would dispatch further deliveries re-entrantly). Both send
heartbeats: the relay's one thread tends the publishing connection between deliveries (reads
what the broker sent, heartbeat_check), so a quiet spell does not cost a reconnect.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import socket
import threading
import time

import amqp.exceptions
import kombu
import tenacity

from lifecycle_stats.counters import Counters
from lifecycle_stats.exceptions import RejectedMessage
from lifecycle_stats.listeners.router import events
from lifecycle_stats.listeners.router.host_queues import HOST_HEADER, HostQueues

LOG = logging.getLogger(__name__)
TEND_TIMEOUT = 0.01  # seconds the publishing connection is read when tended
TEND_EVERY = 1.0  # seconds between tendings: far below any heartbeat, rare under load


class Unroutable(Exception):
    """The broker returned a mandatory publish: no queue is bound to the routing key."""


@dataclasses.dataclass(frozen=True)
class RelaySettings:
    url: str  # kombu URL(s), ';'-separated for failover
    queue: str = "lifecycle-stats-router"
    nova_exchange: str = "nova"
    topics: tuple[str, ...] = ("notifications", "versioned_notifications")
    out_exchange: str = "lifecycle_stats"
    host_queue_prefix: str = "lifecycle-stats."  # the agent's default pool
    # oslo.messaging's amqp_durable_queues: nova's exchange, which nova declares too.
    durable: bool = False
    quorum: bool = False  # oslo.messaging's rabbit_quorum_queue
    queue_durable: bool = True  # the router's own queue, which only the router declares
    # the out exchange and the host queues; agents in router mode declare them too, durable
    # unless their [notification_listener] router_durable_queues is off (listeners.bus)
    host_durable: bool = True
    parking_queue: str = "lifecycle-stats-parked"
    prefetch: int = 64
    heartbeat: float = 60.0  # [oslo_messaging_rabbit] heartbeat_timeout_threshold
    ssl: bool | dict = False  # kombu's ssl: True or ssl params (cmd.router, as oslo does)
    check_interval: float = 30.0  # seconds between consumer checks of a host queue
    publish_attempts: int = 3  # a returned publish: declare the queue again, republish


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
        self._returned: list = []
        self.connections = {"consuming": "unknown", "publishing": "unknown"}
        self.ready = threading.Event()  # set once consuming (tests, benchmarks)

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> None:
        self._thread = threading.Thread(target=self.run, name="router-relay", daemon=True)
        self._thread.start()

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def stop(self, timeout: float = 10.0) -> None:
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def run(self) -> None:
        retrying = tenacity.Retrying(
            retry=tenacity.retry_if_exception(lambda _: not self._stopping.is_set()),
            wait=tenacity.wait_exponential(multiplier=0.2, max=10.0),
            sleep=self._stopping.wait,  # a stop ends the backoff at once
            before_sleep=self._log_reconnect, reraise=True)
        try:
            retrying(self._serve)
        except Exception:
            if not self._stopping.is_set():
                raise
        finally:
            self._set_connections("disconnected")

    def _log_reconnect(self, state: tenacity.RetryCallState) -> None:
        self.counters.incr("router.reconnects")
        self.ready.clear()
        self._set_connections("disconnected")
        LOG.warning("router connection lost (%s); reconnecting", state.outcome.exception())

    def _set_connections(self, state: str) -> None:
        for name in self.connections:
            self.connections[name] = state

    # -- serving -----------------------------------------------------------------------------

    def _connection(self, **options) -> kombu.Connection:
        s = self.settings
        return kombu.Connection(s.url, heartbeat=s.heartbeat, ssl=s.ssl, **options)

    def _serve(self) -> None:
        s = self.settings
        with self._connection() as consuming, \
                self._connection(transport_options={"confirm_publish": True}) as publishing:
            self._publishing = publishing
            self._host_queues = HostQueues(
                prefix=s.host_queue_prefix, exchange=self._out_exchange(),
                durable=self._durable(), arguments=self._queue_arguments(),
                parking_queue=s.parking_queue, counters=self.counters,
                check_interval=s.check_interval)
            producer = self._producer(publishing.channel())
            producer.declare()
            self._host_queues.parking()(producer.channel).declare()
            channel = consuming.channel()
            channel.basic_qos(0, s.prefetch, False)
            handler = lambda message: self._on_message(message, producer)  # noqa: E731
            with kombu.Consumer(channel, [self._input_queue()], on_message=handler,
                                no_ack=False):
                self._set_connections("connected")
                self.ready.set()
                LOG.info("router consuming %s from %s/%s", s.queue, s.nova_exchange,
                         ",".join(s.topics))
                self._drain(consuming, publishing)

    def _producer(self, channel) -> kombu.Producer:
        return kombu.Producer(channel, exchange=self._out_exchange(),
                              on_return=self._on_return)

    def _drain(self, consuming: kombu.Connection, publishing: kombu.Connection) -> None:
        tended = time.monotonic()
        while not self._stopping.is_set():
            try:
                consuming.drain_events(timeout=0.5)
            except socket.timeout:
                pass
            if time.monotonic() - tended >= TEND_EVERY:
                consuming.heartbeat_check()
                self._tend(publishing)
                tended = time.monotonic()

    def _tend(self, publishing: kombu.Connection) -> None:
        """Read what the broker sent on the publishing connection (its heartbeats among it)
        and send ours when due; without this the broker closes it after a quiet spell."""
        try:
            publishing.drain_events(timeout=TEND_TIMEOUT)
        except socket.timeout:
            pass
        publishing.heartbeat_check()

    def _on_return(self, exc, exchange, routing_key, message) -> None:
        self._returned.append(routing_key)

    def _on_message(self, message, producer: kombu.Producer) -> None:
        try:
            event_type, publisher_id, payload = decode(message.body)
            if not events.is_routed(event_type):
                self.counters.incr("router.dropped")
                message.ack()
                return
            host = events.origin_host(event_type, publisher_id, payload)
            if host is None:
                self.counters.incr("router.ignored")  # nobody's: nova-api's null host
                LOG.debug("ignored %s: no compute host", event_type)
                message.ack()
                return
            key = events.routing_key(host)
        except RejectedMessage as exc:
            self.counters.incr("router.malformed")
            LOG.warning("dropping a malformed message: %s", exc)
            message.ack()  # never redelivered: it would fail the same way forever
            return
        if self._republish(message, producer, host, key):
            self.counters.incr("router.routed")
        message.ack()  # only now: the broker has confirmed the copy (or the parked copy)

    def _republish(self, message, producer: kombu.Producer, host: str, key: str) -> bool:
        """True once the host queue holds the message, False when it was parked instead."""
        retrying = tenacity.Retrying(
            retry=tenacity.retry_if_exception_type(Unroutable),
            stop=tenacity.stop_after_attempt(self.settings.publish_attempts),
            wait=tenacity.wait_exponential(multiplier=0.05, max=1.0), reraise=True)
        try:
            retrying(self._publish_once, message, producer, host, key)
            return True
        except amqp.exceptions.MessageNacked:
            self._park(message, producer, host)
            return False

    def _publish_once(self, message, producer: kombu.Producer, host: str, key: str) -> None:
        if self._host_queues.ensure(host, key, producer.channel):
            producer.revive(self._publishing.channel())  # the broker closed the channel
        self._returned.clear()
        # confirm_publish: returns once the broker acknowledged, raises on a nack; a return
        # (no queue bound) arrives before the ack and is recorded by _on_return
        producer.publish(message.body, routing_key=key, mandatory=True,
                         content_type=message.content_type,
                         content_encoding=message.content_encoding,
                         headers=message.headers or {}, delivery_mode=2)
        if self._returned:
            self.counters.incr("router.returned")
            LOG.warning("the broker returned an event for %s: queue %s is gone (deleted or "
                        "expired); declaring it again", host, self._host_queues.name(host))
            self._host_queues.forget(host)
            raise Unroutable(key)

    def _park(self, message, producer: kombu.Producer, host: str) -> None:
        queue = self.settings.parking_queue
        headers = dict(message.headers or {}, **{HOST_HEADER: host})
        self._returned.clear()
        # the default exchange, as an object: kombu reads exchange="" as "the producer's own"
        producer.publish(message.body, exchange=kombu.Exchange(""), routing_key=queue,
                         mandatory=True,
                         content_type=message.content_type,
                         content_encoding=message.content_encoding, headers=headers,
                         delivery_mode=2)
        if self._returned:
            raise Unroutable(queue)  # the parking queue is gone: reconnect, redeclare
        self.counters.incr("router.parked")
        LOG.warning("queue %s refused an event (full: its length bound is reached); parked "
                    "in %s", self._host_queues.name(host), queue)

    # -- entities ----------------------------------------------------------------------------

    def _queue_arguments(self) -> dict:
        return {"x-queue-type": "quorum"} if self.settings.quorum else {}

    def _durable(self) -> bool:
        """The out exchange's and the host queues' durability."""
        return self.settings.host_durable or self.settings.quorum

    def _out_exchange(self) -> kombu.Exchange:
        return kombu.Exchange(self.settings.out_exchange, "topic", durable=self._durable())

    def _input_queue(self) -> kombu.Queue:
        s = self.settings
        nova = kombu.Exchange(s.nova_exchange, "topic", durable=s.durable or s.quorum)
        bindings = [kombu.binding(nova, routing_key=f"{topic}{events.PRIORITY_SUFFIX}")
                    for topic in s.topics]
        return kombu.Queue(s.queue, bindings=bindings,
                           durable=s.queue_durable or s.quorum, auto_delete=False,
                           queue_arguments=self._queue_arguments())
