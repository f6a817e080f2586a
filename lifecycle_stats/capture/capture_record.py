"""The durable capture: what a deletion's read found, as one compact msgpack record.

Nova waits for this record alone (capture first): the read, then one durable append of what
was read. Building, validating and signing the delete.samples happen after, from this record,
on the publication thread (publication.py); after a crash the agent builds what it finds at
start. So the record holds everything the build needs and nothing it can recompute: the
announcement, the outcome of the read, the identity and reading, the usage figures and the
capture it supersedes (both as they were at the capture), the build's `now` (so a build
after a restart gives the notification a build right away would have given), and when the
QEMU process ended at the latest (the usage ledger's close, done at the build too).
"""
from __future__ import annotations

import dataclasses
import datetime
from typing import Any

import msgpack

from lifecycle_stats.records import (
    UTC, StopAnnouncement, DiskStats, DomainReading, Flavor, InstanceInfo, VnicStats,
)

VERSION = 1
TIER = "capture"  # the spool records' tier while a capture waits for its build


@dataclasses.dataclass(frozen=True)
class Capture:
    message_id: str  # the delete.samples' deterministic id
    trigger: StopAnnouncement
    outcome: str  # final, last_known or unavailable (interfaces.Outcome values)
    info: InstanceInfo | None
    reading: DomainReading | None
    figures: dict[str, Any]
    supersedes: str | None
    now: datetime.datetime  # the delete.samples' generation time
    ended: datetime.datetime | None = None  # its QEMU process ended at the latest (the ledger's)


def _ts(value: datetime.datetime | None) -> float | None:
    return None if value is None else value.timestamp()


def _dt(value: float | None) -> datetime.datetime | None:
    return None if value is None else datetime.datetime.fromtimestamp(value, UTC)


def _plain(record: Any) -> dict[str, Any]:
    return {f.name: getattr(record, f.name) for f in dataclasses.fields(record)}


def encode(capture: Capture) -> bytes:
    trigger = _plain(capture.trigger)
    trigger.update(received_at=_ts(capture.trigger.received_at),
                   announced_at=_ts(capture.trigger.announced_at),
                   identity=dict(capture.trigger.identity))
    doc = {"v": VERSION, "message_id": capture.message_id, "trigger": trigger,
           "outcome": capture.outcome, "figures": capture.figures,
           "supersedes": capture.supersedes, "now": _ts(capture.now),
           "ended": _ts(capture.ended),
           "info": None, "reading": None}
    if capture.info is not None:
        doc["info"] = {**_plain(capture.info), "flavor": _plain(capture.info.flavor)}
    if capture.reading is not None:
        reading = capture.reading
        doc["reading"] = {**_plain(reading), "read_at": _ts(reading.read_at),
                          "disks": [_plain(d) for d in reading.disks],
                          "vnics": [_plain(v) for v in reading.vnics],
                          "memory_stats": dict(reading.memory_stats), "perf": dict(reading.perf)}
    return msgpack.packb(doc, use_bin_type=True)


def decode(body: bytes) -> Capture:
    """The Capture in body; ValueError when it is not one this agent can build."""
    try:
        doc = msgpack.unpackb(body, raw=False)
        if not isinstance(doc, dict) or doc.get("v") != VERSION:
            raise ValueError(f"not a version {VERSION} capture record")
        trigger = dict(doc["trigger"])
        trigger.update(received_at=_dt(trigger["received_at"]),
                       announced_at=_dt(trigger["announced_at"]))
        return Capture(
            message_id=doc["message_id"], trigger=StopAnnouncement(**trigger),
            outcome=doc["outcome"], info=_info(doc["info"]), reading=_reading(doc["reading"]),
            figures=doc["figures"], supersedes=doc["supersedes"], now=_dt(doc["now"]),
            ended=_dt(doc.get("ended")))
    except (KeyError, TypeError, msgpack.UnpackException) as exc:
        raise ValueError(f"unreadable capture record: {type(exc).__name__}: {exc}") from exc


def _info(doc: dict | None) -> InstanceInfo | None:
    if doc is None:
        return None
    return InstanceInfo(**{**doc, "flavor": Flavor(**doc["flavor"])})


def _reading(doc: dict | None) -> DomainReading | None:
    if doc is None:
        return None
    return DomainReading(**{
        **doc, "read_at": _dt(doc["read_at"]),
        "disks": tuple(DiskStats(**d) for d in doc["disks"]),
        "vnics": tuple(VnicStats(**v) for v in doc["vnics"])})
