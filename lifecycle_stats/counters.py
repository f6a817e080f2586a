"""Thread-safe named counters (rejects, retries, captures) and latency histograms.

The status file and the Prometheus collector (metrics.py) both read these; nothing is
counted twice. Each counter also remembers when it last moved, so "seconds since the last
successful poll" is derived from `poller.polls` instead of being kept a second time.
"""
from __future__ import annotations

import bisect
import collections
import dataclasses
import threading
import time
from typing import Callable

# Upper bounds (seconds) for latency histograms: a flush takes ~10 ms idle, ~200 ms in a
# burst of 20 and ~2 s when the read waits out nova's destroy (doc/benchmarks.md).
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


@dataclasses.dataclass(frozen=True)
class HistogramSnapshot:
    buckets: tuple[float, ...]  # upper bounds, ascending, +Inf implied
    counts: tuple[int, ...]  # per bucket (not cumulative), len(buckets) + 1
    total: float  # sum of observed values

    @property
    def count(self) -> int:
        return sum(self.counts)


class _Histogram:
    def __init__(self, buckets: tuple[float, ...]) -> None:
        self.buckets = buckets
        self.counts = [0] * (len(buckets) + 1)
        self.total = 0.0

    def add(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.buckets, value)] += 1
        self.total += value

    def snapshot(self) -> HistogramSnapshot:
        return HistogramSnapshot(self.buckets, tuple(self.counts), self.total)


class Counters:
    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._lock = threading.Lock()
        self._clock = clock
        self._values: collections.Counter[str] = collections.Counter()
        self._changed: dict[str, float] = {}
        self._histograms: dict[str, _Histogram] = {}

    def incr(self, name: str, by: int = 1) -> None:
        with self._lock:
            self._values[name] += by
            self._changed[name] = self._clock()

    def get(self, name: str) -> int:
        with self._lock:
            return self._values[name]

    def changed_at(self, name: str) -> float | None:
        """Wall-clock time (epoch seconds) of the last incr of name; None if never."""
        with self._lock:
            return self._changed.get(name)

    def snapshot(self) -> dict[str, int]:
        with self._lock:
            return dict(self._values)

    def observe(self, name: str, value: float,
                buckets: tuple[float, ...] = LATENCY_BUCKETS) -> None:
        """Add value to histogram name (created with buckets on first use)."""
        with self._lock:
            histogram = self._histograms.get(name)
            if histogram is None:
                histogram = self._histograms[name] = _Histogram(tuple(sorted(buckets)))
            histogram.add(value)

    def histograms(self) -> dict[str, HistogramSnapshot]:
        with self._lock:
            return {name: h.snapshot() for name, h in self._histograms.items()}
