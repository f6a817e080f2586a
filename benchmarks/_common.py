"""Helpers shared by the final-sample benchmarks (flush_latency.py, e2e_latency.py).

Percentiles, a plain-text table, a scratch directory on disk, the trigger the bus listener
makes of nova's delete.start, and real QEMU guests made through novalike.GuestFactory (names
"lst-<pid>-<n>", so novalike.sweep_leftovers removes a killed run's guests) and removed even
when libvirtd restarted meanwhile (other test runs on this machine restart it).
"""
from __future__ import annotations

import contextlib
import datetime
import os
import shutil
import signal
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Iterator, Sequence

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
    sys.path.insert(0, REPO)

from tests.support import guests as novalike  # noqa: E402
from lifecycle_stats.capture import poller as _poller  # noqa: E402
from lifecycle_stats.records import StopAnnouncement  # noqa: E402

# The agent's own [poller] interval default: what the latency benchmarks run with unless told
# (a poll in flight shares libvirtd and the two cores with a capture; --poll-interval 2 shows it)
AGENT_POLL_INTERVAL = next(o.default for o in _poller.OPTS if o.name == "interval")
PREFIX = "lst"  # the tests' prefix too: their session fixture sweeps a killed run's guests
LEGACY_DELETE = "compute.instance.delete.start"


# -- statistics --------------------------------------------------------------------------------

def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100); nan for no values."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = max(1, -(-len(ordered) * q // 100))  # ceil(n*q/100), at least 1
    return ordered[int(min(rank, len(ordered))) - 1]


def summary(values: Sequence[float]) -> dict[str, float]:
    return {"n": len(values),
            "p50": statistics.median(values) if values else float("nan"),
            "p99": percentile(values, 99), "max": max(values) if values else float("nan")}


def ms_since(start: float) -> float:
    return (time.perf_counter() - start) * 1e3


# -- output ------------------------------------------------------------------------------------

def table(headers: Sequence[str], rows: Sequence[Sequence[object]], first_width: int = 0) -> str:
    """Right-aligned columns (the first left-aligned); floats with one decimal."""
    def cell(value: object) -> str:
        return f"{value:.1f}" if isinstance(value, float) else str(value)

    cells = [[cell(v) for v in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) for i, h in enumerate(headers)]
    widths[0] = max(widths[0], first_width)
    lines = ["  ".join(h.ljust(w) if i == 0 else h.rjust(w)
                       for i, (h, w) in enumerate(zip(headers, widths)))]
    lines += ["  ".join(c.ljust(w) if i == 0 else c.rjust(w)
                        for i, (c, w) in enumerate(zip(row, widths))) for row in cells]
    return "\n".join(lines)


# -- process hygiene ---------------------------------------------------------------------------

def exit_on_sigterm() -> None:
    """SIGTERM raises SystemExit, so the benchmark's `finally` removes what it made."""
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))


@contextlib.contextmanager
def workdir(prefix: str) -> Iterator[str]:
    """A scratch directory on disk (not tmpfs: the spool's fsync is part of a flush)."""
    path = tempfile.mkdtemp(prefix=prefix, dir="/var/tmp")
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


# -- guests ------------------------------------------------------------------------------------

@contextlib.contextmanager
def guests(uri: str, directory: str, *, paused: int, running: int,
           workers: int = 4) -> Iterator[tuple[novalike.GuestFactory, list]]:
    """`paused` + `running` real QEMU guests (created in parallel), removed on exit.

    Yields (factory, [(NovaGuest, virDomain), ...]), running guests last.
    """
    import libvirt

    conn = libvirt.open(uri)
    factory = novalike.GuestFactory(conn, directory, hypervisor="qemu", prefix=PREFIX)
    mine: list[novalike.NovaGuest] = []  # cleanup() forgets its list before it may fail

    def create(paused: bool) -> tuple:
        made = factory.create(paused=paused)  # a failed create removes its own half-guest
        mine.append(made[0])
        return made

    try:
        novalike.sweep_leftovers(conn, PREFIX)
        started = time.perf_counter()
        states = [True] * paused + [False] * running
        with ThreadPoolExecutor(max_workers=workers) as pool:
            made = list(pool.map(create, states))
        print(f"created {paused} paused + {running} running guests in "
              f"{time.perf_counter() - started:.1f} s", flush=True)
        yield factory, made
    finally:
        started = time.perf_counter()
        try:
            factory.cleanup()
        except Exception as exc:  # e.g. libvirtd restarted by another run: reconnect, retry
            print(f"guest cleanup failed ({exc}); retrying on a new connection", flush=True)
            remove_guests(uri, mine)
        finally:
            _close_quietly(conn)
        print(f"removed guests in {time.perf_counter() - started:.1f} s", flush=True)


def remove_guests(uri: str, made: Sequence[novalike.NovaGuest]) -> None:
    """Destroy and undefine each guest through a Hypervisor, which reconnects and retries
    when the connection drops; a guest already gone is fine. Images go with the workdir."""
    from lifecycle_stats.exceptions import DomainGone
    from lifecycle_stats.reading.hypervisor import Hypervisor

    hv = Hypervisor(uri, retry_attempts=20)

    def remove(conn, instance_id: str) -> None:
        dom = conn.lookupByUUIDString(instance_id)
        persistent = dom.isPersistent()
        if dom.isActive():
            dom.destroy()
        if persistent:
            dom.undefine()

    def remove_one(guest: novalike.NovaGuest) -> None:
        try:
            hv.call(lambda conn: remove(conn, guest.instance_id), guest.instance_id)
        except DomainGone:
            pass

    try:
        with ThreadPoolExecutor(max_workers=8) as pool:
            list(pool.map(remove_one, made))
    finally:
        hv.close()


def _close_quietly(conn) -> None:
    try:
        conn.close()
    except Exception:  # a connection broken by a daemon restart may fail to close
        pass


def trigger(guest: novalike.NovaGuest, host: str) -> StopAnnouncement:
    """The trigger the bus listener makes of nova's legacy delete.start for guest."""
    from lifecycle_stats.listeners import nova_notifications
    from tests.support.nova import legacy_payload

    received_at = datetime.datetime.now(datetime.timezone.utc)
    made = nova_notifications.parse(LEGACY_DELETE, f"compute.{host}",
                                    legacy_payload(guest, host), host=host,
                                    received_at=received_at)
    assert made is not None, "delete.start for this host was not recognised"
    return made
