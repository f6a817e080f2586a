"""The spool's on-disk format: table layout and its version, record bodies, opening a file.

Versions (PRAGMA user_version; record bodies carry their own ``v``):
  0  the first released layout: records / deliveries / delivered / rejects (rejects keyed by
     the record's seq), bodies without ``v``.
  1  records.attempts + last_error (poison-record bound), rejects get their own key and say
     where a record was refused (`origin`: a conduit, or "capture"), the `captures` ledger
     (last capture id per instance, for `supersedes`). Bodies carry ``v: 1``.
  2  a record's delivery tier (final / periodic / capture) is the column `tier` of records
     and rejects (was `kind`; index records_tier_seq). Bodies carry ``v: 2`` and `tier`;
     older bodies (``kind``) decode alike, since decoding never reads either.
  3  `failures`: a record's failed deliveries per conduit, which the poison probe counts (the
     total stays in records.attempts). Counts from before the upgrade start again at 0.
A file from a newer agent is refused with a clear error (a downgrade must not rewrite it); a
file sqlite cannot read is quarantined (renamed with a timestamp) and a fresh one started.
"""
from __future__ import annotations

import contextlib
import dataclasses
import datetime
import logging
import os
import sqlite3
import urllib.parse
from typing import Any, Callable, Mapping

import msgpack

from lifecycle_stats.counters import Counters
from lifecycle_stats.exceptions import LifecycleStatsError
from lifecycle_stats.records import Notification, isotime

LOG = logging.getLogger(__name__)

SCHEMA_VERSION = 3
BODY_VERSION = 2
_FIELDS = tuple(f.name for f in dataclasses.fields(Notification))

_V0 = """
CREATE TABLE IF NOT EXISTS records (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    message_id TEXT NOT NULL UNIQUE,
    kind TEXT NOT NULL,
    created_at REAL NOT NULL,
    body BLOB NOT NULL);
CREATE INDEX IF NOT EXISTS records_kind_seq ON records (kind, seq);
CREATE TABLE IF NOT EXISTS deliveries (
    seq INTEGER NOT NULL,
    conduit TEXT NOT NULL,
    PRIMARY KEY (seq, conduit)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS delivered (
    message_id TEXT PRIMARY KEY,
    delivered_at REAL NOT NULL);
CREATE INDEX IF NOT EXISTS delivered_at ON delivered (delivered_at);
CREATE TABLE IF NOT EXISTS rejects (
    seq INTEGER PRIMARY KEY, message_id TEXT, kind TEXT, created_at REAL, body BLOB,
    reason TEXT NOT NULL, rejected_at REAL NOT NULL);
"""

_V0_TO_V1 = """
ALTER TABLE records ADD COLUMN attempts INTEGER NOT NULL DEFAULT 0;
ALTER TABLE records ADD COLUMN last_error TEXT;
ALTER TABLE rejects RENAME TO rejects_v0;
CREATE TABLE rejects (
    id INTEGER PRIMARY KEY AUTOINCREMENT, seq INTEGER, message_id TEXT, kind TEXT,
    created_at REAL, body BLOB, reason TEXT NOT NULL, rejected_at REAL NOT NULL,
    origin TEXT NOT NULL DEFAULT 'spool');
INSERT INTO rejects (seq, message_id, kind, created_at, body, reason, rejected_at)
    SELECT seq, message_id, kind, created_at, body, reason, rejected_at FROM rejects_v0
    ORDER BY seq;
DROP TABLE rejects_v0;
CREATE TABLE captures (
    instance_id TEXT PRIMARY KEY,
    message_id TEXT NOT NULL,
    captured_at REAL NOT NULL);
CREATE INDEX captures_at ON captures (captured_at);
"""

# `kind` was the word for a record's tier before issue 17 gave each concept one word.
_V1_TO_V2 = """
ALTER TABLE records RENAME COLUMN kind TO tier;
DROP INDEX records_kind_seq;
CREATE INDEX records_tier_seq ON records (tier, seq);
ALTER TABLE rejects RENAME COLUMN kind TO tier;
"""

# One conduit's outage must not count towards another's poison probe.
_V2_TO_V3 = """
CREATE TABLE failures (
    seq INTEGER NOT NULL,
    conduit TEXT NOT NULL,
    attempts INTEGER NOT NULL,
    PRIMARY KEY (seq, conduit)) WITHOUT ROWID;
"""

MIGRATIONS = {0: _V0_TO_V1, 1: _V1_TO_V2, 2: _V2_TO_V3}  # from version N to N + 1


class SpoolTooNew(LifecycleStatsError):
    """The spool file was written by a newer agent; this one must not touch it."""


# -- record bodies --------------------------------------------------------------------------

def _plain(obj: Any) -> Any:
    if isinstance(obj, Mapping):
        return dict(obj)
    if isinstance(obj, (set, frozenset)):
        return sorted(obj)
    if isinstance(obj, datetime.datetime):
        return isotime(obj)
    raise TypeError(f"cannot spool a {type(obj).__name__}: {obj!r}")


def encode(notification: Notification, tier: str, created_at: float) -> bytes:
    doc = {name: getattr(notification, name) for name in _FIELDS}
    doc.update(v=BODY_VERSION, tier=tier, created_at=created_at)
    return msgpack.packb(doc, default=_plain, use_bin_type=True)


def reject_body(notification: Notification, now: float) -> bytes:
    """The stored body of a rejected notification; its repr when it cannot be encoded."""
    try:
        return encode(notification, "final", now)
    except (TypeError, ValueError) as exc:
        return f"unencodable ({exc}): {notification!r}".encode("utf-8", "replace")


def decode(body: bytes) -> Notification:
    """The Notification in a stored body of any version; ValueError if it is not one.

    Tolerant: keys it does not know (a newer body) are ignored; a body without ``v`` is v0.
    """
    try:
        doc = msgpack.unpackb(body, raw=False)
    except (ValueError, TypeError, msgpack.UnpackException) as exc:
        raise ValueError(f"undecodable msgpack: {exc}") from exc
    if not isinstance(doc, dict):
        raise ValueError(f"body is a {type(doc).__name__}, not a map")
    version = doc.get("v", 0)
    missing = [name for name in _FIELDS if name not in doc]
    if missing:
        raise ValueError(f"body (v{version}) lacks {', '.join(missing)}")
    if not isinstance(doc["payload"], dict):
        raise ValueError("payload is not a map")
    return Notification(**{name: doc[name] for name in _FIELDS})


# -- opening a file -------------------------------------------------------------------------

def prepare_file(path: str) -> None:
    """Create the parent dir (0700) and the database file (0600) before sqlite touches it."""
    parent = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(parent):
        os.makedirs(parent, mode=0o700)
        os.chmod(parent, 0o700)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        os.fchmod(fd, 0o600)
    finally:
        os.close(fd)
    restrict_sidecars(path)


def restrict_sidecars(path: str) -> None:
    # sqlite creates -wal/-shm with the main file's mode; files left by an older run or by a
    # read-only reader are tightened here too.
    for suffix in ("-wal", "-shm"):
        with contextlib.suppress(FileNotFoundError):
            os.chmod(path + suffix, 0o600)


def open_database(path: str, *, clock: Callable[[], datetime.datetime],
                  counters: Counters) -> sqlite3.Connection:
    """A connection to an up-to-date spool at path. A corrupt file is quarantined first."""
    try:
        return _open(path)
    except sqlite3.OperationalError:
        raise  # locked, full, unreadable directory: not the file's fault, never quarantine
    except sqlite3.DatabaseError as exc:
        moved = quarantine(path, clock())
        counters.incr("spool.quarantined")
        LOG.error("spool %s is corrupt (%s): moved it to %s and started an empty spool",
                  path, exc, moved)
        return _open(path)


# SQLite's page cache per spool connection, KiB (its default is 2000): a record is written
# once and read soon after, and the file is in the OS's page cache anyway. The default filled
# with a burst's bodies and stayed resident (sqlite3_memory_used after 200 puts of 36 KB:
# 2.3 MiB; 0.5 MiB with this).
CACHE_KIB = 512


def _connect(path: str) -> sqlite3.Connection:
    db = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=30)
    db.execute(f"PRAGMA cache_size=-{CACHE_KIB}")
    return db


def _open(path: str) -> sqlite3.Connection:
    db = _connect(path)  # its cache capped before quick_check reads every page
    try:
        _check_integrity(db)
        mode = db.execute("PRAGMA journal_mode=WAL").fetchone()[0]
        if mode.lower() != "wal":
            raise sqlite3.OperationalError(f"{path}: cannot use WAL journal (got {mode})")
        # FULL: the WAL is fsynced at every commit. A final sample must survive power loss,
        # not only a process crash. One fsync per capture is cheap at instance-delete rates.
        db.execute("PRAGMA synchronous=FULL")
        migrate(db)
    except BaseException:
        db.close()
        raise
    return db


def open_lookups(path: str) -> sqlite3.Connection:
    """A read-only connection to the spool open_database() prepared: WAL lets it read the
    last commit while a writer's transaction is open."""
    db = _connect(path)
    db.execute("PRAGMA query_only=1")
    return db


def _check_integrity(db: sqlite3.Connection) -> None:
    # quick_check reads every page once: a torn or overwritten file is found at start, not
    # by the first put of a final sample.
    verdict = db.execute("PRAGMA quick_check").fetchone()[0]
    if verdict != "ok":
        raise sqlite3.DatabaseError(f"quick_check: {verdict}")


def migrate(db: sqlite3.Connection) -> None:
    """Bring the layout to SCHEMA_VERSION, one step per transaction."""
    version = db.execute("PRAGMA user_version").fetchone()[0]
    if version > SCHEMA_VERSION:
        raise SpoolTooNew(f"spool layout version {version} is newer than this agent's "
                          f"{SCHEMA_VERSION}; refusing to open it")
    if version == 0:
        db.executescript(_V0)  # a new file, or today's v0 file (no-op then)
    while version < SCHEMA_VERSION:
        db.execute("BEGIN IMMEDIATE")
        try:
            for statement in MIGRATIONS[version].split(";"):
                if statement.strip():
                    db.execute(statement)
            db.execute(f"PRAGMA user_version = {version + 1}")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")
        LOG.info("spool layout migrated from version %d to %d", version, version + 1)
        version += 1


def quarantine(path: str, now: datetime.datetime) -> str:
    """Move path and its WAL/SHM aside as <path>.corrupt-<UTC time>; the new name."""
    target = f"{path}.corrupt-{now.strftime('%Y%m%dT%H%M%S.%fZ')}"
    os.replace(path, target)
    for suffix in ("-wal", "-shm"):
        with contextlib.suppress(FileNotFoundError):
            os.replace(path + suffix, target + suffix)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
    os.close(fd)
    return target


def read_only_stats(path: str, now: float) -> dict[str, Any]:
    """Depth, oldest age and per-conduit confirmations from a spool file, without writing it.

    Used by the status command while the agent may be running, or dead. Raises
    sqlite3.Error when the file is missing or unreadable.
    """
    uri = "file:" + urllib.parse.quote(os.path.abspath(path)) + "?mode=ro"
    db = sqlite3.connect(uri, uri=True, timeout=5)
    try:
        depth, oldest = db.execute("SELECT count(*), min(created_at) FROM records").fetchone()
        # the status command may read a file its agent has not upgraded yet (v0/v1: `kind`)
        column = "tier" if db.execute("PRAGMA user_version").fetchone()[0] >= 2 else "kind"
        tiers = dict(db.execute(f"SELECT {column}, count(*) FROM records GROUP BY {column}"))
        confirmed = dict(db.execute("SELECT conduit, count(*) FROM deliveries GROUP BY conduit"))
        rejects = db.execute("SELECT count(*) FROM rejects").fetchone()[0]
    finally:
        db.close()
    return {
        "depth": depth,
        "oldest_age_seconds": None if oldest is None else max(0.0, now - oldest),
        "by_tier": tiers,
        "confirmed_by_conduit": confirmed,
        "rejects": rejects,
    }
