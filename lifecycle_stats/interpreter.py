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
- At most two malloc arenas (limit_malloc_arenas, before any thread starts): glibc gives a
  thread that contends for the heap an arena of its own (up to 8 per core) and keeps what
  it freed there, so a burst handled on many threads left every arena's pages resident.
  The GIL already serialises nearly every allocation, so fewer arenas cost no waiting.
- Free heap is given back once a burst has been delivered (release_free_heap): glibc keeps
  what a thread freed in that thread's malloc arena, so a burst's payloads, built and sent
  on several threads, left the agent ~5 MiB larger for good (doc/benchmarks.md).
- No green DNS (skip_green_dns, before oslo.messaging is imported): oslo.messaging imports
  eventlet (through oslo.service and oslo.utils), and eventlet imports dnspython twice over
  for a resolver only a monkey-patched process uses: ~200 modules, 6.6 MiB resident in an
  agent that never patches anything (refuse_green_threads in agent.py).
"""
from __future__ import annotations

import ctypes
import functools
import gc
import os
import sys

SWITCH_INTERVAL = 0.001  # seconds; CPython's default is 0.005


def tune_for_latency() -> None:
    """Once, after the agent has started (its long-lived objects exist)."""
    sys.setswitchinterval(SWITCH_INTERVAL)
    gc.collect()  # what start-up left as garbage is freed, not frozen
    gc.freeze()


@functools.cache
def _malloc_trim():
    """glibc's malloc_trim, or None where the C library has none (musl)."""
    return getattr(ctypes.CDLL(None), "malloc_trim", None)


def release_free_heap() -> bool:
    """Return the C heap's free pages, in every malloc arena, to the OS (malloc_trim(0): a
    walk of the free lists, ~1 ms); False where the C library cannot."""
    trim = _malloc_trim()
    if trim is None:
        return False
    trim(0)
    return True


def skip_green_dns() -> None:
    """Tell eventlet not to load its green resolver (EVENTLET_NO_GREENDNS, read once when
    eventlet is first imported); an operator's own setting wins."""
    os.environ.setdefault("EVENTLET_NO_GREENDNS", "yes")


M_ARENA_MAX = -8  # glibc's mallopt() parameter
MALLOC_ARENAS = 2


def limit_malloc_arenas(arenas: int = MALLOC_ARENAS) -> bool:
    """Cap glibc's malloc arenas, unless the operator set MALLOC_ARENA_MAX; False where the C
    library has no mallopt (musl) or refused."""
    if "MALLOC_ARENA_MAX" in os.environ:
        return False
    mallopt = getattr(ctypes.CDLL(None), "mallopt", None)
    return mallopt is not None and mallopt(M_ARENA_MAX, arenas) == 1
