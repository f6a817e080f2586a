"""The bulk poll's device parse, kept per domain from one poll to the next.

An idle disk or vNIC reports the same counters poll after poll; a paused guest all of them.
So the poll fetches a record's device values in one C call (operator.itemgetter over the
layout's keys, when the record has them all, as QEMU's do) and, when they equal the domain's
values of the last poll, takes that poll's parse again: the same frozen DiskStats / VnicStats
and device sets. Otherwise it parses the fetched values (no lookup per key); a record missing
any key takes bulk_parse.device_tuple(). The answer is always bulk_parse.device_tuple()'s
(tests/unit/test_bulk_parse.py).
"""
from __future__ import annotations

import operator
from typing import Any, Callable, Mapping

from lifecycle_stats.reading import bulk_parse
from lifecycle_stats.records import DiskStats, VnicStats

Stats = Mapping[str, Any]
Parsed = tuple[Any, Any, Any, Any]  # bulk_parse.device_tuple()'s

# A device layout's keys in one C call (operator.itemgetter), disks then vNICs, each device's
# values in its record's field order; built once per layout (block.count, net.count) met.
_DISK_VALUES = ("name", "rd.reqs", "rd.bytes", "wr.reqs", "wr.bytes", "rd.times", "wr.times",
                "capacity", "allocation", "physical")  # bulk_parse.disk_stats()'s arguments
_VNIC_VALUES = ("name", *bulk_parse._VNIC_KEYS)  # bulk_parse.vnic_stats()'s arguments
_LAYOUTS: dict[tuple[int, int], Callable[[Stats], tuple[Any, ...]]] = {}
_NONE: frozenset[str] = frozenset()  # no device named without counters
_MOST_DEVICES = 64  # layouts cached up to this many disks and vNICs (as _BLOCKS, _NETS)


class DeviceReuse:
    """One poller's memory of each domain's device values and their parse. A domain not
    polled is forgotten at the next end_poll(); only the poll's thread uses it."""

    def __init__(self) -> None:
        self._last: dict[str, tuple[tuple[Any, ...], Parsed]] = {}
        self._now: dict[str, tuple[tuple[Any, ...], Parsed]] = {}

    def begin_poll(self) -> None:
        self._now = {}

    def end_poll(self) -> None:
        self._last, self._now = self._now, {}

    def device_tuple(self, instance_id: str, stats: Stats) -> Parsed:
        get = stats.get
        blocks, nets = get("block.count", 0), get("net.count", 0)
        getter = _LAYOUTS.get((blocks, nets)) or _layout(blocks, nets)
        if getter is None:
            return bulk_parse.device_tuple(stats)
        try:
            values = getter(stats)
        except KeyError:  # a device without counters (torn, vhost-user), a missing size
            return bulk_parse.device_tuple(stats)
        last = self._last.get(instance_id)
        if last is not None and last[0] == values:
            parsed = last[1]
        else:
            parsed = _from_values(values, blocks)
        self._now[instance_id] = (values, parsed)
        return parsed


def _layout(blocks: int, nets: int) -> Callable[[Stats], tuple[Any, ...]] | None:
    """The getter of a layout's device values; None for no devices or too many."""
    if not (0 <= blocks <= _MOST_DEVICES and 0 <= nets <= _MOST_DEVICES) or not blocks + nets:
        return None  # (no devices: itemgetter() takes no empty key list)
    keys = [*(f"block.{i}.{key}" for i in range(blocks) for key in _DISK_VALUES),
            *(f"net.{i}.{key}" for i in range(nets) for key in _VNIC_VALUES)]
    getter = _LAYOUTS[(blocks, nets)] = operator.itemgetter(*keys)
    return getter


def _from_values(values: tuple[Any, ...], blocks: int) -> Parsed:
    """device_tuple() of a record whose devices all have every key: values as _layout's."""
    counted: list[str] = []
    disks: dict[str, DiskStats] = {}
    vnics: dict[str, VnicStats] = {}
    disk_end = len(_DISK_VALUES) * blocks
    for start in range(0, disk_end, len(_DISK_VALUES)):
        name = values[start]
        counted.append(f"block:{name}")
        if name is None or name in disks:
            continue  # a backing-chain entry repeats its disk's name
        disks[name] = bulk_parse.disk_stats(*values[start:start + len(_DISK_VALUES)])
    for start in range(disk_end, len(values), len(_VNIC_VALUES)):
        name = values[start]
        counted.append(f"net:{name}")
        if name is None or name in vnics:
            continue
        vnics[name] = bulk_parse.vnic_stats(*values[start:start + len(_VNIC_VALUES)])
    return tuple(disks.values()), tuple(vnics.values()), frozenset(counted), _NONE
