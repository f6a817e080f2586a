"""The recording file: what a host said, in order, as length-delimited msgpack.

Layout: the 8 bytes MAGIC, then frames. A frame is a 4-byte big-endian length followed by
that many bytes of one msgpack map. The first frame is the header (format_version, host,
libvirt/QEMU versions, started_at); every later frame is one entry with `t` (seconds since
started_at) and `kind`. Each frame is written whole and flushed, so a recorder stopped at
any moment leaves a file whose every frame is complete; a frame cut short (a killed
process, a truncated copy) is detected by its length and reported with its offset.
"""
from __future__ import annotations

import dataclasses
import datetime
import struct
import threading
import time
from typing import Any, BinaryIO, Callable, Iterator

import msgpack

from lifecycle_stats.records import (
    DiskStats, DomainReading, Flavor, InstanceInfo, VnicStats, isotime,
)

MAGIC = b"LSRECORD"
FORMAT_VERSION = 1
MAX_FRAME = 16 * 1024 * 1024  # a poll of a few hundred domains is ~1 MB
_LENGTH = struct.Struct(">I")

NOVA = "nova"  # a notification heard on nova's exchange, as received
LIBVIRT = "libvirt"  # a domain lifecycle or metadata event
READING = "reading"  # one domain's counters (or that it was gone), read because of `cause`
INSTANCE = "instance"  # one domain's nova metadata (or not nova's, or gone), read for `cause`
POLL = "poll"  # one bulk read of every active domain
AGENT = "agent"  # the agent stopped or started (a restart in the middle of a case)
KINDS = frozenset({NOVA, LIBVIRT, READING, INSTANCE, POLL, AGENT})


class RecordingError(Exception):
    """The recording cannot be read; str() is one line naming the file and offset."""

    def __init__(self, path: str, offset: int, reason: str):
        super().__init__(f"{path}: offset {offset}: {reason}")
        self.path = path
        self.offset = offset
        self.reason = reason


@dataclasses.dataclass(frozen=True)
class Entry:
    index: int  # position among the entries (the header is not counted)
    offset: int  # byte offset of the entry's frame in the file
    t: float
    kind: str
    data: dict[str, Any]


@dataclasses.dataclass(frozen=True)
class Recording:
    path: str
    header: dict[str, Any]
    entries: list[Entry]

    @property
    def started_at(self) -> datetime.datetime:
        return parse_time(self.header["started_at"])

    @property
    def host(self) -> str:
        return self.header["host"]


# -- records <-> plain data ---------------------------------------------------------------

def parse_time(text: str) -> datetime.datetime:
    moment = datetime.datetime.fromisoformat(text)
    if moment.tzinfo is None:
        raise ValueError(f"time without a timezone: {text!r}")
    return moment


def reading_to_data(reading: DomainReading) -> dict[str, Any]:
    data = dataclasses.asdict(reading)
    data["read_at"] = isotime(reading.read_at)
    return data


def reading_from_data(data: dict[str, Any]) -> DomainReading:
    fields = dict(data)
    fields["disks"] = tuple(DiskStats(**d) for d in fields["disks"])
    fields["vnics"] = tuple(VnicStats(**v) for v in fields["vnics"])
    fields["read_at"] = parse_time(fields["read_at"])
    return DomainReading(**fields)


def info_to_data(info: InstanceInfo) -> dict[str, Any]:
    return dataclasses.asdict(info)


def info_from_data(data: dict[str, Any]) -> InstanceInfo:
    fields = dict(data)
    fields["flavor"] = Flavor(**fields["flavor"])
    return InstanceInfo(**fields)


# -- writing ------------------------------------------------------------------------------

def frame(obj: dict[str, Any]) -> bytes:
    body = msgpack.packb(obj, use_bin_type=True)
    if len(body) > MAX_FRAME:
        raise ValueError(f"entry of {len(body)} bytes exceeds the {MAX_FRAME}-byte frame bound")
    return _LENGTH.pack(len(body)) + body


class RecordingWriter:
    """Appends entries to a new recording; safe to call from several threads."""

    def __init__(self, stream: BinaryIO, header: dict[str, Any],
                 monotonic: Callable[[], float] = time.monotonic) -> None:
        self._stream = stream
        self._monotonic = monotonic
        self._lock = threading.Lock()
        self._count = 0
        self._start = monotonic()
        stream.write(MAGIC + frame({**header, "format_version": FORMAT_VERSION}))
        stream.flush()

    def write(self, kind: str, **fields: Any) -> int:
        """Append one entry stamped now; returns its index (what `cause` refers to)."""
        if kind not in KINDS:
            raise ValueError(f"unknown entry kind {kind!r}")
        with self._lock:
            t = round(self._monotonic() - self._start, 6)
            self._stream.write(frame({"t": t, "kind": kind, **fields}))
            self._stream.flush()
            index, self._count = self._count, self._count + 1
        return index

    @property
    def count(self) -> int:
        return self._count

    def close(self) -> None:
        with self._lock:
            self._stream.close()


def open_writer(path: str, header: dict[str, Any]) -> RecordingWriter:
    return RecordingWriter(open(path, "wb"), header)


# -- reading ------------------------------------------------------------------------------

def read(path: str) -> Recording:
    """The whole recording, checked; raises RecordingError naming the first bad offset."""
    with open(path, "rb") as stream:
        data = stream.read()
    frames = _frames(path, data)
    try:
        offset, header = next(frames)
    except StopIteration:
        raise RecordingError(path, len(MAGIC), "no header: the file ends after the magic")
    _check_header(path, offset, header)
    entries = [_entry(path, index, offset, obj) for index, (offset, obj) in enumerate(frames)]
    return Recording(path=path, header=header, entries=entries)


def _frames(path: str, data: bytes) -> Iterator[tuple[int, dict[str, Any]]]:
    if data[:len(MAGIC)] != MAGIC:
        raise RecordingError(path, 0, "not a lifecycle-stats recording (bad magic)")
    offset = len(MAGIC)
    while offset < len(data):
        if len(data) - offset < _LENGTH.size:
            raise RecordingError(path, offset, "truncated: frame length cut short")
        (size,) = _LENGTH.unpack_from(data, offset)
        if size > MAX_FRAME:
            raise RecordingError(path, offset, f"corrupt: frame length {size} exceeds "
                                               f"{MAX_FRAME}")
        body = data[offset + _LENGTH.size: offset + _LENGTH.size + size]
        if len(body) < size:
            raise RecordingError(path, offset, f"truncated: frame of {size} bytes has only "
                                               f"{len(body)}")
        yield offset, _unpack(path, offset, body)
        offset += _LENGTH.size + size


def _unpack(path: str, offset: int, body: bytes) -> dict[str, Any]:
    try:
        obj = msgpack.unpackb(body, raw=False, strict_map_key=True)
    except Exception as exc:  # msgpack raises several unrelated types for bad bytes
        raise RecordingError(path, offset, f"corrupt: undecodable frame "
                                           f"({type(exc).__name__}: {exc})") from None
    if not isinstance(obj, dict):
        raise RecordingError(path, offset, f"corrupt: frame is a {type(obj).__name__}, "
                                           "not a map")
    return obj


def _check_header(path: str, offset: int, header: dict[str, Any]) -> None:
    version = header.get("format_version")
    if not isinstance(version, int) or isinstance(version, bool):
        raise RecordingError(path, offset, "corrupt: header has no format_version")
    if version > FORMAT_VERSION:
        raise RecordingError(path, offset, f"format version {version} is newer than this "
                                           f"tool reads ({FORMAT_VERSION}); upgrade it")
    for key in ("host", "started_at"):
        if not isinstance(header.get(key), str):
            raise RecordingError(path, offset, f"corrupt: header has no {key}")
    try:
        parse_time(header["started_at"])
    except ValueError as exc:
        raise RecordingError(path, offset, f"corrupt: header started_at: {exc}") from None


def _entry(path: str, index: int, offset: int, obj: dict[str, Any]) -> Entry:
    t, kind = obj.get("t"), obj.get("kind")
    if not isinstance(t, (int, float)) or isinstance(t, bool) or not t >= 0:
        raise RecordingError(path, offset, f"corrupt: entry {index} has no valid time")
    if not isinstance(kind, str) or kind not in KINDS:
        raise RecordingError(path, offset, f"corrupt: entry {index} has unknown kind "
                                           f"{str(kind)[:40]!r}")
    return Entry(index=index, offset=offset, t=float(t), kind=kind, data=obj)
