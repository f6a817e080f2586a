"""One pass over a domain's bulk stats record: its reading, its disks and vNICs with counters,
and which devices had counters and which were named without (the torn rule's input,
processes.py).

The bulk poll parses every active domain's record on every poll, so this is written for CPU:
each key is looked up once, the key strings are built once per device index (not per poll),
and the frozen records are given their whole __dict__, not filled by their __init__'s
object.__setattr__ per field (a DomainReading: 1.4 against 3.9 us); so every field is written
out here, nothing defaulted. The poll keeps what it parsed per domain: device_reuse.py. The
results equal the plain reference definitions (tests/support/reference_parse.py for disks and
vNICs; inspector.memory_from_stats / perf_from_stats / vcpu_time_from_stats;
processes.counted_devices / uncounted_devices) and the single read's Inspector._reading:
tests/unit/test_bulk_parse.py compares them all.
"""
from __future__ import annotations

import datetime
from typing import Any, Mapping, NamedTuple

from lifecycle_stats.records import DiskStats, DomainReading, VnicStats

Stats = Mapping[str, Any]
_VNIC_KEYS = ("rx.bytes", "rx.pkts", "rx.errs", "rx.drop",
              "tx.bytes", "tx.pkts", "tx.errs", "tx.drop")
_BLOCK_KEYS = ("name", "path", "rd.reqs", "rd.bytes", "wr.reqs", "wr.bytes", "rd.times",
               "wr.times", "capacity", "allocation", "physical")
_new = object.__new__
_set_dict = object.__setattr__  # a frozen record's __dict__ given whole, no update of a copy
_ABSENT = object()  # a key missing, told from a key present with None: one lookup for both
_NONE: frozenset[str] = frozenset()
# libvirt's balloon / perf keys and the names the reading keeps (inspector's tables)
_MEMORY = (("balloon.current", "actual"), ("balloon.available", "available"),
           ("balloon.usable", "usable"), ("balloon.unused", "unused"), ("balloon.rss", "rss"),
           ("balloon.swap_in", "swap_in"), ("balloon.swap_out", "swap_out"))
_PERF = tuple((f"perf.{name}", name)
              for name in ("cpu_cycles", "instructions", "cache_references", "cache_misses"))


def _block_keys(i: int) -> tuple[str, ...]:
    return tuple(f"block.{i}.{key}" for key in _BLOCK_KEYS)


def _net_keys(i: int) -> tuple[str, ...]:
    return (f"net.{i}.name", *(f"net.{i}.{key}" for key in _VNIC_KEYS))


def _vcpu_keys(n: int) -> tuple[str, str]:
    return f"vcpu.{n}.time", f"vcpu.{n}.wait"


# Built at import (read-only afterwards, so threads share them); larger indexes are built
# when met.
_BLOCKS = tuple(_block_keys(i) for i in range(64))
_NETS = tuple(_net_keys(i) for i in range(64))
_VCPUS = tuple(_vcpu_keys(n) for n in range(512))


class Devices(NamedTuple):  # a tuple: built for every domain on every poll
    disks: tuple[DiskStats, ...]
    vnics: tuple[VnicStats, ...]
    counted: frozenset[str]  # "block:vda", "net:tap1": devices with counters
    uncounted: frozenset[str]  # devices named without counters (not an empty cdrom)


def devices(stats: Stats) -> Devices:
    return Devices(*device_tuple(stats))


def device_tuple(stats: Stats) -> tuple[Any, Any, Any, Any]:
    """devices() as a plain tuple (a NamedTuple's __new__ is Python code): the poll's."""
    counted: list[str] = []
    uncounted: list[str] = []
    disks = _disks(stats, counted, uncounted)
    vnics = _vnics(stats, counted, uncounted)
    return disks, vnics, frozenset(counted), frozenset(uncounted) if uncounted else _NONE


def active_reading(stats: Stats, disks: tuple[DiskStats, ...], vnics: tuple[VnicStats, ...],
                   instance_id: str, domain_name: str, state: str, state_code: int | None,
                   cpu_time_ns: int | None, process_id: int, read_at: datetime.datetime,
                   started_at: float | None) -> DomainReading:
    """An active domain's reading from its bulk record and its devices (devices())."""
    get = stats.get
    vcpu_total, vcpus_counted = 0, 0  # inspector.vcpu_time_from_stats: Ceilometer's `cpu`
    for n in range(get("vcpu.maximum", 0)):
        time_key, wait_key = _VCPUS[n] if n < len(_VCPUS) else _vcpu_keys(n)
        time_ns, wait_ns = get(time_key), get(wait_key)
        if time_ns is not None and wait_ns is not None:
            vcpu_total, vcpus_counted = vcpu_total + time_ns + wait_ns, vcpus_counted + 1
    vcpus = get("vcpu.current")
    memory, perf = {}, {}  # loops, not comprehensions: each of those is a call (Python 3.11)
    for key, name in _MEMORY:
        if (value := get(key, _ABSENT)) is not _ABSENT:
            memory[name] = value
    for key, name in _PERF:
        if (value := get(key, _ABSENT)) is not _ABSENT:
            perf[name] = value
    reading = _new(DomainReading)
    _set_dict(reading, "__dict__", {  # every field, as __init__ would
        "instance_id": instance_id, "domain_name": domain_name, "state": state,
        "active": True, "cpu_time_ns": cpu_time_ns, "vcpus": vcpus,
        "memory_kib": get("balloon.current"), "memory_max_kib": get("balloon.maximum"),
        "disks": disks, "vnics": vnics, "read_at": read_at, "path": "bulk",
        "state_code": state_code,
        "memory_stats": memory, "perf": perf, "process_id": process_id,
        "vcpu_time_ns": vcpu_total if vcpus_counted and vcpus_counted == vcpus else None,
        "process_started_at": started_at})
    return reading


def _disks(stats: Stats, counted: list[str], uncounted: list[str]) -> tuple[DiskStats, ...]:
    get = stats.get
    disks: dict[str, DiskStats] = {}
    for i in range(get("block.count", 0)):
        (name_key, path_key, rd_reqs, rd_bytes, wr_reqs, wr_bytes, rd_times, wr_times,
         capacity_key, allocation_key, physical_key) = (
            _BLOCKS[i] if i < len(_BLOCKS) else _block_keys(i))
        name = get(name_key)
        read_requests = get(rd_reqs)
        if read_requests is None and rd_reqs not in stats:
            if path_key in stats:
                uncounted.append(f"block:{name}")
            continue
        counted.append(f"block:{name}")
        if name is None or name in disks:
            continue  # a backing-chain entry repeats its disk's name
        disks[name] = disk_stats(name, read_requests, stats[rd_bytes], stats[wr_reqs],
                                 stats[wr_bytes], get(rd_times), get(wr_times), get(capacity_key),
                                 get(allocation_key), get(physical_key))
    return tuple(disks.values())


def _vnics(stats: Stats, counted: list[str], uncounted: list[str]) -> tuple[VnicStats, ...]:
    get = stats.get
    vnics: dict[str, VnicStats] = {}
    for i in range(get("net.count", 0)):
        name_key, rx_bytes_key, rx_pkts, rx_errs, rx_drop, tx_bytes, tx_pkts, tx_errs, tx_drop = (
            _NETS[i] if i < len(_NETS) else _net_keys(i))
        name = get(name_key)
        rx_bytes = get(rx_bytes_key)
        if rx_bytes is None and rx_bytes_key not in stats:
            if name_key in stats:
                uncounted.append(f"net:{name}")
            continue
        counted.append(f"net:{name}")
        if name is None or name in vnics:
            continue
        vnics[name] = vnic_stats(name, rx_bytes, stats[rx_pkts], stats[rx_errs], stats[rx_drop],
                                 stats[tx_bytes], stats[tx_pkts], stats[tx_errs], stats[tx_drop])
    return tuple(vnics.values())


def disk_stats(name: str, read_requests: int, read_bytes: int, write_requests: int,
               write_bytes: int, read_time_ns: int | None, write_time_ns: int | None,
               capacity: int | None, allocation: int | None,
               physical: int | None) -> DiskStats:
    """DiskStats(...) without its __init__, capacity as Ceilometer reports it:
    max(capacity, physical) (block_sizes.disk_sizes)."""
    if capacity is not None and physical is not None and physical > capacity:
        capacity = physical
    disk = _new(DiskStats)
    _set_dict(disk, "__dict__", {  # every field, as __init__ would
        "device": name, "read_requests": read_requests, "read_bytes": read_bytes,
        "write_requests": write_requests, "write_bytes": write_bytes,
        "read_time_ns": read_time_ns, "write_time_ns": write_time_ns,
        "capacity": capacity, "allocation": allocation, "physical": physical})
    return disk


def vnic_stats(name: str, rx_bytes: int, rx_packets: int, rx_errors: int, rx_drops: int,
               tx_bytes: int, tx_packets: int, tx_errors: int, tx_drops: int) -> VnicStats:
    """VnicStats(...) without its __init__."""
    vnic = _new(VnicStats)
    _set_dict(vnic, "__dict__", {  # every field, as __init__ would
        "device": name, "rx_bytes": rx_bytes, "rx_packets": rx_packets, "rx_errors": rx_errors,
        "rx_drops": rx_drops, "tx_bytes": tx_bytes, "tx_packets": tx_packets,
        "tx_errors": tx_errors, "tx_drops": tx_drops})
    return vnic
