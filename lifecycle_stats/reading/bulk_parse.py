"""One pass over a domain's bulk stats record: its disks and vNICs with counters, and which
devices had counters and which were named without (the torn rule's input, processes.py).

The bulk poll parses every active domain's record on every poll, so each device's keys are
looked up once here rather than once per consumer (the reading's device lists, the torn
rule's two device sets). The results equal inspector.disks_from_stats / vnics_from_stats and
processes.counted_devices / uncounted_devices, which stay the reference definitions
(tests/unit/test_bulk_parse.py compares them).
"""
from __future__ import annotations

from typing import Any, Mapping, NamedTuple

from lifecycle_stats.records import DiskStats, VnicStats

Stats = Mapping[str, Any]
_VNIC_KEYS = ("rx.bytes", "rx.pkts", "rx.errs", "rx.drop",
              "tx.bytes", "tx.pkts", "tx.errs", "tx.drop")


class Devices(NamedTuple):  # a tuple: built for every domain on every poll
    disks: tuple[DiskStats, ...]
    vnics: tuple[VnicStats, ...]
    counted: frozenset[str]  # "block:vda", "net:tap1": devices with counters
    uncounted: frozenset[str]  # devices named without counters (not an empty cdrom)


def devices(stats: Stats) -> Devices:
    counted: list[str] = []
    uncounted: list[str] = []
    disks = _disks(stats, counted, uncounted)
    vnics = _vnics(stats, counted, uncounted)
    return Devices(disks, vnics, frozenset(counted), frozenset(uncounted))


def _disks(stats: Stats, counted: list[str], uncounted: list[str]) -> tuple[DiskStats, ...]:
    get = stats.get
    disks: dict[str, DiskStats] = {}
    for i in range(get("block.count", 0)):
        prefix = f"block.{i}."
        name = get(prefix + "name")
        read_requests = get(prefix + "rd.reqs")
        if read_requests is None and prefix + "rd.reqs" not in stats:
            if prefix + "path" in stats:
                uncounted.append(f"block:{name}")
            continue
        counted.append(f"block:{name}")
        if name is None or name in disks:
            continue  # a backing-chain entry repeats its disk's name
        capacity, physical = get(prefix + "capacity"), get(prefix + "physical")
        if capacity is not None and physical is not None:
            capacity = max(capacity, physical)  # as inspector.disk_sizes, as Ceilometer
        disks[name] = DiskStats(
            name, read_requests, stats[prefix + "rd.bytes"], stats[prefix + "wr.reqs"],
            stats[prefix + "wr.bytes"], get(prefix + "rd.times"), get(prefix + "wr.times"),
            capacity, get(prefix + "allocation"), physical)
    return tuple(disks.values())


def _vnics(stats: Stats, counted: list[str], uncounted: list[str]) -> tuple[VnicStats, ...]:
    get = stats.get
    vnics: dict[str, VnicStats] = {}
    for i in range(get("net.count", 0)):
        prefix = f"net.{i}."
        name = get(prefix + "name")
        if prefix + "rx.bytes" not in stats:
            if prefix + "name" in stats:
                uncounted.append(f"net:{name}")
            continue
        counted.append(f"net:{name}")
        if name is None or name in vnics:
            continue
        vnics[name] = VnicStats(
            name, stats[prefix + "rx.bytes"], stats[prefix + "rx.pkts"],
            stats[prefix + "rx.errs"], stats[prefix + "rx.drop"], stats[prefix + "tx.bytes"],
            stats[prefix + "tx.pkts"], stats[prefix + "tx.errs"], stats[prefix + "tx.drop"])
    return tuple(vnics.values())
