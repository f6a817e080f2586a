"""The router's Prometheus metrics, built at scrape time from its Counters and connections.

Every family is present from the first scrape, at zero, so alerts and rate() see it before
the first event. Label values are labels: what happened to each message of nova's queue is
``lifecycle_stats_router_messages_total{outcome=...}``.
"""
from __future__ import annotations

import platform
from typing import Callable, Iterator, Mapping

from prometheus_client.core import (CounterMetricFamily, GaugeMetricFamily,
                                    InfoMetricFamily, Metric)
from prometheus_client.registry import Collector

from lifecycle_stats.counters import Counters
from lifecycle_stats.operations.metrics import version

PREFIX = "lifecycle_stats_router_"
# outcome label -> the relay's counter
OUTCOMES = {
    "routed": "router.routed",  # confirmed in its host's queue
    "parked": "router.parked",  # the host queue was full: in the parking queue
    "dropped": "router.dropped",  # not an event any agent uses
    "ignored": "router.ignored",  # nobody's (nova-api's null host)
    "malformed": "router.malformed",  # undecodable, or no host to trust
}
# family (without prefix and _total) -> (counter, help)
COUNTERS = {
    "no_consumer_events": ("router.no_consumer",
                           "events routed to a host queue that had no consumer at its last "
                           "check (agent down, or [DEFAULT] host differs from nova's): alert"),
    "returned": ("router.returned",
                 "publishes the broker returned (host queue deleted or expired), then "
                 "republished after declaring the queue again"),
    "host_queue_mismatch": ("router.host_queue_mismatch",
                            "host queues declared with other arguments than the router's"),
    "reconnects": ("router.reconnects", "broker connections lost and reopened"),
}


class RouterCollector(Collector):
    def __init__(self, counters: Counters, connections: Callable[[], Mapping[str, str]]):
        self._counters = counters
        self._connections = connections

    def describe(self) -> list[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        values = self._counters.snapshot()
        info = InfoMetricFamily(PREFIX + "build", "version of the running router")
        info.add_metric([], {"version": version(), "python": platform.python_version()})
        yield info
        messages = CounterMetricFamily(PREFIX + "messages",
                                       "messages taken from nova's queue, by outcome",
                                       labels=["outcome"])
        for outcome, counter in OUTCOMES.items():
            messages.add_metric([outcome], values.get(counter, 0))
        yield messages
        for family, (counter, help_text) in COUNTERS.items():
            yield CounterMetricFamily(PREFIX + family, help_text, value=values.get(counter, 0))
        up = GaugeMetricFamily(PREFIX + "connection_up",
                               "1 when the broker connection is up", labels=["connection"])
        for name, state in sorted(self._connections().items()):
            up.add_metric([name], 1.0 if state == "connected" else 0.0)
        yield up
