"""Prometheus metrics, built at scrape time from the agent's Counters and snapshot().

Nothing is counted twice: AgentCollector turns the same Counters and snapshot dict that the
status file shows into metric families each time it is collected. Names follow Prometheus
conventions (prefix `lifecycle_stats_`, counters end in `_total`, durations in `_seconds`);
labels are bounded sets (capture kind, conduit, connection), never an instance id.

Counters map by rule: the labelled families below, and any other counter `a.b` becomes
`lifecycle_stats_a_b_total`, so a counter added later is exported without touching this file.
"""
from __future__ import annotations

import importlib.metadata
import math
import platform
import re
import time
from typing import Any, Callable, Iterator

from prometheus_client.core import (CounterMetricFamily, GaugeMetricFamily,
                                    HistogramMetricFamily, InfoMetricFamily, Metric)
from prometheus_client.registry import Collector

from lifecycle_stats.counters import Counters, HistogramSnapshot

PREFIX = "lifecycle_stats_"
FLUSH_DURATION = "flush.duration"  # histogram name in Counters: FLUSH_DURATION.<outcome>
POLL_COUNTER = "poller.polls"  # incremented after each successful bulk poll
CAPTURE_KINDS = ("final", "last_known", "unavailable")

# (counter name pattern, family, label, help): one family per pattern, the group is the label.
LABELLED = (
    (re.compile(r"flush\.(final|last_known|unavailable)$"), "captures", "kind",
     "delete.samples captured, by capture kind"),
    (re.compile(r"bus\.triggers\.(\w+)$"), "bus_triggers", "format",
     "delete.start triggers received for this host, by notification format"),
    (re.compile(r"sender\.(.+)\.sent$"), "conduit_sent", "conduit",
     "notifications confirmed by a conduit"),
    (re.compile(r"sender\.(.+)\.retries$"), "conduit_retries", "conduit",
     "failed delivery attempts that were retried, by conduit"),
)
_UNSAFE = re.compile(r"[^a-zA-Z0-9_]")


def metric_name(counter: str) -> str:
    """`bus.rejected` -> `lifecycle_stats_bus_rejected_total`."""
    return PREFIX + _UNSAFE.sub("_", counter) + "_total"


def version() -> str:
    try:
        return importlib.metadata.version("lifecycle-stats")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


class AgentCollector(Collector):
    """Collects from snapshot_fn() (the agent's status dict) and counters at each scrape."""

    def __init__(self, snapshot_fn: Callable[[], dict[str, Any]], counters: Counters,
                 clock: Callable[[], float] = time.time) -> None:
        self._snapshot = snapshot_fn
        self._counters = counters
        self._clock = clock

    def describe(self) -> list[Metric]:
        return []  # collected lazily: registering must not call the agent's snapshot

    def collect(self) -> Iterator[Metric]:
        snapshot = self._snapshot()
        conduits = sorted((snapshot.get("spool") or {}).get("by_conduit") or {})
        yield _build_info()
        yield from counter_families(snapshot.get("counters") or {}, conduits)
        yield from spool_families(snapshot.get("spool") or {})
        yield from connection_families(snapshot.get("connections") or {}, conduits,
                                       self._counters)
        yield from self._poll_families()
        yield GaugeMetricFamily(PREFIX + "instances", "nova instances known on this host",
                                value=snapshot.get("instances", 0))
        yield flush_duration_family(self._counters.histograms())

    def _poll_families(self) -> Iterator[Metric]:
        last = self._counters.changed_at(POLL_COUNTER)
        if last is None:  # no successful poll yet: absent rather than a made-up age
            return
        yield GaugeMetricFamily(PREFIX + "last_successful_poll_timestamp_seconds",
                                "when the last bulk poll succeeded (epoch seconds)", value=last)
        yield GaugeMetricFamily(PREFIX + "last_successful_poll_age_seconds",
                                "seconds since the last bulk poll succeeded",
                                value=max(0.0, self._clock() - last))


def _build_info() -> Metric:
    info = InfoMetricFamily(PREFIX + "build", "version of the running agent")
    info.add_metric([], {"version": version(), "python": platform.python_version()})
    return info


def counter_families(values: dict[str, int], conduits: list[str]) -> Iterator[Metric]:
    labelled = {family: CounterMetricFamily(PREFIX + family, help_text, labels=[label])
                for _, family, label, help_text in LABELLED}
    seen: dict[str, set[str]] = {family: set() for family in labelled}
    for name, value in sorted(values.items()):
        for pattern, family, _, _ in LABELLED:
            match = pattern.match(name)
            if match:
                labelled[family].add_metric([match.group(1)], value)
                seen[family].add(match.group(1))
                break
        else:
            yield CounterMetricFamily(metric_name(name)[:-len("_total")],
                                      f"agent counter {name}", value=value)
    # Known label values start at 0, so rate() and alerts see them before the first event.
    for family, label_values in (("captures", CAPTURE_KINDS), ("conduit_sent", conduits),
                                 ("conduit_retries", conduits)):
        for value in label_values:
            if value not in seen[family]:
                labelled[family].add_metric([value], 0)
    yield from labelled.values()


def spool_families(spool: dict[str, Any]) -> Iterator[Metric]:
    yield GaugeMetricFamily(PREFIX + "spool_records", "records in the spool (all conduits)",
                            value=spool.get("depth") or 0)
    yield GaugeMetricFamily(PREFIX + "spool_oldest_record_age_seconds",
                            "age of the oldest spooled record; 0 when the spool is empty",
                            value=spool.get("oldest_age_seconds") or 0.0)
    pending = GaugeMetricFamily(PREFIX + "conduit_pending_records",
                                "spooled records a conduit has not confirmed", labels=["conduit"])
    oldest = GaugeMetricFamily(PREFIX + "conduit_oldest_pending_age_seconds",
                               "age of the oldest record a conduit has not confirmed; 0 when "
                               "none", labels=["conduit"])
    for conduit, backlog in sorted((spool.get("by_conduit") or {}).items()):
        pending.add_metric([conduit], backlog["pending"])
        oldest.add_metric([conduit], backlog["oldest_age_seconds"] or 0.0)
    yield pending
    yield oldest


def connection_families(connections: dict[str, str], conduits: list[str],
                        counters: Counters) -> Iterator[Metric]:
    family = GaugeMetricFamily(PREFIX + "connection_up",
                               "1 when a connection (libvirt, bus) is up", labels=["connection"])
    for name, state in sorted(connections.items()):
        if state in ("connected", "disconnected"):  # "unknown": no sample rather than a guess
            family.add_metric([name], 1.0 if state == "connected" else 0.0)
    yield family
    up = GaugeMetricFamily(PREFIX + "conduit_up",
                           "1 unless the conduit's latest delivery attempt failed",
                           labels=["conduit"])
    for conduit in conduits:
        up.add_metric([conduit], 1.0 if conduit_ok(counters, conduit) else 0.0)
    yield up


def conduit_ok(counters: Counters, conduit: str) -> bool:
    """A failed attempt counts a retry; a success counts a send: whichever came last wins."""
    failed = counters.changed_at(f"sender.{conduit}.retries")
    sent = counters.changed_at(f"sender.{conduit}.sent")
    return failed is None or (sent is not None and sent >= failed)


def flush_duration_family(histograms: dict[str, HistogramSnapshot]) -> Metric:
    family = HistogramMetricFamily(
        PREFIX + "flush_duration_seconds",
        "delete.start handled: received to spooled (or dropped), by outcome", labels=["outcome"])
    for name, hist in sorted(histograms.items()):
        if name.startswith(FLUSH_DURATION + "."):
            family.add_metric([name[len(FLUSH_DURATION) + 1:]], _cumulative(hist),
                              sum_value=hist.total)
    return family


def _cumulative(hist: HistogramSnapshot) -> list[tuple[str, float]]:
    out, running = [], 0
    for bound, count in zip((*hist.buckets, math.inf), hist.counts):
        running += count
        out.append(("+Inf" if math.isinf(bound) else repr(float(bound)), running))
    return out


def timed(handle: Callable[[Any], Any], counters: Counters,
          clock: Callable[[], float] = time.perf_counter) -> Callable[[Any], Any]:
    """handle, observing its duration into `flush.duration.<outcome>` (`error` if it raised).

    The outcome is the returned value's `.value` (interfaces.Outcome) or its str()."""
    def timed_handle(trigger):
        started = clock()
        outcome = "error"
        try:
            result = handle(trigger)
            outcome = str(getattr(result, "value", result))
            return result
        finally:
            counters.observe(f"{FLUSH_DURATION}.{outcome}", clock() - started)

    return timed_handle
