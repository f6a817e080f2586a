"""Prometheus metrics, built at scrape time from the agent's Counters and snapshot().

Nothing is counted twice: AgentCollector turns the same Counters and snapshot dict that the
status file shows into metric families each time it is collected. Names follow Prometheus
conventions (prefix `lifecycle_stats_`, counters end in `_total`, durations in `_seconds`);
labels are bounded sets (capture kind, conduit, connection), never an instance id.

Counters map by rule: a counter whose name carries a value (`sender.<conduit>.errors`,
`flush.action.<action>`, `usage.exists.<source>`, ...) is one family with that value as a
label (LABELLED); any other counter `a.b` becomes `lifecycle_stats_a_b_total`, so a counter
added later is exported without touching this file. Every family is there from the first
scrape: the known label values (KNOWN_LABELS) and the agent's counters (KNOWN_COUNTERS) start
at 0, so rate() and alerts see them before the first event.
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

from lifecycle_stats.counters import LATENCY_BUCKETS, Counters, HistogramSnapshot
from lifecycle_stats.interfaces import Outcome
from lifecycle_stats.publishing import exists

PREFIX = "lifecycle_stats_"
FLUSH_DURATION = "flush.duration"  # histogram name in Counters: FLUSH_DURATION.<outcome>
POLL_COUNTER = "poller.polls"  # incremented after each successful bulk poll
CAPTURE_KINDS = ("final", "last_known", "unavailable")
FORMATS = ("legacy", "versioned")
# nova's stop actions (listeners/nova/protocol.ACTION_EVENTS; operations may not import the
# listeners, tests/unit/test_metrics.py checks the two agree)
ACTIONS = ("delete", "power_off", "reboot", "rebuild", "shelve", "shelve_offload", "rescue",
           "unrescue", "resize", "suspend", "soft_delete", "resize_revert")
CLOSING_ACTIONS = tuple(a for a in ACTIONS if a != "delete")  # capture/closing_reads.py
EXISTS_SOURCES = (exists.AGENT_PERIOD, exists.NOVA_AUDIT, exists.DELETED)
# the pipeline's outcomes, and `error` when the handler raised (timed() below)
FLUSH_OUTCOMES = (*(o.value for o in Outcome), "error")
CONDUITS = object()  # known values: the configured conduits

# (counter name pattern, family, label, help): one family per pattern, the group is the label.
LABELLED = (
    (re.compile(r"flush\.(final|last_known|unavailable)$"), "captures", "kind",
     "delete.samples captured, by capture kind"),
    (re.compile(r"flush\.action\.(\w+)$"), "closing_reads", "action",
     "closing readings of a QEMU process nova announced it would stop (not a delete), "
     "by nova action"),
    (re.compile(r"bus\.triggers\.(\w+)$"), "bus_triggers", "format",
     "delete.start triggers received for this host, by notification format"),
    (re.compile(r"bus\.audits\.(\w+)$"), "bus_audits", "format",
     "nova's exists audits received for this host, by notification format"),
    (re.compile(r"hook\.triggers\.(\w+)$"), "hook_triggers", "action",
     "announcements received from nova's notifier driver, by nova action"),
    (re.compile(r"sender\.(.+)\.sent$"), "conduit_sent", "conduit",
     "notifications confirmed by a conduit"),
    (re.compile(r"sender\.(.+)\.retries$"), "conduit_retries", "conduit",
     "failed delivery attempts that were retried, by conduit"),
    (re.compile(r"sender\.(.+)\.errors$"), "conduit_errors", "conduit",
     "delivery attempts that failed unexpectedly (a conduit bug), by conduit"),
    (re.compile(r"sender\.(.+)\.rejected$"), "conduit_rejected", "conduit",
     "notifications a conduit refused for good (moved to the rejects), by conduit"),
    (re.compile(r"sender\.(.+)\.retired_batches$"), "conduit_retired_batches", "conduit",
     "spool transactions retiring what a conduit confirmed (one per batch), by conduit"),
    (re.compile(r"usage\.exists\.(\w+)$"), "usage_exists", "source",
     "usage exists notifications spooled, by source"),
)
KNOWN_LABELS = {"captures": CAPTURE_KINDS, "closing_reads": CLOSING_ACTIONS, "bus_triggers": FORMATS,
                "bus_audits": FORMATS, "hook_triggers": ACTIONS, "conduit_sent": CONDUITS,
                "conduit_retries": CONDUITS, "conduit_errors": CONDUITS,
                "conduit_rejected": CONDUITS, "conduit_retired_batches": CONDUITS,
                "usage_exists": EXISTS_SOURCES}
# The agent's unlabelled counters (tests/unit/test_metrics.py checks the code for more).
KNOWN_COUNTERS = (
    "bus.connect_errors", "bus.handler_errors", "bus.host_mismatch",
    "bus.ignored", "bus.rejected", "bus.requeued", "bus.requeued_at_stop",
    "events.handler_errors", "events.start_reads", "events.stop_read_missed",
    "events.stop_reads", "flush.action_missed", "flush.deferred", "flush.duplicates",
    "flush.flagged", "flush.metadata_unusable", "flush.not_nova", "flush.read_errors",
    "hook.busy", "hook.connections", "hook.deferred", "hook.handler_errors", "hook.ignored",
    "hook.late_replies", "hook.read_errors",
    "hook.rejected", "inspector.torn_reads", "inspector.unreadable", "inspector.vanished",
    "libvirt.disconnects", "libvirt.reconnect_errors", "libvirt.reconnects",
    "libvirt.resync_errors", "metadata.malformed", "metadata.read_errors",
    "metadata.rejected", "nova_waiting.holds", "nova_waiting.holds_expired",
    "nova_waiting.waits_timed_out", "poller.errors", "poller.polls", "publication.batches",
    "publication.built", "publication.errors", "publication.flagged", "spool.captures",
    "spool.checkpoints", "spool.checkpoint_errors", "spool.checkpointed_pages",
    "spool.commits", "spool.committed_writes", "spool.corrupt", "spool.duplicate",
    "spool.over_bound", "spool.put", "spool.quarantined", "spool.rejects.capture",
    "spool.shed", "status.write_errors", "usage.exists_duplicates", "usage.exists_incomplete",
    "usage.final_exists_errors", "usage.ledger_errors", "usage.nova_exists_after_final",
    "usage.nova_exists_unknown", "usage.period_errors", "usage.periods_closed",
    "usage.pre_end_poll_errors", "usage.ends_withdrawn", "usage.deletes_withdrawn",
    "usage.exists_deferred",
    "usage.instances_ended", "usage.ledger_moved_aside", "usage.readings_after_end",
    "usage.readings_of_ended_processes", "usage.readings_out_of_order", "usage.running_when_first_seen", "usage.series_resets",
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
        self._created = clock()  # the poll age counts from here until the first poll

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
        yield GaugeMetricFamily(PREFIX + "last_successful_poll_timestamp_seconds",
                                "when the last bulk poll succeeded (epoch seconds); 0: none "
                                "yet", value=last or 0.0)
        yield GaugeMetricFamily(PREFIX + "last_successful_poll_age_seconds",
                                "seconds since the last bulk poll succeeded (before the "
                                "first: since the agent started)",
                                value=max(0.0, self._clock() - (last or self._created)))


def _build_info() -> Metric:
    info = InfoMetricFamily(PREFIX + "build", "version of the running agent")
    info.add_metric([], {"version": version(), "python": platform.python_version()})
    return info


def counter_families(values: dict[str, int], conduits: list[str]) -> Iterator[Metric]:
    labelled = {family: CounterMetricFamily(PREFIX + family, help_text, labels=[label])
                for _, family, label, help_text in LABELLED}
    counts: dict[str, dict[str, int]] = {
        family: dict.fromkeys(conduits if known is CONDUITS else known, 0)
        for family, known in KNOWN_LABELS.items()}
    plain = dict.fromkeys(KNOWN_COUNTERS, 0)
    for name, value in values.items():
        for pattern, family, _, _ in LABELLED:
            match = pattern.match(name)
            if match:
                counts[family][match.group(1)] = value
                break
        else:
            plain[name] = value
    for family, by_value in counts.items():
        for label_value, value in sorted(by_value.items()):
            labelled[family].add_metric([label_value], value)
    yield from labelled.values()
    for name, value in sorted(plain.items()):
        yield CounterMetricFamily(metric_name(name)[:-len("_total")],
                                  f"agent counter {name}", value=value)


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
    empty = HistogramSnapshot(LATENCY_BUCKETS, (0,) * (len(LATENCY_BUCKETS) + 1), 0.0)
    observed = {name[len(FLUSH_DURATION) + 1:]: hist for name, hist in histograms.items()
                if name.startswith(FLUSH_DURATION + ".")}
    for outcome in sorted({*FLUSH_OUTCOMES, *observed}):
        hist = observed.get(outcome, empty)
        family.add_metric([outcome], _cumulative(hist), sum_value=hist.total)
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
    def timed_handle(trigger, **kwargs):
        started = clock()
        outcome = "error"
        try:
            result = handle(trigger, **kwargs)
            outcome = str(getattr(result, "value", result))
            return result
        finally:
            counters.observe(f"{FLUSH_DURATION}.{outcome}", clock() - started)

    return timed_handle
