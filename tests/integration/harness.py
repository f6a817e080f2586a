"""Drive the real agent as nova and billing see it: a separate `lifecycle-stats-agent` process
with a config file, nova's delete.start published on the real broker, and a billing consumer
reading compute.instance.delete.samples from it.

Every run uses its own exchange, topic and pool names, so nothing here can reach queues that a
real Ceilometer on the same broker reads, and delete_queues() removes what a run declared.
"""
from __future__ import annotations

import contextlib
import grp
import json
import os
import pathlib
import queue
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
import uuid
import weakref

import kombu
import oslo_messaging

from lifecycle_stats.listeners import bus as listeners_bus
from tests.integration.conftest import amqp_url
from tests.support.nova import (
    legacy_start_payload, messaging_conf, publish_delete_start, publish_exists,
    versioned_start_payload,
)

AGENT = pathlib.Path(sys.executable).with_name("lifecycle-stats-agent")


class BusNames:
    """Unique exchange/topic/pool names for one test run."""

    def __init__(self) -> None:
        run = uuid.uuid4().hex[:8]
        self.nova_exchange = f"lst-nova-{run}"
        self.legacy_topic = f"lst-notifications-{run}"
        self.versioned_topic = f"lst-versioned-{run}"
        self.control_exchange = f"lst-billing-{run}"
        self.samples_topic = f"lst-samples-{run}"
        self.billing_pool = f"lst-billing-pool-{run}"

    def queues(self, hosts) -> list[str]:
        return ([f"lifecycle-stats.{h}" for h in hosts] + [self.billing_pool]
                + [f"{t}.info" for t in (self.legacy_topic, self.versioned_topic,
                                         self.samples_topic)])


class AgentProcess:
    """One lifecycle-stats-agent process, configured through a real config file."""

    def __init__(self, workdir: pathlib.Path, *, host: str, transport_url: str,
                 names: BusNames, libvirt_uri: str = "qemu:///system",
                 poll_interval: float = 2.0, extra: dict[str, dict[str, str]] | None = None,
                 state_path: pathlib.Path | None = None, executable: pathlib.Path = AGENT):
        """executable: the agent's console script (a benchmark's same-run baseline may be
        another checkout's)."""
        self.workdir = workdir
        self.executable = executable
        self.host = host
        self.state_path = state_path or workdir / f"state-{host}"
        self.log_file = workdir / f"agent-{host}.log"
        self.config_file = workdir / f"agent-{host}.conf"
        self.hook_socket = own_hook_socket(self)
        sections: dict[str, dict[str, str]] = {
            "DEFAULT": {"host": host, "state_path": str(self.state_path),
                        "control_exchange": names.control_exchange, "debug": "true",
                        "log_file": str(self.log_file), "status_interval": "0.5"},
            "libvirt": {"uri": libvirt_uri},
            "poller": {"interval": str(poll_interval)},
            "spool": {"retry_initial_wait": "0.2", "retry_max_wait": "2.0"},
            # several agents run at once: none on the default Prometheus port (extra sets one)
            "metrics": {"port": "0"},
            "notification_listener": {
                "transport_url": transport_url, "exchange": names.nova_exchange,
                "legacy_topic": names.legacy_topic, "versioned_topic": names.versioned_topic},
            "oslo_messaging_notifications": {
                "transport_url": transport_url, "driver": "messagingv2",
                "topics": names.samples_topic},
            # Never the default /run/lifecycle-stats/hook.sock: on a compute host (one with a
            # `nova` group) every agent would serve it, and a second one refuses to start.
            "hook": {"socket_path": str(self.hook_socket),
                     "socket_group": grp.getgrgid(os.getegid()).gr_name},
        }
        # A list value writes the option once per element (MultiStrOpt, e.g. driver).
        for section, values in (extra or {}).items():
            sections.setdefault(section, {}).update(values)
        self.config_file.write_text("".join(
            f"[{name}]\n" + "".join(f"{k} = {v}\n" for k, vs in values.items()
                                      for v in (vs if isinstance(vs, list) else [vs])) + "\n"
            for name, values in sections.items()))
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 60.0) -> None:
        self.proc = subprocess.Popen([str(self.executable), "--config-file", str(self.config_file)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        self.wait_for(lambda s: s.get("pid") == self.proc.pid, timeout, "agent status")

    def status(self) -> dict:
        try:
            return json.loads((self.state_path / "status.json").read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            return {}

    def wait_for(self, predicate, timeout: float, what: str) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise AssertionError(f"agent exited with {self.proc.returncode}: "
                                     f"{self.proc.stderr.read().decode()[-2000:]}\n"
                                     f"{self.log_tail()}")
            status = self.status()
            if status and predicate(status):
                return status
            time.sleep(0.1)
        raise AssertionError(f"timed out waiting for {what}; last status {self.status()}\n"
                             f"{self.log_tail()}")

    def counter(self, name: str) -> int:
        return self.status().get("counters", {}).get(name, 0)

    def stop(self, timeout: float = 30.0) -> int:
        """SIGTERM, as an init system stops it; returns the exit code."""
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else 0
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout)

    def kill(self) -> None:
        """SIGKILL: no chance to flush, drain or close anything."""
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_file.read_text().splitlines()[-lines:])
        except FileNotFoundError:
            return "(no agent log)"


def own_hook_socket(owner) -> pathlib.Path:
    """A hook socket path of owner's own, short enough for AF_UNIX (108 bytes, which a
    pytest tmp_path may exceed), in a directory removed with owner."""
    directory = tempfile.mkdtemp(prefix="lst-hook-")
    weakref.finalize(owner, shutil.rmtree, directory, True)
    return pathlib.Path(directory) / "hook.sock"


class BillingConsumer:
    """Reads delete.samples from the broker the way a billing pipeline does."""

    def __init__(self, transport, names: BusNames, *, shared_queue: bool = False,
                 event_types: tuple[str, ...] | None = ("compute.instance.delete.samples",)):
        """shared_queue: consume from `<samples_topic>.info`, the queue the publisher itself
        declares (as Ceilometer does), instead of a pool queue of our own; messages published
        before this consumer (re)declared its queue, e.g. right after a broker restart, then
        still reach it."""
        import oslo_messaging

        self.event_types = event_types  # None: every event (the usage exists too)
        self.events: list[dict] = []
        self._cond = threading.Condition()
        target = oslo_messaging.Target(exchange=names.control_exchange, topic=names.samples_topic)
        self._server = oslo_messaging.get_notification_listener(
            transport, [target], [self], executor="threading",
            pool=None if shared_queue else names.billing_pool)
        self._server.start()

    def info(self, ctxt, publisher_id, event_type, payload, metadata):
        if self.event_types is not None and event_type not in self.event_types:
            return
        with self._cond:
            self.events.append({"event_type": event_type, "publisher_id": publisher_id,
                                "payload": payload, "envelope_id": metadata.get("message_id"),
                                "timestamp": metadata.get("timestamp"),
                                "consumed_at": time.monotonic()})
            self._cond.notify_all()

    def wait_for(self, count: int, timeout: float) -> list[dict]:
        with self._cond:
            self._cond.wait_for(lambda: len(self.events) >= count, timeout)
            return list(self.events)

    def wait_for_instances(self, instance_ids, timeout: float) -> dict[str, list[dict]]:
        """Events per instance once every one of instance_ids has at least one (or timeout)."""
        wanted = set(instance_ids)

        def arrived() -> bool:
            return wanted <= {e["payload"]["instance_id"] for e in self.events}

        with self._cond:
            self._cond.wait_for(arrived, timeout)
        return self.by_instance()

    def by_instance(self) -> dict[str, list[dict]]:
        out: dict[str, list[dict]] = {}
        with self._cond:
            for event in self.events:
                out.setdefault(event["payload"]["instance_id"], []).append(event)
        return out

    def stop(self) -> None:
        self._server.stop()
        self._server.wait()


class Nova:
    """Publishes delete.start into the run's nova exchange, as nova-compute does."""

    def __init__(self, transport, names: BusNames):
        self.transport = transport
        self.names = names

    def delete_start(self, guest, host: str | None, *, versioned: bool = False,
                     request: str | None = None, action: str = "delete"):
        """delete.start, or the .start of another process-ending action (power_off, ...).
        Returns the envelope timestamp nova's message carried."""
        topic = self.names.versioned_topic if versioned else self.names.legacy_topic
        return publish_delete_start(self.transport, guest, host, versioned=versioned,
                                    exchange=self.names.nova_exchange, topic=topic,
                                    request=request, action=action)

    def exists(self, guest, host: str, begin, end, *, versioned: bool = False,
               task_state: str | None = None) -> None:
        """nova's own compute.instance.exists / instance.exists (instance_usage_audit; with
        task_state "resize_reverting": revert_resize's, on the destination)."""
        topic = self.names.versioned_topic if versioned else self.names.legacy_topic
        publish_exists(self.transport, guest, host, begin, end, versioned=versioned,
                       exchange=self.names.nova_exchange, topic=topic, task_state=task_state)


@contextlib.contextmanager
def billing_bus(rabbit_url: str, amqp: str, names: BusNames, hosts, *, project: str,
                extra_queues=(), **consumer_kw):
    """A transport on the test broker and a billing consumer on it: (transport, billing).
    Afterwards the consumer is stopped, the transport cleaned up, and the hosts' queues (plus
    extra_queues) and the run's nova and control exchanges deleted, whatever happened."""
    import oslo_messaging
    from oslo_config import cfg

    conf = cfg.ConfigOpts()
    conf([], project=project, default_config_files=[])
    transport = oslo_messaging.get_notification_transport(conf, url=rabbit_url)
    billing = None
    try:
        billing = BillingConsumer(transport, names, **consumer_kw)
        yield transport, billing
    finally:
        try:
            if billing is not None:
                billing.stop()
            transport.cleanup()
        finally:
            delete_queues(amqp, [*names.queues(hosts), *extra_queues],
                          [names.nova_exchange, names.control_exchange])


def delete_queues(amqp_url: str, queues, exchanges=()) -> None:
    import kombu

    with kombu.Connection(amqp_url, connect_timeout=5) as conn:
        channel = conn.channel()
        for queue in queues:
            try:
                channel.queue_delete(queue)
            except Exception:  # already gone: the channel is closed by the broker, reopen
                channel = conn.channel()
        for exchange in exchanges:
            try:
                channel.exchange_delete(exchange)
            except Exception:
                channel = conn.channel()


def through_gate(rabbit_url: str, port: int) -> str:
    """rabbit_url (same credentials and vhost) redirected to a TcpGate on this machine."""
    parts = urllib.parse.urlsplit(rabbit_url)
    netloc = f"{parts.username}:{parts.password}@127.0.0.1:{port}"
    return urllib.parse.urlunsplit((parts.scheme, netloc, parts.path, "", ""))


class TcpGate:
    """A TCP relay to `upstream` that a test opens and shuts: the network path between one
    client (e.g. the agent's emitter) and the broker. Shut, it accepts every connection and
    closes it at once (the client sees the broker hang up); open, it relays bytes both ways
    (and hangs up when upstream refuses). shut() also cuts the relayed connections."""

    def __init__(self, upstream: tuple[str, int] = ("127.0.0.1", 5672)) -> None:
        self.upstream = upstream
        self._server = socket.create_server(("127.0.0.1", 0))
        self.port = self._server.getsockname()[1]
        self._open = threading.Event()
        self._lock = threading.Lock()
        self._live: set[socket.socket] = set()
        self._closed = False
        threading.Thread(target=self._accept, name=f"tcp-gate-{self.port}", daemon=True).start()

    def open(self) -> None:
        self._open.set()

    def shut(self) -> None:
        self._open.clear()
        self._cut()

    def close(self) -> None:
        self._closed = True
        self._open.clear()
        self._server.close()
        self._cut()

    def _cut(self) -> None:
        with self._lock:
            live, self._live = self._live, set()
        for sock in live:
            _close_socket(sock)

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._server.accept()
            except OSError:
                return
            if not self._open.is_set():
                _close_socket(client)
                continue
            try:
                server = socket.create_connection(self.upstream, timeout=5)
            except OSError:
                _close_socket(client)
                continue
            server.settimeout(None)
            with self._lock:
                self._live.update((client, server))
            for src, dst in ((client, server), (server, client)):
                threading.Thread(target=_pump, args=(src, dst), daemon=True).start()


def _pump(src: socket.socket, dst: socket.socket) -> None:
    try:
        while data := src.recv(65536):
            dst.sendall(data)
    except OSError:
        pass
    finally:
        _close_socket(src)
        _close_socket(dst)


def _close_socket(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    sock.close()


# -- buses of one test run -------------------------------------------------------------------

class NovaNotifiers:
    """Publishes as nova-compute on host: both delete.start forms (or other events) with bare
    payloads (tests.support.nova), on the given topics of transport's exchange."""

    def __init__(self, transport, host: str, legacy_topic: str, versioned_topic: str):
        self.host = host
        self.legacy_notifier = oslo_messaging.Notifier(
            transport, publisher_id=f"compute.{host}", driver="messaging",
            topics=[legacy_topic])
        self.versioned_notifier = oslo_messaging.Notifier(
            transport, publisher_id=f"nova-compute:{host}", driver="messagingv2",
            topics=[versioned_topic])

    def legacy(self, event_type="compute.instance.delete.start", instance_id=None) -> str:
        instance_id = instance_id or str(uuid.uuid4())
        self.legacy_notifier.info({}, event_type, legacy_start_payload(instance_id, self.host))
        return instance_id

    def versioned(self, event_type="instance.delete.start", instance_id=None) -> str:
        instance_id = instance_id or str(uuid.uuid4())
        self.versioned_notifier.info({}, event_type,
                                     versioned_start_payload(instance_id, self.host))
        return instance_id


class Broker:
    """nova's exchange and topics of one test run on the real broker, and bus listeners on
    them; close() stops the listeners and deletes every queue and the exchange."""

    def __init__(self, rabbit_url):
        self.run = uuid.uuid4().hex[:10]
        self.url = rabbit_url
        self.exchange = f"lst-nova-{self.run}"
        self.legacy_topic = f"lst-notifications-{self.run}"
        self.versioned_topic = f"lst-versioned-{self.run}"
        self.conf = messaging_conf(self.exchange)
        self.transport = oslo_messaging.get_notification_transport(self.conf, url=rabbit_url)
        self.listeners = []
        self.queues = {f"{self.legacy_topic}.info", f"{self.versioned_topic}.info"}

    def nova(self, host):
        return NovaNotifiers(self.transport, host, self.legacy_topic, self.versioned_topic)

    def host(self, suffix):
        return f"lst-{self.run}-{suffix}"

    def listen(self, host, on_trigger=None, **heard):
        received: queue.Queue = queue.Queue()
        listen_transport = oslo_messaging.get_notification_transport(
            messaging_conf(self.exchange), url=self.url)
        listener = listeners_bus.NotificationListener(
            listen_transport, host=host, on_trigger=on_trigger or received.put,
            subscription=listeners_bus.Subscription(
                exchange=self.exchange, legacy_topic=self.legacy_topic,
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


def _reconnecting_transport(rabbit_url: str):
    conf = messaging_conf("openstack")
    # reconnect within ~2 s of the broker's return instead of up to 30 s
    conf.set_override("rabbit_interval_max", 2, group="oslo_messaging_rabbit")
    return oslo_messaging.get_notification_transport(conf, url=rabbit_url)


class Bus:
    """nova (Nova) and billing consumers on the real broker, in names of one run, on a transport
    that reconnects within ~2 s of the broker's return; close() deletes what the run declared."""

    def __init__(self, rabbit_url: str):
        self.url = rabbit_url
        self.names = BusNames()
        self.transport = _reconnecting_transport(rabbit_url)
        self.nova = Nova(self.transport, self.names)
        self.hosts: list[str] = []
        self.consumers: list[BillingConsumer] = []

    def host(self) -> str:
        self.hosts.append(f"lst-fail-{self.names.nova_exchange[-8:]}-{len(self.hosts)}")
        return self.hosts[-1]

    def billing(self) -> BillingConsumer:
        consumer = BillingConsumer(self.transport, self.names, shared_queue=True)
        self.consumers.append(consumer)
        return consumer

    def consumers_of(self, queue: str) -> int:
        with kombu.Connection(amqp_url(self.url), connect_timeout=5) as conn:
            try:
                return conn.channel().queue_declare(queue=queue, passive=True)[2]
            except Exception:  # not declared (yet)
                return 0

    def close(self) -> None:
        try:
            for consumer in self.consumers:
                consumer.stop()
        finally:
            self.transport.cleanup()
            delete_queues(amqp_url(self.url), self.names.queues(self.hosts),
                                  [self.names.nova_exchange, self.names.control_exchange])
