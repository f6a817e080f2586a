"""msgpack forms of the records the usage ledger keeps (readings and instance identity)."""
from __future__ import annotations

import dataclasses
import datetime
from typing import Any

import msgpack

from lifecycle_stats.records import UTC, DiskStats, DomainReading, Flavor, InstanceInfo, VnicStats


def pack(value: Any) -> bytes:
    return msgpack.packb(value, use_bin_type=True)


def unpack(body: bytes) -> Any:
    return msgpack.unpackb(body, raw=False)


def encode_reading(reading: DomainReading) -> bytes:
    # What dataclasses.asdict gives, without its recursive deepcopy: this runs for every
    # domain on every bulk poll (tests/unit/test_bulk_parse.py compares the two).
    doc = dict(vars(reading))
    doc["disks"] = [dict(vars(disk)) for disk in reading.disks]
    doc["vnics"] = [dict(vars(vnic)) for vnic in reading.vnics]
    doc["memory_stats"] = dict(reading.memory_stats)
    doc["perf"] = dict(reading.perf)
    doc["read_at"] = reading.read_at.timestamp()
    return pack(doc)


def decode_reading(body: bytes) -> DomainReading:

    doc = unpack(body)
    doc["read_at"] = datetime.datetime.fromtimestamp(doc["read_at"], UTC)
    doc["disks"] = tuple(DiskStats(**d) for d in doc["disks"])
    doc["vnics"] = tuple(VnicStats(**v) for v in doc["vnics"])
    known = {f.name for f in dataclasses.fields(DomainReading)}
    return DomainReading(**{k: v for k, v in doc.items() if k in known})


def encode_info(info: InstanceInfo) -> bytes:
    doc = dict(vars(info))  # as dataclasses.asdict (plain fields), without its deepcopy
    doc["flavor"] = dict(vars(info.flavor))
    return pack(doc)


def decode_info(body: bytes) -> InstanceInfo:
    doc = unpack(body)
    doc["flavor"] = Flavor(**doc["flavor"])
    return InstanceInfo(**doc)
