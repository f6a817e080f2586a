"""Counter arithmetic of the usage ledger (pure: no storage, no clock).

A reading is flattened into named cumulative counters: `cpu_time_ns`, `disk:<dev>:<stat>`,
`vnic:<tap>:<stat>`. A QEMU process's counters only grow; they restart at zero with each new
process. So the usage between two readings of one process is the growth of each counter, and
the usage of a new process up to its first reading is that reading itself (it started at
zero). A decrease is never negative usage: it means a new process (`is_reset`).
"""
from __future__ import annotations

from typing import Iterable, Mapping

from lifecycle_stats.records import DomainReading

DISK_STATS = ("read_bytes", "read_requests", "write_bytes", "write_requests")
VNIC_STATS = ("rx_bytes", "rx_packets", "tx_bytes", "tx_packets")
CPU = "cpu_time_ns"

Counters = dict[str, int]


def flatten(reading: DomainReading) -> Counters:
    """The cumulative counters of an active reading; {} for an inactive one (no counters)."""
    if not reading.active:
        return {}
    out: Counters = {}
    if reading.cpu_time_ns is not None:
        out[CPU] = reading.cpu_time_ns
    for disk in reading.disks:
        for stat in DISK_STATS:
            out[f"disk:{disk.device}:{stat}"] = getattr(disk, stat)
    for vnic in reading.vnics:
        for stat in VNIC_STATS:
            out[f"vnic:{vnic.device}:{stat}"] = getattr(vnic, stat)
    return out


def is_reset(previous: Mapping[str, int], current: Mapping[str, int]) -> bool:
    """Any counter went down: the counters belong to a new QEMU process."""
    return any(current[name] < value for name, value in previous.items() if name in current)


def growth(previous: Mapping[str, int], current: Mapping[str, int]) -> Counters:
    """Per-counter growth from previous to current of ONE process. A counter absent before
    (a device hot-plugged since) grew from zero. Never negative."""
    return {name: max(0, value - previous.get(name, 0)) for name, value in current.items()}


def add(total: Mapping[str, int], more: Mapping[str, int]) -> Counters:
    out = dict(total)
    for name, value in more.items():
        out[name] = out.get(name, 0) + value
    return out


def add_all(parts: Iterable[Mapping[str, int]]) -> Counters:
    out: Counters = {}
    for part in parts:
        out = add(out, part)
    return out


def by_device(totals: Mapping[str, int], kind: str) -> dict[str, dict[str, int]]:
    """{device: {stat: value}} for kind "disk" or "vnic"."""
    stats = DISK_STATS if kind == "disk" else VNIC_STATS
    out: dict[str, dict[str, int]] = {}
    for name, value in totals.items():
        prefix, _, rest = name.partition(":")
        if prefix != kind:
            continue
        device, _, stat = rest.rpartition(":")
        out.setdefault(device, {s: 0 for s in stats})[stat] = value
    return out
