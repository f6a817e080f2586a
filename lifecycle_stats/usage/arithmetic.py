"""Counter arithmetic of the usage ledger (pure: no storage, no clock).

A reading is flattened into named cumulative counter series: `cpu_time_ns`,
`disk:<dev>:<stat>`, `vnic:<tap>:<stat>`. A series belongs to one QEMU process and only grows;
one series going down (a disk or vNIC re-attached at the same target, vhost-user counters
reset) restarts THAT series from zero and says nothing about the others. A series that
appears mid-process (hot-plug) grows from zero. cpu time is the process's own: it going down
means another process (usage/identity.py).
"""
from __future__ import annotations

from typing import Iterable, Mapping

from lifecycle_stats.records import DomainReading

DISK_STATS = ("read_bytes", "read_requests", "write_bytes", "write_requests")
VNIC_STATS = ("rx_bytes", "rx_packets", "tx_bytes", "tx_packets")
CPU = "cpu_time_ns"

CounterValues = dict[str, int]


def flatten(reading: DomainReading) -> CounterValues:
    """The cumulative counters of an active reading; {} for an inactive one (no counters)."""
    if not reading.active:
        return {}
    out: CounterValues = {}
    if reading.cpu_time_ns is not None:
        out[CPU] = reading.cpu_time_ns
    for disk in reading.disks:
        for stat in DISK_STATS:
            out[f"disk:{disk.device}:{stat}"] = getattr(disk, stat)
    for vnic in reading.vnics:
        for stat in VNIC_STATS:
            out[f"vnic:{vnic.device}:{stat}"] = getattr(vnic, stat)
    return out


def advance(last: Mapping[str, int], current: Mapping[str, int]) -> tuple[CounterValues, CounterValues]:
    """(growth, series) from the last value of each series to `current`, per series: a
    series that went down grew from zero; one not seen before grew from zero. The series
    returned keep the last value of those absent now (a device unplugged may come back)."""
    growth: CounterValues = {}
    for name, value in current.items():
        before = last.get(name, 0)
        growth[name] = value - before if value >= before else value
    return growth, {**last, **current}


def sampled_before(last: Mapping[str, int], current: Mapping[str, int]) -> bool:
    """Whether `current` of the same process was sampled before `last`: its cpu time is lower
    (a process's cpu time never goes down; its devices' counters may, on a re-attach)."""
    return CPU in last and CPU in current and current[CPU] < last[CPU]


def resets(last: Mapping[str, int], current: Mapping[str, int]) -> list[str]:
    """The series that went down (each restarted from zero)."""
    return sorted(name for name, value in current.items() if value < last.get(name, 0))


def add(total: Mapping[str, int], more: Mapping[str, int]) -> CounterValues:
    out = dict(total)
    for name, value in more.items():
        out[name] = out.get(name, 0) + value
    return out


def add_all(parts: Iterable[Mapping[str, int]]) -> CounterValues:
    out: CounterValues = {}
    for part in parts:
        out = add(out, part)
    return out


def by_device(totals: Mapping[str, int], device_type: str) -> dict[str, dict[str, int]]:
    """{device: {stat: value}} for device_type "disk" or "vnic"."""
    stats = DISK_STATS if device_type == "disk" else VNIC_STATS
    out: dict[str, dict[str, int]] = {}
    for name, value in totals.items():
        prefix, _, rest = name.partition(":")
        if prefix != device_type:
            continue
        device, _, stat = rest.rpartition(":")
        out.setdefault(device, {s: 0 for s in stats})[stat] = value
    return out
