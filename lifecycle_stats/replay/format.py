"""The recording file: what a host said, in order, as length-delimited msgpack.

Layout: the 8 bytes MAGIC, then frames. A frame is a 4-byte big-endian length followed by
that many bytes of one msgpack map. The first frame is the header (format_version, host,
libvirt/QEMU versions, started_at); every later frame is one entry with `t` (seconds since
started_at) and `source` (where it came from: nova, libvirt, a read, the agent; format 1
named it `kind`, and such recordings are read as they are). Each frame is written whole and
flushed, so a recorder stopped at any moment leaves a file whose every frame is complete; a
last frame cut short (a killed process, a truncated copy, a full disk) is detected by its
length: the frames before it are salvaged and Recording.cut says where and why. A file that
cannot be opened, a bad frame before the end, and a value of the wrong type in a record are
RecordingErrors.
"""
from __future__ import annotations

import dataclasses
import datetime
import functools
import struct
import threading
import time
import types
import typing
from typing import Any, BinaryIO, Callable, Iterator, Mapping

import msgpack

from lifecycle_stats.records import (
    DiskStats, DomainReading, Flavor, InstanceInfo, VnicStats, isotime,
)

MAGIC = b"LSRECORD"
FORMAT_VERSION = 2  # 1: an entry's source was named `kind`
MAX_FRAME = 16 * 1024 * 1024  # a poll of a few hundred domains is ~1 MB
_LENGTH = struct.Struct(">I")

NOVA = "nova"  # a notification heard on nova's exchange, as received
LIBVIRT = "libvirt"  # a domain lifecycle or metadata event
READING = "reading"  # one domain's counters (or that it was gone), read because of `cause`
INSTANCE = "instance"  # one domain's nova metadata (or not nova's, or gone), read for `cause`
POLL = "poll"  # one bulk read of every active domain
AGENT = "agent"  # the agent stopped or started (a restart in the middle of a case)
SOURCES = frozenset({NOVA, LIBVIRT, READING, INSTANCE, POLL, AGENT})


class RecordingError(Exception):
    """The recording cannot be read; str() is one line naming the file and offset."""

    def __init__(self, path: str, offset: int | None, reason: str):
        super().__init__(f"{path}: {reason}" if offset is None
                         else f"{path}: offset {offset}: {reason}")
        self.path = path
        self.offset = offset
        self.reason = reason


@dataclasses.dataclass(frozen=True)
class Entry:
    index: int  # position among the entries (the header is not counted)
    offset: int  # byte offset of the entry's frame in the file
    t: float
    source: str  # NOVA, LIBVIRT, READING, INSTANCE, POLL or AGENT
    data: dict[str, Any]


@dataclasses.dataclass(frozen=True)
class Recording:
    path: str
    header: dict[str, Any]
    entries: list[Entry]
    cut: RecordingError | None = None  # a cut last frame: the entries are those before it

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
    fields["disks"] = tuple(typed(DiskStats, d) for d in _listed(fields, "disks"))
    fields["vnics"] = tuple(typed(VnicStats, v) for v in _listed(fields, "vnics"))
    if not isinstance(fields.get("read_at"), str):
        raise TypeError(f"read_at must be a string, got {fields.get('read_at')!r:.40}")
    fields["read_at"] = parse_time(fields["read_at"])
    return typed(DomainReading, fields)


def info_to_data(info: InstanceInfo) -> dict[str, Any]:
    return dataclasses.asdict(info)


def info_from_data(data: dict[str, Any]) -> InstanceInfo:
    fields = dict(data)
    fields["flavor"] = typed(Flavor, fields["flavor"])
    return typed(InstanceInfo, fields)


def _listed(fields: dict[str, Any], key: str) -> list:
    if not isinstance(fields[key], (list, tuple)):
        raise TypeError(f"{key} must be a list, got {type(fields[key]).__name__}")
    return fields[key]


def typed(cls: type, fields: Any):
    """cls(**fields) when every value has its field's declared type (a counter that is a
    string, a flag that is a number, would otherwise reach the agent's arithmetic)."""
    if not isinstance(fields, Mapping):
        raise TypeError(f"{cls.__name__} must be a map, got {type(fields).__name__}")
    hints = _hints(cls)
    for name, value in fields.items():
        if name in hints and not _has_type(value, hints[name]):
            raise TypeError(f"{cls.__name__}.{name} has the wrong type: {value!r:.40}")
    return cls(**fields)


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _has_type(value: Any, hint: Any) -> bool:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return any(_has_type(value, arg) for arg in args)
    if hint is type(None):
        return value is None
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is str:
        return isinstance(value, str)
    if origin is not None and issubclass(origin, Mapping) and len(args) == 2:
        return isinstance(value, Mapping) and all(
            _has_type(k, args[0]) and _has_type(v, args[1]) for k, v in value.items())
    return True  # converted before (tuples of records, times) or not a plain value


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

    def write(self, source: str, **fields: Any) -> int:
        """Append one entry stamped now; returns its index (what `cause` refers to)."""
        if source not in SOURCES:
            raise ValueError(f"unknown entry source {source!r}")
        with self._lock:
            t = round(self._monotonic() - self._start, 6)
            self._stream.write(frame({"t": t, "source": source, **fields}))
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
    """The whole recording, checked; raises RecordingError naming the first bad offset.
    A last frame cut short is no error: the entries before it are kept (Recording.cut)."""
    try:
        with open(path, "rb") as stream:
            data = stream.read()
    except OSError as exc:
        raise RecordingError(path, None, f"cannot read: {exc.strerror or exc}") from None
    frames, cut = _frames(path, data), None
    try:
        offset, header = next(frames)
    except StopIteration:
        raise RecordingError(path, len(MAGIC), "no header: the file ends after the magic")
    except _Cut as exc:
        raise exc.error from None  # nothing before the header to salvage
    _check_header(path, offset, header)
    source_key = "kind" if header["format_version"] < 2 else "source"
    entries = []
    try:
        for offset, obj in frames:
            entries.append(_entry(path, len(entries), offset, obj, source_key))
    except _Cut as exc:
        cut = exc.error
    return Recording(path=path, header=header, entries=entries, cut=cut)


class _Cut(Exception):
    """The file ends inside a frame."""

    def __init__(self, error: RecordingError):
        super().__init__(str(error))
        self.error = error


def _frames(path: str, data: bytes) -> Iterator[tuple[int, dict[str, Any]]]:
    if data[:len(MAGIC)] != MAGIC:
        raise RecordingError(path, 0, "not a lifecycle-stats recording (bad magic)")
    offset = len(MAGIC)
    while offset < len(data):
        if len(data) - offset < _LENGTH.size:
            raise _Cut(RecordingError(path, offset, "truncated: frame length cut short"))
        (size,) = _LENGTH.unpack_from(data, offset)
        if size > MAX_FRAME:
            raise RecordingError(path, offset, f"corrupt: frame length {size} exceeds "
                                               f"{MAX_FRAME}")
        body = data[offset + _LENGTH.size: offset + _LENGTH.size + size]
        if len(body) < size:
            raise _Cut(RecordingError(path, offset, f"truncated: frame of {size} bytes has "
                                                    f"only {len(body)}"))
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


def _entry(path: str, index: int, offset: int, obj: dict[str, Any], source_key: str) -> Entry:
    t, source = obj.get("t"), obj.get(source_key)
    if not isinstance(t, (int, float)) or isinstance(t, bool) or not t >= 0:
        raise RecordingError(path, offset, f"corrupt: entry {index} has no valid time")
    if not isinstance(source, str) or source not in SOURCES:
        raise RecordingError(path, offset, f"corrupt: entry {index} has unknown source "
                                           f"{str(source)[:40]!r}")
    return Entry(index=index, offset=offset, t=float(t), source=source, data=obj)
