"""msgpack forms of what the usage ledger keeps (readings, identity, notifications).

Every document carries its form's version ("v"); decoding ignores keys it does not know (a
newer agent may add some) and fills defaults for keys an older agent did not write."""
from __future__ import annotations

import dataclasses
import datetime
import functools
from typing import Any

import msgpack

from lifecycle_stats.records import (
    UTC, DiskStats, DomainReading, Flavor, InstanceInfo, Notification, VnicStats,
)

VERSION = 1


def pack(value: Any) -> bytes:
    return msgpack.packb(value, use_bin_type=True)


def unpack(body: bytes) -> Any:
    return msgpack.unpackb(body, raw=False)


def known(cls, doc: dict) -> dict:
    """Only the fields `cls` has: unknown keys never break decoding."""
    names = _field_names(cls)
    return {k: v for k, v in doc.items() if k in names}


@functools.cache  # dataclasses.fields() per decode was most of the bulk poll's ledger work
def _field_names(cls) -> frozenset[str]:
    return frozenset(f.name for f in dataclasses.fields(cls))


def encode_reading(reading: DomainReading) -> bytes:
    # What dataclasses.asdict gives, without its recursive deepcopy: this runs for every
    # domain on every bulk poll (tests/unit/test_bulk_parse.py compares the two).
    doc = dict(vars(reading))
    doc["disks"] = [dict(vars(disk)) for disk in reading.disks]
    doc["vnics"] = [dict(vars(vnic)) for vnic in reading.vnics]
    doc["memory_stats"] = dict(reading.memory_stats)
    doc["perf"] = dict(reading.perf)
    doc["read_at"] = reading.read_at.timestamp()
    doc["v"] = VERSION
    return pack(doc)


def decode_reading(body: bytes) -> DomainReading:
    doc = unpack(body)
    doc["read_at"] = datetime.datetime.fromtimestamp(doc["read_at"], UTC)
    doc["disks"] = tuple(DiskStats(**known(DiskStats, d)) for d in doc.get("disks", ()))
    doc["vnics"] = tuple(VnicStats(**known(VnicStats, v)) for v in doc.get("vnics", ()))
    return DomainReading(**known(DomainReading, doc))


def encode_info(info: InstanceInfo) -> bytes:
    doc = dict(vars(info))  # as dataclasses.asdict (plain fields), without its deepcopy
    doc["flavor"] = dict(vars(info.flavor))
    doc["v"] = VERSION
    return pack(doc)


def decode_info(body: bytes) -> InstanceInfo:
    doc = unpack(body)
    doc["flavor"] = Flavor(**known(Flavor, doc["flavor"]))
    return InstanceInfo(**known(InstanceInfo, doc))


def encode_notification(notification: Notification) -> bytes:
    return pack({**dataclasses.asdict(notification), "v": VERSION})


def decode_notification(body: bytes) -> Notification:
    return Notification(**known(Notification, unpack(body)))
