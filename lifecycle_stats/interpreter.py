"""The interpreter settings of a latency-bound agent: nova's delete waits for a capture that
is mostly libvirt and fsync waits, so what costs it is waiting for the GIL and the collector.

- The switch interval: a thread that has the GIL keeps it up to this long while another
  waits. CPython's 5 ms default let a CPU-bound thread (the publication's build, a bulk
  poll's parse) hold a capture, its answer to nova or its libvirt reply for 5 ms at a time,
  several times per capture (measured with spans in the agent: 9–23 ms waits at p90).
- The start-up heap is frozen (gc.freeze): oslo.messaging, kombu and libvirt leave ~10^5
  long-lived objects, and every full collection walked them (measured: 22–42 ms pauses of
  the whole agent, any thread's capture included). What is allocated later is collected
  as before.
"""
from __future__ import annotations

import gc
import sys

SWITCH_INTERVAL = 0.001  # seconds; CPython's default is 0.005


def tune_for_latency() -> None:
    """Once, after the agent has started (its long-lived objects exist)."""
    sys.setswitchinterval(SWITCH_INTERVAL)
    gc.collect()  # what start-up left as garbage is freed, not frozen
    gc.freeze()
