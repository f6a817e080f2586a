"""File conduit (entry point `file`): signed meter messages as JSON lines, size-rotated.

One line per sample, the same signed dict Ceilometer's polling agent and UDP publisher carry,
keys sorted. emit() returns after the lines are fsynced, so the spool drops a record only once
it is on disk. A write the filesystem takes only in part (disk full, file size limit) is a
failed send: the file is cut back to where the record began, so no truncated line stays, and
the record stays in the spool for the next attempt. Before a write would take the file past `max_bytes`, it is rotated like
logging's RotatingFileHandler: path -> path.1 -> ... -> path.<backup_count> (oldest dropped).
`lifecycle-stats-verify FILE` checks every line's signature.
"""
from __future__ import annotations

import errno
import json
import os
import threading

from oslo_config import cfg

from lifecycle_stats.interfaces import Conduit
from lifecycle_stats.publishing import meter_messages, signing
from lifecycle_stats.exceptions import ConfigError, EmitError
from lifecycle_stats.records import Notification

OPTS = [
    cfg.StrOpt("path", help="File the samples are appended to (required for this conduit)."),
    cfg.IntOpt("max_bytes", default=10 * 1024 * 1024, min=0,
               help="Rotate before the file would grow past this size; 0: never rotate."),
    cfg.IntOpt("backup_count", default=5, min=1, help="Rotated files kept (path.1 ...)."),
]


def lines(notification: Notification, secret: str) -> bytes:
    return b"".join(
        json.dumps(message, sort_keys=True).encode("utf-8") + b"\n"
        for message in meter_messages.from_notification(notification, secret))


class FileConduit(Conduit):
    name = "file"

    def __init__(self, conf: cfg.ConfigOpts) -> None:
        conf.register_opts(OPTS, group="file_emitter")
        signing.register_opts(conf)
        if not conf.file_emitter.path:
            raise ConfigError("[file_emitter] path", None, "the file conduit needs a path")
        self.path = conf.file_emitter.path
        self._max_bytes = conf.file_emitter.max_bytes
        self._backups = conf.file_emitter.backup_count
        self._secret = conf.publisher.telemetry_secret
        self._lock = threading.Lock()

    def emit(self, notification: Notification) -> None:
        data = lines(notification, self._secret)
        if not data:
            return
        try:
            with self._lock:
                self._rotate_if_full(len(data))
                append_whole(self.path, data)
        except OSError as exc:
            raise EmitError(f"cannot write {self.path}: {exc}") from exc

    def _rotate_if_full(self, incoming: int) -> None:
        try:
            size = os.path.getsize(self.path)
        except FileNotFoundError:
            return
        if not self._max_bytes or size == 0 or size + incoming <= self._max_bytes:
            return
        for n in range(self._backups - 1, 0, -1):
            older = f"{self.path}.{n}"
            if os.path.exists(older):
                os.replace(older, f"{self.path}.{n + 1}")
        os.replace(self.path, f"{self.path}.1")
        fsync_directory(self.path)  # the renames on disk before the spool drops what follows


def append_whole(path: str, data: bytes) -> None:
    """Append data and fsync, or leave the file as it was and raise OSError. A file created
    here has its directory entry fsynced too (fsync(2): the file's own fsync does not)."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND)
        created = False
    except FileNotFoundError:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
        created = True
    try:
        start = os.fstat(fd).st_size
        try:
            write_all(fd, data)
            os.fsync(fd)
        except OSError:
            os.ftruncate(fd, start)  # a partial line would corrupt the next one appended
            raise
    finally:
        os.close(fd)
    if created:
        fsync_directory(path)


def fsync_directory(path: str) -> None:
    """fsync the directory holding path: its entries (a create, a rename) reach the disk."""
    fd = os.open(os.path.dirname(os.path.abspath(path)), os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_all(fd: int, data: bytes) -> None:
    """os.write until every byte is written: a short count is retried, so a full disk ends
    in the OSError (ENOSPC, EFBIG) of the next call rather than in a silently cut line."""
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        if written <= 0:
            raise OSError(errno.EIO, f"write took {written} of {len(view)} bytes")
        view = view[written:]
