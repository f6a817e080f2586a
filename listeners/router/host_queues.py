"""The agents' host queues as the router sees them: declared before the first publish, checked
for a consumer, and a parking queue for what a full host queue refuses.

A host queue without a consumer is the sign of a host-name mismatch (nova says
``compute-1.example.com``, the agent's ``[DEFAULT] host`` is ``compute-1``) or of an agent
that is down: each event routed there is counted (``router.no_consumer``) and a WARNING names
the queue, at most once per check interval and host. The consumer count comes from the
declare itself (queue.declare-ok carries it), redone at most every ``check_interval`` seconds.

A host queue that refuses a message (a length bound with ``overflow: reject-publish``, set by
etc/rabbitmq/lifecycle-stats-queue-policy.sh --mode router) makes the broker nack the publish;
the router then parks the event in ONE durable queue (``parking_queue``), counted
(``router.parked``) and logged, instead of dropping it. Parked events keep their headers plus
``x-lifecycle-stats-host``, so an operator can shovel them back.
"""
from __future__ import annotations

import logging
import time
from typing import Callable

import amqp.exceptions
import kombu

from lifecycle_stats.counters import Counters

LOG = logging.getLogger(__name__)
HOST_HEADER = "x-lifecycle-stats-host"


class HostQueues:
    """Per connection: forget() after a reconnect (the broker may have restarted)."""

    def __init__(self, *, prefix: str, exchange: kombu.Exchange, durable: bool,
                 arguments: dict, parking_queue: str, counters: Counters,
                 check_interval: float = 30.0, clock: Callable[[], float] = time.monotonic):
        self._prefix = prefix
        self._exchange = exchange
        self._durable = durable
        self._arguments = arguments
        self._parking_queue = parking_queue
        self._counters = counters
        self._check_interval = check_interval
        self._clock = clock
        self._checked: dict[str, tuple[float, int]] = {}  # host -> (when, consumers)
        self._warned: dict[str, float] = {}

    def forget(self, host: str | None = None) -> None:
        if host is None:
            self._checked.clear()
        else:
            self._checked.pop(host, None)

    def name(self, host: str) -> str:
        return self._prefix + host

    def ensure(self, host: str, key: str, channel) -> bool:
        """Declare (or re-check) the host's queue when due; count an event without consumer.
        True when the broker closed ``channel`` (a declare it refused): open another."""
        now = self._clock()
        checked = self._checked.get(host)
        closed = False
        if checked is None or now - checked[0] >= self._check_interval:
            consumers, closed = self._declare(host, key, channel)
            checked = self._checked[host] = (now, consumers)
        if checked[1] == 0:
            self._no_consumer(host, now)
        return closed

    def _declare(self, host: str, key: str, channel) -> tuple[int, bool]:
        bound = kombu.Queue(self.name(host), exchange=self._exchange, routing_key=key,
                            durable=self._durable, auto_delete=False,
                            queue_arguments=self._arguments)(channel)
        try:
            _, _, consumers = bound.queue_declare()
            bound.queue_bind()
            return consumers, False
        except amqp.exceptions.PreconditionFailed as exc:
            self._counters.incr("router.host_queue_mismatch")
            LOG.error("queue %s exists with other arguments than [oslo_messaging_rabbit] "
                      "gives the router (%s); publishing to it anyway", self.name(host), exc)
            return 1, True  # declared by its agent, who is not known to be away

    def _no_consumer(self, host: str, now: float) -> None:
        if now - self._warned.get(host, -self._check_interval) >= self._check_interval:
            self._warned[host] = now
            LOG.warning("no agent consumes %s: its events wait there. Is the agent down, or "
                        "is its [DEFAULT] host not nova's host name %r?", self.name(host), host)
        self._counters.incr("router.no_consumer")

    def parking(self) -> kombu.Queue:
        return kombu.Queue(self._parking_queue, exchange=kombu.Exchange(""),
                           routing_key=self._parking_queue, durable=True, auto_delete=False)
