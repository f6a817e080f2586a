"""Tap a live host into a recording (format.py): nova's notifications, libvirt lifecycle
events, and the counter and metadata reads the agent would make at the same moments.

Nova: one listener per topic, each with a pool of its own (`lifecycle-stats-replay.<host>.*`),
so the recorder gets a copy of every notification without taking one from nova's queues or
from the agent's pool (see listeners/bus.py for how pools map to queues). Its queues are
deleted on stop. libvirt: a LifecycleListener on its own connection. Reads: an Inspector and
a DomainRegistry on two more connections of the recorder's own.

Every read is written as an entry whose `cause` is the index of the entry it answers: a
delete.start for this host gets a read of its domain; every lifecycle event a read and a
metadata read; every periodic poll the metadata of domains not seen before; an agent
start (mark_agent) a poll. The player applies those answers where the agent would ask.
"""
from __future__ import annotations

import logging
import threading
from typing import Any, Callable

import libvirt
import oslo_messaging

from lifecycle_stats.counters import Counters
from lifecycle_stats.exceptions import DomainGone, HypervisorError, RejectedMessage
from lifecycle_stats.listeners import libvirt_events, nova_notifications
from lifecycle_stats.reading import hypervisor, inspector, registry
from lifecycle_stats.records import LifecycleEvent, isotime, utcnow
from lifecycle_stats.replay import format as fmt

LOG = logging.getLogger(__name__)
POOL_PREFIX = "lifecycle-stats-replay."

DomainFilter = Callable[[str], bool]  # domain name -> record it?


def _version(number: int) -> str:
    return f"{number // 1000000}.{number // 1000 % 1000}.{number % 1000}"


def host_header(conn: libvirt.virConnect, host: str, uri: str) -> dict[str, Any]:
    hypervisor = conn.getType()
    return {"host": host, "uri": uri, "started_at": isotime(utcnow()),
            "libvirt_version": _version(conn.getLibVersion()), "hypervisor": hypervisor,
            "qemu_version": _version(conn.getVersion()) if hypervisor == "QEMU" else None,
            "recorder": "lifecycle-stats-replay record"}


class NovaTap:
    """oslo.messaging endpoint: writes each notification, then the read the agent would make."""

    def __init__(self, recorder: "Recorder", topic: str) -> None:
        self._recorder = recorder
        self._topic = topic

    def info(self, ctxt, publisher_id, event_type, payload, metadata):
        self._recorder.nova(self._topic, "INFO", publisher_id, event_type, payload, metadata,
                            context=ctxt)
        return oslo_messaging.NotificationResult.HANDLED


class Recorder:
    def __init__(self, writer: fmt.RecordingWriter, *, host: str, libvirt_uri: str,
                 transport=None, exchange: str = "nova",
                 topics: dict[str, str] | None = None, pool: str | None = None,
                 poll_interval: float = 60.0, domains: DomainFilter = lambda name: True):
        self.writer = writer
        self.host = host
        self.counters = Counters()
        self._domains = domains
        self._poll_interval = poll_interval
        self._read_hv = hypervisor.Hypervisor(libvirt_uri)
        self._inspector = inspector.Inspector(self._read_hv, counters=self.counters)
        self._meta_hv = hypervisor.Hypervisor(libvirt_uri)
        self._registry = registry.DomainRegistry(self._meta_hv, self.counters, log=LOG)
        self._events = libvirt_events.LifecycleListener(libvirt_uri, self._on_lifecycle,
                                                        counters=self.counters)
        self._stop = threading.Event()
        self._poller = threading.Thread(target=self._poll_loop, name="replay-record-poll",
                                        daemon=True)
        self.pools: list[str] = []
        self._listeners = []
        self._started: list = []  # the listeners start() started
        topics = topics if topics is not None else {
            "legacy": "notifications", "versioned": "versioned_notifications"}
        for role, topic in topics.items():
            pool_name = f"{pool or POOL_PREFIX + host}.{role}"
            self.pools.append(pool_name)
            self._listeners.append(oslo_messaging.get_notification_listener(
                transport, [oslo_messaging.Target(exchange=exchange, topic=topic)],
                [NovaTap(self, role)], executor="threading", pool=pool_name))

    def start(self) -> None:
        self._events.start()
        self._sync()
        self.poll()
        for listener in self._listeners:
            listener.start()
            self._started.append(listener)
        self._poller.start()

    def stop(self) -> None:
        """Stop what start() started: also after a start that failed part-way, or none (an
        oslo.messaging listener never started waits for ever in wait())."""
        for listener in self._started:
            listener.stop()
        for listener in self._started:
            listener.wait()
        self._stop.set()
        if self._poller.is_alive():
            self._poller.join(10)
        self._events.stop()
        self._read_hv.close()
        self._meta_hv.close()

    # -- taps ----------------------------------------------------------------------------
    def nova(self, topic: str, priority: str, publisher_id, event_type, payload,
             metadata, context=None) -> None:
        """Write one notification as heard, with its request context (nova's request_id
        tells delete attempts apart), then the read the agent's flush would make."""
        index = self.writer.write(fmt.NOVA, topic=topic, priority=priority,
                                  context=context if isinstance(context, dict) else {},
                                  publisher_id=publisher_id, event_type=event_type,
                                  payload=payload, message_id=metadata.get("message_id"),
                                  timestamp=metadata.get("timestamp"))
        self.counters.incr("record.nova")
        try:
            trigger = nova_notifications.parse(event_type, publisher_id, payload,
                                               host=self.host, received_at=utcnow())
        except RejectedMessage:
            return
        if trigger is not None:  # the agent's flush reads now, and identifies if unknown
            self.read(trigger.instance_id, index)
            if not self._registry.is_known(trigger.instance_id):
                self.read_metadata(trigger.instance_id, index)

    def _on_lifecycle(self, event: LifecycleEvent) -> None:
        if not self._domains(event.domain_name):
            return
        index = self.writer.write(fmt.LIBVIRT, instance_id=event.instance_id,
                                  domain_name=event.domain_name, event=event.event,
                                  detail=event.detail)
        self.counters.incr("record.libvirt")
        self.read(event.instance_id, index)
        self.read_metadata(event.instance_id, index)

    def mark_agent(self, state: str) -> int:
        """Note that the agent stopped or started; a start is answered by a poll."""
        index = self.writer.write(fmt.AGENT, state=state)
        if state == "started":
            self.poll(cause=index)
        return index

    # -- reads ---------------------------------------------------------------------------
    def read(self, instance_id: str, cause: int) -> None:
        try:
            reading = fmt.reading_to_data(self._inspector.read(instance_id))
        except DomainGone:
            reading = None
        except HypervisorError as exc:
            LOG.warning("read of %s failed: %s", instance_id, exc)
            return
        self.writer.write(fmt.READING, cause=cause, instance_id=instance_id, reading=reading)

    def read_metadata(self, instance_id: str, cause: int | None) -> None:
        try:
            info = self._registry.refresh_by_uuid(instance_id)
        except HypervisorError as exc:
            LOG.warning("metadata of %s not readable: %s", instance_id, exc)
            return
        gone = info is None and not self._registry.is_known(instance_id)
        extra = {} if cause is None else {"cause": cause}
        unusable = self._registry.unusable(instance_id)
        if unusable is not None:  # nova's metadata, but hostile or broken
            extra["unusable"] = unusable
        self.writer.write(fmt.INSTANCE, instance_id=instance_id, gone=gone,
                          info=None if info is None else fmt.info_to_data(info), **extra)

    def poll(self, cause: int | None = None) -> None:
        readings = [r for r in self._inspector.poll().values() if self._domains(r.domain_name)]
        extra = {} if cause is None else {"cause": cause}
        index = self.writer.write(fmt.POLL, readings=[fmt.reading_to_data(r) for r in readings],
                                  **extra)
        self.counters.incr("record.polls")
        for reading in readings:
            if not self._registry.is_known(reading.instance_id):
                self.read_metadata(reading.instance_id, index if cause is None else cause)

    def _sync(self) -> None:
        names = self._meta_hv.call(
            lambda conn: [(d.UUIDString(), d.name()) for d in conn.listAllDomains(0)])
        for instance_id, name in names:
            if self._domains(name):
                self.read_metadata(instance_id, None)

    def _poll_loop(self) -> None:
        while not self._stop.wait(self._poll_interval):
            try:
                self.poll()
            except HypervisorError as exc:
                LOG.warning("poll failed: %s", exc)


def _amqp_url(transport_url: str) -> str | None:
    """kombu's URL of the first broker of a rabbit:// transport URL; None for other drivers."""
    if not transport_url.startswith("rabbit://"):
        return None
    return "amqp://" + transport_url.split("://", 1)[1].split(",")[0]


def check_bus(transport_url: str) -> None:
    """Raise ConnectionError when the broker does not answer: oslo.messaging's listener would
    retry for ever in start() instead (rabbit only; other drivers are not checked)."""
    url = _amqp_url(transport_url)
    if url is None:
        return
    import kombu

    with kombu.Connection(url, connect_timeout=5) as conn:
        try:
            conn.ensure_connection(max_retries=1, interval_start=0.5, timeout=10)
        except Exception as exc:  # kombu raises OperationalError, socket or auth errors
            raise ConnectionError(f"{exc}") from None


def delete_queues(transport_url: str, queues: list[str]) -> None:
    """Remove the recorder's pool queues, which would otherwise keep filling (rabbit only)."""
    url = _amqp_url(transport_url)
    if url is None:
        return
    import kombu

    with kombu.Connection(url, connect_timeout=5) as conn:
        for queue in queues:
            try:
                conn.channel().queue_delete(queue)
            except Exception as exc:  # already gone, or the broker refused: say so, go on
                LOG.warning("could not delete queue %s: %s", queue, exc)
