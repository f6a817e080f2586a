"""Which devices of each domain had counters, per QEMU process: the memory behind the torn rule.

A read that races virDomainDestroy comes back "running" with the device names but without
their counters (measured: it starts 1-4 ms before the destroy), in steps: the disk loses its
counters first, the vNIC a moment later (seen 39 times in 60 destroys on this host). Some
devices never have counters at all: libvirt reports a vhost-user (OVS-DPDK) vNIC by name but
cannot read its stats. So a read is torn when a device that had counters earlier in the same
QEMU process has none now (or every device is gone); with no memory of the process, when no
device has counters or a disk is named with its file and no counters (QEMU counts every disk it
opened). A shape that looks torn is believed only once the same process has kept it for STEADY
seconds (a destroy ends in ~2 s): the memory never learns a torn read as the process's devices.
A QEMU process is told apart by libvirt's domain id (a new one for every process) and by its cpu
time, which never goes down within one process.
"""
from __future__ import annotations

import threading
import time
from typing import Any, Callable, Iterable, Mapping, NamedTuple

Stats = Mapping[str, Any]
STEADY = 10.0  # seconds one process must keep a torn-looking shape before it is believed


class ProcessView(NamedTuple):  # a tuple: a running domain's cpu makes a new one every poll
    process_id: int
    cpu_time_ns: int
    counted: frozenset[str] | None  # "block:vda", "net:tap1": devices that had counters
    odd_since: float | None  # when its reads began to look torn (monotonic), while they do


def counted_devices(stats: Stats) -> frozenset[str]:
    disks = (f"block:{stats.get(f'block.{i}.name')}" for i in range(stats.get("block.count", 0))
             if f"block.{i}.rd.reqs" in stats)
    vnics = (f"net:{stats.get(f'net.{i}.name')}" for i in range(stats.get("net.count", 0))
             if f"net.{i}.rx.bytes" in stats)
    return frozenset((*disks, *vnics))


def uncounted_devices(stats: Stats) -> frozenset[str]:
    """Devices named without counters. An empty cdrom (no path) is not one: it never has any."""
    disks = (f"block:{stats.get(f'block.{i}.name')}" for i in range(stats.get("block.count", 0))
             if f"block.{i}.path" in stats and f"block.{i}.rd.reqs" not in stats)
    vnics = (f"net:{stats.get(f'net.{i}.name')}" for i in range(stats.get("net.count", 0))
             if f"net.{i}.name" in stats and f"net.{i}.rx.bytes" not in stats)
    return frozenset((*disks, *vnics))


def is_torn(stats: Stats, earlier: frozenset[str] | None) -> bool:
    """Torn: a device that had counters earlier in this QEMU process has none now, or none
    has. With no memory of the process (`earlier` None), the measured torn shapes: devices named
    and not one with counters, or a disk named with its file and no counters."""
    return torn_devices(counted_devices(stats), uncounted_devices(stats), earlier)


def torn_devices(counted: frozenset[str], missing: frozenset[str],
                 earlier: frozenset[str] | None) -> bool:
    """is_torn() on a record's device sets already parsed (bulk_parse.devices)."""
    if earlier is None:
        return bool(missing) and (not counted or any(d.startswith("block:") for d in missing))
    return bool(missing & earlier) or (bool(earlier) and not counted)


class DeviceMemory:
    """Per domain uuid, the current QEMU process and its devices with counters. Shared by the
    inspectors of the flush, the poller and the event handler, so a flush's read is judged
    against what the poller saw."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._lock = threading.Lock()
        self._clock = clock
        self._views: dict[str, ProcessView] = {}

    def judge(self, instance_id: str, process_id: int, stats: Stats) -> bool:
        """True when stats is a torn read; otherwise remembers its devices with counters."""
        return self.judge_devices(instance_id, process_id, stats.get("cpu.time", 0),
                                  counted_devices(stats), uncounted_devices(stats))

    def judge_devices(self, instance_id: str, process_id: int, cpu: int,
                      counted: frozenset[str], uncounted: frozenset[str]) -> bool:
        """judge() on a record's cpu time and device sets already parsed (the bulk poll)."""
        with self._lock:
            view = self._views.get(instance_id)
            same = view is not None and view.process_id == process_id and cpu >= view.cpu_time_ns
            earlier = view.counted if same else None
            # (a record with every device counted, the poll's usual, skips the set work)
            if not ((uncounted or not counted) and torn_devices(counted, uncounted, earlier)):
                if not (same and cpu == view.cpu_time_ns and counted == earlier
                        and view.odd_since is None):
                    self._views[instance_id] = ProcessView(process_id, cpu, counted, None)
                return False
            now = self._clock()
            since = view.odd_since if same and view.odd_since is not None else now
            if now - since < STEADY:  # remembered as it was: a second torn read is torn too
                self._views[instance_id] = ProcessView(process_id, cpu, earlier, since)
                return True
            # kept by a running process for STEADY seconds: devices without counters
            # (vhost-user) or unplugged, not a destroy's race
            self._views[instance_id] = ProcessView(process_id, cpu, counted, None)
            return False

    def keep_only(self, instance_ids: Iterable[str]) -> None:
        """Forget domains not in instance_ids (a bulk poll's active domains): a domain that
        starts again runs a new QEMU process anyway."""
        present = set(instance_ids)
        with self._lock:
            for instance_id in [i for i in self._views if i not in present]:
                del self._views[instance_id]
