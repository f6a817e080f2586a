"""Durable, at-least-once spool between capture and the conduits.

A final sample exists once: after nova destroys the domain it can never be read again. So
every notification is written here (and fsynced) before any conduit is tried, and it is
removed only after every configured conduit confirmed it. Each conduit has its own cursor
(records without a `deliveries` row for it), so one failing conduit never holds back another.

Size policy (max_records): when the spool holds max_records or more, periodic records are
shed oldest-first to make room (counted `spool.shed`, logged). Final records are never shed:
a final put always succeeds, even over the bound (counted `spool.over_bound`). When the bound
is full of finals, a periodic put is refused: put() returns False (counted `spool.shed`).

Recently delivered message ids are kept in `delivered` (bounded by age and rows, pruned on
put) so that a redelivered trigger for an already-published notification is recognised.
"""
from __future__ import annotations

import contextlib
import dataclasses
import datetime
import logging
import os
import sqlite3
import threading
import urllib.parse
from typing import Any, Callable, Iterator, Mapping

import msgpack

from lifecycle_stats.counters import Counters
from lifecycle_stats.records import Notification, isotime, utcnow

LOG = logging.getLogger(__name__)

SPOOL_FILENAME = "spool.sqlite"
KINDS = ("final", "periodic")
_FIELDS = tuple(f.name for f in dataclasses.fields(Notification))

_SCHEMA = """
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


def spool_path(state_path: str) -> str:
    return os.path.join(state_path, SPOOL_FILENAME)


def _plain(obj: Any) -> Any:
    if isinstance(obj, Mapping):
        return dict(obj)
    if isinstance(obj, (set, frozenset)):
        return sorted(obj)
    if isinstance(obj, datetime.datetime):
        return isotime(obj)
    raise TypeError(f"cannot spool a {type(obj).__name__}: {obj!r}")


def encode(notification: Notification, kind: str, created_at: float) -> bytes:
    doc = {name: getattr(notification, name) for name in _FIELDS}
    doc.update(kind=kind, created_at=created_at)
    return msgpack.packb(doc, default=_plain, use_bin_type=True)


def decode(body: bytes) -> Notification:
    """The Notification in a stored body; ValueError if it is not one."""
    try:
        doc = msgpack.unpackb(body, raw=False)
    except (ValueError, TypeError, msgpack.UnpackException) as exc:
        raise ValueError(f"undecodable msgpack: {exc}") from exc
    if not isinstance(doc, dict):
        raise ValueError(f"body is a {type(doc).__name__}, not a map")
    missing = [name for name in _FIELDS if name not in doc]
    if missing:
        raise ValueError(f"body lacks {', '.join(missing)}")
    if not isinstance(doc["payload"], dict):
        raise ValueError("payload is not a map")
    return Notification(**{name: doc[name] for name in _FIELDS})


def _prepare_file(path: str) -> None:
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
    _restrict_sidecars(path)


def _restrict_sidecars(path: str) -> None:
    # sqlite creates -wal/-shm with the main file's mode; files left by an older run or by a
    # read-only reader are tightened here too.
    for suffix in ("-wal", "-shm"):
        with contextlib.suppress(FileNotFoundError):
            os.chmod(path + suffix, 0o600)


class Spool:
    def __init__(self, path: str, *, conduits: list[str], max_records: int = 100_000,
                 clock: Callable[[], datetime.datetime] = utcnow,
                 counters: Counters | None = None,
                 retention_seconds: float = 7 * 86400, retention_rows: int = 100_000):
        if not conduits or len(set(conduits)) != len(conduits):
            raise ValueError(f"conduits must be a non-empty list of distinct names: {conduits!r}")
        if max_records < 1:
            raise ValueError(f"max_records must be >= 1, got {max_records}")
        self.path = path
        self.conduits = tuple(conduits)
        self._max = max_records
        self._clock = clock
        self._counters = counters if counters is not None else Counters()
        self._retention = (retention_seconds, retention_rows)
        self._lock = threading.RLock()
        _prepare_file(path)
        self._db = self._connect(path)
        _restrict_sidecars(path)
        with self._tx() as db:
            self._retire_complete(db)

    @staticmethod
    def _connect(path: str) -> sqlite3.Connection:
        db = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=30)
        mode = db.execute("PRAGMA journal_mode=WAL").fetchone()[0]
        if mode.lower() != "wal":
            db.close()
            raise sqlite3.OperationalError(f"{path}: cannot use WAL journal (got {mode})")
        # FULL: the WAL is fsynced at every commit. A final sample must survive power loss,
        # not only a process crash (NORMAL in WAL mode may lose the last commits on power
        # loss). One fsync per capture is cheap: captures happen at instance-delete rates.
        db.execute("PRAGMA synchronous=FULL")
        db.executescript(_SCHEMA)
        return db

    @contextlib.contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def _now(self) -> float:
        return self._clock().timestamp()

    # -- writing ----------------------------------------------------------------------------

    def put(self, notification: Notification, kind: str) -> bool:
        """Store durably; False for a duplicate or a refused periodic record (see module doc)."""
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
        now = self._now()
        body = encode(notification, kind, now)
        with self._tx() as db:
            self._prune_delivered(db, now)
            if self._known(db, notification.message_id, now):
                self._counters.incr("spool.duplicate")
                return False
            if not self._make_room(db, kind):
                return False
            db.execute("INSERT INTO records (message_id, kind, created_at, body) "
                       "VALUES (?, ?, ?, ?)", (notification.message_id, kind, now, body))
        self._counters.incr("spool.put")
        return True

    def _make_room(self, db: sqlite3.Connection, kind: str) -> bool:
        depth = db.execute("SELECT count(*) FROM records").fetchone()[0]
        if depth < self._max:
            return True
        shed = db.execute(
            "SELECT seq, message_id FROM records WHERE kind = 'periodic' ORDER BY seq LIMIT ?",
            (depth - self._max + 1,)).fetchall()
        if shed:
            for seq, message_id in shed:
                self._delete(db, seq)
                LOG.warning("spool full (%d records): shed periodic record %s", depth,
                            message_id)
            self._counters.incr("spool.shed", len(shed))
            return True
        if kind == "final":
            self._counters.incr("spool.over_bound")
            LOG.warning("spool full of final records (%d): keeping a final over the bound "
                        "of %d", depth, self._max)
            return True
        self._counters.incr("spool.shed")
        LOG.warning("spool full of final records (%d): refused a periodic record", depth)
        return False

    def confirm(self, seq: int, conduit: str) -> bool:
        """Record that conduit delivered seq; True when that completed (and removed) it."""
        if conduit not in self.conduits:
            raise ValueError(f"unknown conduit {conduit!r}; configured: {self.conduits}")
        with self._tx() as db:
            if db.execute("SELECT 1 FROM records WHERE seq = ?", (seq,)).fetchone() is None:
                return False
            db.execute("INSERT OR IGNORE INTO deliveries (seq, conduit) VALUES (?, ?)",
                       (seq, conduit))
            return bool(self._retire_complete(db, seq))

    def _retire_complete(self, db: sqlite3.Connection, seq: int | None = None) -> int:
        """Remove records every configured conduit confirmed (one seq, or all at start-up)."""
        marks = ",".join("?" * len(self.conduits))
        where = "AND r.seq = ?" if seq is not None else ""
        rows = db.execute(
            f"SELECT r.seq, r.message_id FROM records r WHERE (SELECT count(*) FROM deliveries d"
            f" WHERE d.seq = r.seq AND d.conduit IN ({marks})) = ? {where}",
            (*self.conduits, len(self.conduits), *(() if seq is None else (seq,)))).fetchall()
        now = self._now()
        for done_seq, message_id in rows:
            self._delete(db, done_seq)
            db.execute("INSERT OR REPLACE INTO delivered (message_id, delivered_at) "
                       "VALUES (?, ?)", (message_id, now))
        return len(rows)

    @staticmethod
    def _delete(db: sqlite3.Connection, seq: int) -> None:
        db.execute("DELETE FROM records WHERE seq = ?", (seq,))
        db.execute("DELETE FROM deliveries WHERE seq = ?", (seq,))

    def _prune_delivered(self, db: sqlite3.Connection, now: float) -> None:
        seconds, rows = self._retention
        db.execute("DELETE FROM delivered WHERE delivered_at < ?", (now - seconds,))
        # rowids grow with every insert: this keeps at most the newest `rows` (O(log n)).
        db.execute("DELETE FROM delivered WHERE rowid <= "
                   "(SELECT max(rowid) FROM delivered) - ?", (rows,))

    # -- reading ----------------------------------------------------------------------------

    def seen(self, message_id: str) -> bool:
        """Spooled now, or delivered within the retention period."""
        with self._lock:
            return self._known(self._db, message_id, self._now())

    def _known(self, db: sqlite3.Connection, message_id: str, now: float) -> bool:
        row = db.execute(
            "SELECT 1 FROM records WHERE message_id = ? UNION ALL SELECT 1 FROM delivered "
            "WHERE message_id = ? AND delivered_at >= ? LIMIT 1",
            (message_id, message_id, now - self._retention[0])).fetchone()
        return row is not None

    def pending(self, conduit: str, limit: int) -> list[tuple[int, Notification]]:
        """Up to limit records conduit has not confirmed, oldest first.

        Undecodable bodies are moved to `rejects` on the way (never returned, never blocking).
        """
        with self._tx() as db:
            rows = db.execute(
                "SELECT seq, message_id, body FROM records r WHERE NOT EXISTS (SELECT 1 FROM "
                "deliveries d WHERE d.seq = r.seq AND d.conduit = ?) ORDER BY seq LIMIT ?",
                (conduit, limit)).fetchall()
            out = []
            for seq, message_id, body in rows:
                try:
                    out.append((seq, decode(body)))
                except ValueError as exc:
                    self._reject(db, seq, message_id, str(exc))
            return out

    def _reject(self, db: sqlite3.Connection, seq: int, message_id: str, reason: str) -> None:
        db.execute("INSERT OR REPLACE INTO rejects SELECT seq, message_id, kind, created_at, "
                   "body, ?, ? FROM records WHERE seq = ?", (reason, self._now(), seq))
        self._delete(db, seq)
        self._counters.incr("spool.corrupt")
        LOG.error("spool record %d (message_id %s) is corrupt (%s): moved to the rejects table",
                  seq, message_id, reason)

    def pending_count(self, conduit: str) -> int:
        with self._lock:
            return self._db.execute(
                "SELECT count(*) FROM records r WHERE NOT EXISTS (SELECT 1 FROM deliveries d "
                "WHERE d.seq = r.seq AND d.conduit = ?)", (conduit,)).fetchone()[0]

    def backlog(self) -> dict[str, tuple[int, float | None]]:
        """Per conduit: how many records it has not confirmed, and the oldest one's age (s)."""
        now = self._now()
        with self._lock:
            rows = {conduit: self._db.execute(
                "SELECT count(*), min(created_at) FROM records r WHERE NOT EXISTS (SELECT 1 "
                "FROM deliveries d WHERE d.seq = r.seq AND d.conduit = ?)", (conduit,)).fetchone()
                for conduit in self.conduits}
        return {conduit: (count, None if oldest is None else max(0.0, now - oldest))
                for conduit, (count, oldest) in rows.items()}

    def depth(self) -> int:
        with self._lock:
            return self._db.execute("SELECT count(*) FROM records").fetchone()[0]

    def oldest_age_seconds(self) -> float | None:
        with self._lock:
            oldest = self._db.execute("SELECT min(created_at) FROM records").fetchone()[0]
        return None if oldest is None else max(0.0, self._now() - oldest)

    def close(self) -> None:
        with self._lock:
            self._db.close()


def read_only_stats(path: str, now: float) -> dict[str, Any]:
    """Depth, oldest age and per-conduit confirmations from a spool file, without writing it.

    Used by the status command while the agent may be running, or dead. Raises
    sqlite3.Error when the file is missing or unreadable.
    """
    uri = "file:" + urllib.parse.quote(os.path.abspath(path)) + "?mode=ro"
    db = sqlite3.connect(uri, uri=True, timeout=5)
    try:
        depth, oldest = db.execute("SELECT count(*), min(created_at) FROM records").fetchone()
        kinds = dict(db.execute("SELECT kind, count(*) FROM records GROUP BY kind"))
        confirmed = dict(db.execute("SELECT conduit, count(*) FROM deliveries GROUP BY conduit"))
        rejects = db.execute("SELECT count(*) FROM rejects").fetchone()[0]
    finally:
        db.close()
    return {
        "depth": depth,
        "oldest_age_seconds": None if oldest is None else max(0.0, now - oldest),
        "by_kind": kinds,
        "confirmed_by_conduit": confirmed,
        "rejects": rejects,
    }
