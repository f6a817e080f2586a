"""Hear nova's delete.start notifications on the message bus (oslo.messaging listener), and
the other process-ending .start announcements and nova's exists (nova_notifications.parse).

One agent runs per hypervisor and must see every delete.start nova publishes, then keep
those for its own host (nova_notifications.parse decides by the payload's ``host``).

Pools and queues: with a ``pool`` the rabbit driver consumes from ONE queue NAMED AFTER THE
POOL, bound to ``<topic>.info`` of every target. Listeners sharing a pool share that queue and
compete for its messages: each message goes to one of them. So the default pool is per host,
``lifecycle-stats.<host>``: each agent has its own queue and hears every notification. A name
shared by several hosts would hand a host's delete.start to another agent, which would drop it
as "not mine", and the final sample would be lost. (Without any pool the listener would
consume from nova's own ``notifications.info`` queue and steal messages from Ceilometer.)

Costs of that choice an operator should know: every agent receives every INFO notification of
the ``nova`` exchange (routing keys cannot filter by host), and while an agent is down its
queue keeps filling; a RabbitMQ policy (a message TTL; a length bound would drop delete.start)
on ``lifecycle-stats.*`` bounds that (etc/rabbitmq/lifecycle-stats-queue-policy.sh: oslo.messaging declares these
queues without arguments, so the agent cannot). With ``source = router`` the queue binds
only this host's routing key on the router's exchange (listeners/router), which removes the
first cost.

Only the INFO priority is subscribed (nova sends delete.start at INFO): other priorities are
then never routed to our queues at all, instead of being received and thrown away.

Delivery is at-least-once: ``on_trigger`` runs synchronously in the executor's thread and the
message is acknowledged only after it returns (the flush behind it returns once the result is
durably spooled). ``on_trigger`` may run concurrently on the threading executor's workers. A
trigger refused because the agent is stopping (ShuttingDown) is always requeued.

Connecting: oslo's rabbit driver retries a listener's first connection forever inside the
call, so start() connects on a background thread (tenacity retries whatever still fails): a
broker that cannot be reached at start never holds up the agent, nor its SIGTERM.
"""
from __future__ import annotations

import dataclasses
import datetime
import functools
import logging
import threading
from typing import Any, Callable

import oslo_messaging
from oslo_config import cfg

from lifecycle_stats.counters import Counters
from lifecycle_stats.exceptions import ConfigError
from lifecycle_stats.interfaces import AnnouncementHandler
from lifecycle_stats.listeners.background_start import BackgroundStart
from lifecycle_stats.listeners.bus_endpoint import REPLY, DeleteStartEndpoint  # noqa: F401
from lifecycle_stats.records import AuditWindow, utcnow

LOG = logging.getLogger(__name__)
GROUP = "notification_listener"
POOL_PREFIX = "lifecycle-stats."
STOP_TIMEOUT = 10.0
CONNECT_WAIT = 2.0  # start() waits this long for the connection before going on without it

OPTS = [
    cfg.StrOpt("transport_url", secret=True, default=None,
               help="Bus to hear nova's notifications on. Unset: "
                    "[oslo_messaging_notifications] transport_url, then [DEFAULT] "
                    "transport_url."),
    cfg.StrOpt("exchange", default="nova",
               help="Exchange nova publishes to (nova's control_exchange)."),
    cfg.StrOpt("legacy_topic", default="notifications",
               help="Topic of nova's legacy (unversioned) notifications."),
    cfg.StrOpt("versioned_topic", default="versioned_notifications",
               help="Topic of nova's versioned notifications."),
    cfg.BoolOpt("listen_legacy", default=True,
                help="Hear legacy compute.instance.delete.start."),
    cfg.BoolOpt("listen_versioned", default=True,
                help="Hear versioned instance.delete.start."),
    cfg.StrOpt("pool", default=None,
               help="Listener pool, i.e. the queue name. Unset: lifecycle-stats.<host>. "
                    "Must differ per host, or agents steal each other's messages."),
    cfg.BoolOpt("allow_requeue", default=False,
                help="Requeue a message whose handling failed unexpectedly (a bug) instead of "
                     "acknowledging it. A capture deferred by a failure that may pass (locked "
                     "or full spool, libvirt read error) is always requeued."),
    cfg.IntOpt("workers", default=8, min=1, max=256,
               help="Notifications handled at once (oslo.messaging's threading executor). "
                    "The executor keeps every thread it ever started; with its own default "
                    "([DEFAULT] executor_thread_pool_size = 64) a burst of deletes left 64 "
                    "threads and their memory behind (doc/benchmarks.md). Messages beyond "
                    "this wait, unacknowledged, in the listener's queue."),
    cfg.StrOpt("source", default="direct", choices=["direct", "router"],
               help="direct: the agent's queue binds nova's topics and hears every INFO "
                    "notification (small sites). router: it binds only its own routing key "
                    "on router_exchange, fed by lifecycle-stats-router (large sites)."),
    cfg.StrOpt("router_exchange", default="lifecycle_stats",
               help="With source = router: the router's [router] out_exchange."),
    cfg.BoolOpt("router_durable_queues", default=True,
                help="With source = router: declare this host's queue (and router_exchange) "
                     "durable, whatever [oslo_messaging_rabbit] amqp_durable_queues says for "
                     "the conduits. Must equal the router's [router] durable_host_queues."),
]

def register_opts(conf: cfg.ConfigOpts) -> None:
    conf.register_opts(OPTS, group=GROUP)


def default_pool(host: str) -> str:
    return POOL_PREFIX + host


@dataclasses.dataclass(frozen=True)
class Subscription:
    """What the listener hears and how it behaves (`[notification_listener]`)."""

    exchange: str = "nova"
    legacy_topic: str = "notifications"
    versioned_topic: str = "versioned_notifications"
    listen_legacy: bool = True
    listen_versioned: bool = True
    pool: str | None = None  # unset: lifecycle-stats.<host>
    allow_requeue: bool = False
    stop_timeout: float = STOP_TIMEOUT
    connect_wait: float = CONNECT_WAIT
    retry_max_wait: float = 30.0
    workers: int = 8  # the executor's threads: handlers at once

    @classmethod
    def from_opts(cls, opts, host: str) -> "Subscription":
        """From `[notification_listener]`: nova's own exchange and topics, or (source =
        router) the router's topic for this host, on which both nova formats arrive."""
        common = {"pool": opts.pool, "allow_requeue": opts.allow_requeue,
                  "workers": opts.workers}
        if opts.source == "router":
            from lifecycle_stats.listeners.router.events import host_topic

            return cls(exchange=opts.router_exchange, legacy_topic=host_topic(host),
                       listen_legacy=True, listen_versioned=False, **common)
        return cls(exchange=opts.exchange, legacy_topic=opts.legacy_topic,
                   versioned_topic=opts.versioned_topic, listen_legacy=opts.listen_legacy,
                   listen_versioned=opts.listen_versioned, **common)


class NotificationListener:
    """Listens on nova's legacy and/or versioned topics with a per-host pool."""

    def __init__(self, transport, *, host: str, on_trigger: AnnouncementHandler,
                 subscription: Subscription = Subscription(),
                 counters: Counters | None = None,
                 clock: Callable[[], datetime.datetime] = utcnow, own_transport: bool = False,
                 holds: Callable[[str], bool] = lambda _uuid: False,
                 on_audit: Callable[[AuditWindow], Any] | None = None):
        heard = subscription
        _check_name("host", host)
        _check_name(f"[{GROUP}] exchange", heard.exchange)
        self.host = host
        self.pool = heard.pool if heard.pool is not None else default_pool(host)
        _check_name(f"[{GROUP}] pool", self.pool)
        self.counters = counters if counters is not None else Counters()
        self.targets = _targets(heard.exchange,
                                heard.legacy_topic if heard.listen_legacy else None,
                                heard.versioned_topic if heard.listen_versioned else None)
        self.endpoint = DeleteStartEndpoint(host=host, on_trigger=on_trigger,
                                            counters=self.counters, clock=clock,
                                            allow_requeue=heard.allow_requeue, holds=holds,
                                            on_audit=on_audit)
        self._transport = transport
        self._own_transport = own_transport
        self._stop_timeout = heard.stop_timeout
        self._connect_wait = heard.connect_wait
        # Requeue-capable at the server: a deferred capture and a trigger refused at stop are
        # never acknowledged; allow_requeue decides only what a failed handler returns.
        self._server = oslo_messaging.get_notification_listener(
            transport, self.targets, [self.endpoint], executor="threading",
            allow_requeue=True, pool=self.pool)
        self._starter = BackgroundStart(
            functools.partial(self._server.start, override_pool_size=heard.workers),
            self._server.stop, name=f"listener {self.pool}",
            counters=self.counters, error_counter="bus.connect_errors",
            retry_max_wait=heard.retry_max_wait, on_started=self._log_started)

    @property
    def state(self) -> str:
        """"connecting" (in the background), "alive", "stopped" or "dead"."""
        return self._starter.state

    def start(self) -> None:
        """Connect and start hearing on a background thread; returns once connected or after
        connect_wait seconds, whichever comes first."""
        if not self._starter.begin(self._connect_wait):
            LOG.warning("bus not reachable yet; listener %s keeps connecting in the background",
                        self.pool)

    def _log_started(self) -> None:
        LOG.info("listening for nova's process-ending .start (and exists) on %s with pool %s",
                 ", ".join(f"{t.exchange}/{t.topic}" for t in self.targets), self.pool)

    def is_connected(self) -> bool | None:
        """Best effort, from the rabbit driver's kombu connection (oslo.messaging internals,
        read defensively); None when the driver does not tell (fake://, another driver)."""
        if not self._starter.started:
            return False
        try:
            listener = self._server.listener._poll_style_listener
            return bool(listener.conn.connection.connection.connected)
        except AttributeError:
            return None

    def stop(self, timeout: float | None = None) -> bool:
        """Stop hearing and wait (bounded) for messages in hand; False when that took too
        long: the handlers still running then finish in the background. A listener still
        connecting is left to its daemon thread, which stops the server if it ever starts."""
        was_connecting = self._starter.connecting
        if self._starter.cancel():
            self._server.stop()
            bound = self._stop_timeout if timeout is None else timeout
            if not self._wait_bounded(bound):
                LOG.warning("listener did not stop within %.1fs", bound)
                return False
        elif was_connecting:
            LOG.warning("listener %s stopped while still connecting", self.pool)
            return True  # its transport may be in use by the blocked connect: not cleaned up
        if self._own_transport:
            self._transport.cleanup()
        return True

    def _wait_bounded(self, timeout: float) -> bool:
        # MessageHandlingServer.wait(timeout=) bounds only its wait for stop(), not the
        # executor shutdown that waits for running handlers: bound that with a thread.
        waiter = threading.Thread(target=self._wait, name=f"stop-{self.pool}", daemon=True)
        waiter.start()
        waiter.join(timeout)
        return not waiter.is_alive()

    def _wait(self) -> None:
        try:
            self._server.wait()
        except Exception:
            LOG.exception("listener %s failed while stopping", self.pool)


def from_conf(conf: cfg.ConfigOpts, host: str, on_trigger: AnnouncementHandler,
              counters: Counters | None = None, transport=None,
              holds: Callable[[str], bool] = lambda _uuid: False,
              on_audit: Callable[[AuditWindow], Any] | None = None) -> NotificationListener:
    """A listener configured by ``[notification_listener]``; it owns (and cleans up) the
    transport it builds, not one passed in (the embedded demo shares its fake:// bus)."""
    register_opts(conf)
    opts = conf[GROUP]
    own_transport = transport is None
    if own_transport:
        transport = oslo_messaging.get_notification_transport(conf, url=_listener_url(conf))
    try:
        return NotificationListener(
            transport, host=host, on_trigger=on_trigger,
            subscription=Subscription.from_opts(opts, host), counters=counters,
            own_transport=own_transport, holds=holds, on_audit=on_audit)
    except Exception:
        if own_transport:
            transport.cleanup()
        raise


def _listener_url(conf: cfg.ConfigOpts):
    opts = conf[GROUP]
    if opts.source == "router" and opts.router_durable_queues:
        from lifecycle_stats.listeners.router.transport import durable_listener_url

        return durable_listener_url(conf, opts.transport_url)
    return opts.transport_url


def _targets(exchange: str, legacy_topic: str | None,
             versioned_topic: str | None) -> list[oslo_messaging.Target]:
    topics = [topic for topic in (legacy_topic, versioned_topic) if topic is not None]
    if not topics:
        raise ConfigError(f"[{GROUP}] listen_legacy/listen_versioned", False,
                          "at least one of the two must be enabled")
    for topic in topics:
        _check_name(f"[{GROUP}] topic", topic)
    return [oslo_messaging.Target(exchange=exchange, topic=topic) for topic in topics]


def _check_name(option: str, value: object) -> None:
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(option, value, "must be a non-empty string")
