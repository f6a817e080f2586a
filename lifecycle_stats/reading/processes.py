"""Which devices of each domain had counters, per QEMU process: the memory behind the torn rule.

A read that races virDomainDestroy comes back "running" with the device names but without
their counters (measured: it starts 1-4 ms before the destroy). Some devices never have
counters at all: libvirt reports a vhost-user (OVS-DPDK) vNIC by name but cannot read its
stats. So a device without counters marks a torn read only when the same QEMU process showed
counters for it before. A QEMU process is told apart by libvirt's domain id (a new one for
every process) and by its cpu time, which never goes down within one process.
"""
from __future__ import annotations

import threading
from typing import Any, Iterable, Mapping, NamedTuple

Stats = Mapping[str, Any]


class ProcessView(NamedTuple):  # a tuple: a running domain's cpu makes a new one every poll
    process_id: int
    cpu_time_ns: int
    counted: frozenset[str]  # "block:vda", "net:tap1": devices that had counters


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
    """Torn: a device that had counters earlier in this QEMU process has none now. With no
    memory of the process (`earlier` None), only the measured torn shape counts: devices named
    and not one of them with counters."""
    return torn_devices(counted_devices(stats), uncounted_devices(stats), earlier)


def torn_devices(counted: frozenset[str], missing: frozenset[str],
                 earlier: frozenset[str] | None) -> bool:
    """is_torn() on a record's device sets already parsed (bulk_parse.devices)."""
    if not missing:
        return False
    if earlier is None:
        return not counted
    return bool(missing & earlier)


class DeviceMemory:
    """Per domain uuid, the current QEMU process and its devices with counters. Shared by the
    inspectors of the flush, the poller and the event handler, so a flush's read is judged
    against what the poller saw."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._views: dict[str, ProcessView] = {}

    def judge(self, instance_id: str, process_id: int, stats: Stats) -> bool:
        """True when stats is a torn read; otherwise remembers its devices with counters. A
        first torn-looking read of a process is remembered too (with no devices), so a domain
        whose devices never have counters is read from its second read on."""
        return self.judge_devices(instance_id, process_id, stats.get("cpu.time", 0),
                                  counted_devices(stats), uncounted_devices(stats))

    def judge_devices(self, instance_id: str, process_id: int, cpu: int,
                      counted: frozenset[str], uncounted: frozenset[str]) -> bool:
        """judge() on a record's cpu time and device sets already parsed (the bulk poll)."""
        with self._lock:
            view = self._views.get(instance_id)
            same = view is not None and view.process_id == process_id and cpu >= view.cpu_time_ns
            earlier = view.counted if same else None
            torn = bool(uncounted) and torn_devices(counted, uncounted, earlier)
            if not torn and not (same and cpu == view.cpu_time_ns and counted == earlier):
                self._views[instance_id] = ProcessView(process_id, cpu, counted)
            elif earlier is None:
                self._views[instance_id] = ProcessView(process_id, cpu, frozenset())
            return torn

    def keep_only(self, instance_ids: Iterable[str]) -> None:
        """Forget domains not in instance_ids (a bulk poll's active domains): a domain that
        starts again runs a new QEMU process anyway."""
        present = set(instance_ids)
        with self._lock:
            for instance_id in [i for i in self._views if i not in present]:
                del self._views[instance_id]
