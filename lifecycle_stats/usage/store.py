"""The usage ledger's SQLite file: where it lives, its schema and version, how it opens (a
damaged or newer file is moved aside, never a reason not to start), and the guard that keeps
a failing file from costing a capture."""
from __future__ import annotations

import datetime
import functools
import logging
import os
import sqlite3

LOG = logging.getLogger(__name__)
LEDGER_FILENAME = "usage.sqlite"
SCHEMA_VERSION = 3  # 1: period buckets (issue 18 replaced them; such a file is moved aside)
# From version N to N + 1, in place. 2: a report's tier (final/periodic) was named `kind`.
MIGRATIONS = {2: "ALTER TABLE reports RENAME COLUMN kind TO tier"}
_SCHEMA = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value REAL NOT NULL);
CREATE TABLE instances (instance_id TEXT PRIMARY KEY, info BLOB NOT NULL,
    first_seen REAL NOT NULL, last_seen REAL NOT NULL, seen_off_at REAL,
    delete_announced_at REAL, delete_sent_by REAL, deleted_at REAL, gone_at REAL,
    version INTEGER NOT NULL DEFAULT 1);
CREATE TABLE processes (instance_id TEXT NOT NULL, number INTEGER NOT NULL, domain_id INTEGER,
    started_at REAL, from_zero INTEGER NOT NULL, first_at REAL NOT NULL,
    latest_at REAL NOT NULL, latest BLOB NOT NULL, series BLOB NOT NULL,
    closing INTEGER NOT NULL, ended_at REAL, stopped INTEGER NOT NULL DEFAULT 0, version INTEGER NOT NULL DEFAULT 1,
    PRIMARY KEY (instance_id, number));
CREATE TABLE entries (seq INTEGER PRIMARY KEY AUTOINCREMENT, instance_id TEXT NOT NULL,
    process INTEGER NOT NULL, bucket REAL NOT NULL, first_at REAL NOT NULL, at REAL NOT NULL,
    growth BLOB NOT NULL, observed REAL NOT NULL, gap_from REAL, reason TEXT, report TEXT,
    version INTEGER NOT NULL DEFAULT 1);
CREATE INDEX entries_by_instance ON entries (instance_id, report);
CREATE TABLE reports (message_id TEXT PRIMARY KEY, instance_id TEXT NOT NULL,
    tier TEXT NOT NULL, source TEXT NOT NULL, notification BLOB NOT NULL, made_at REAL NOT NULL,
    spooled_at REAL, version INTEGER NOT NULL DEFAULT 1);
CREATE INDEX reports_unspooled ON reports (spooled_at);
CREATE TABLE outages (begin REAL NOT NULL, end REAL NOT NULL);
CREATE TABLE emitted (period_begin REAL PRIMARY KEY, period_end REAL NOT NULL,
    emitted_at REAL NOT NULL);
"""


def ledger_path(state_path: str) -> str:
    return os.path.join(state_path, LEDGER_FILENAME)


def guarded(method):
    """A failing ledger (disk full, I/O error) must never cost a capture: the delete.samples
    and the poll go on; the failure is counted (`usage.ledger_errors`) and logged."""
    @functools.wraps(method)
    def guarded(self, *args, **kwargs):
        try:
            return method(self, *args, **kwargs)
        except sqlite3.Error:
            self.counters.incr("usage.ledger_errors")
            LOG.exception("usage ledger %s failed in %s", self.path, method.__name__)
            return None
    return guarded


class Unusable(sqlite3.DatabaseError):
    """The file is not a ledger this agent can read."""


def _connect(path: str) -> sqlite3.Connection:
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    os.close(fd)
    db = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=30)
    try:
        if db.execute("PRAGMA journal_mode=WAL").fetchone()[0].lower() != "wal":
            raise sqlite3.OperationalError(f"{path}: cannot use the WAL journal")
        db.execute("PRAGMA synchronous=FULL")  # a recorded reading survives power loss
        version = db.execute("PRAGMA user_version").fetchone()[0]
        if version == 0 and not db.execute("SELECT 1 FROM sqlite_master").fetchone():
            db.executescript("BEGIN;" + _SCHEMA + f"PRAGMA user_version={SCHEMA_VERSION};"
                             "COMMIT;")
        elif version in MIGRATIONS:
            _migrate(db, version)
        elif version != SCHEMA_VERSION:
            raise Unusable(f"schema version {version}, this agent reads {SCHEMA_VERSION}")
        check = db.execute("PRAGMA quick_check").fetchone()[0]
        if check != "ok":
            raise Unusable(f"integrity check: {check}")
    except BaseException:
        db.close()
        raise
    return db


def _migrate(db: sqlite3.Connection, version: int) -> None:
    while version < SCHEMA_VERSION:  # each step in its own transaction
        db.executescript(f"BEGIN; {MIGRATIONS[version]}; PRAGMA user_version={version + 1}; "
                         "COMMIT;")
        LOG.info("usage ledger schema migrated from version %d to %d", version, version + 1)
        version += 1


def open_ledger(path: str) -> tuple[sqlite3.Connection, str | None]:
    """(connection, None), or — when the file is damaged, foreign or of another schema
    version — the file moved aside (ERROR logged) and a new one: (connection, where the old
    one went). A locked or unwritable file still raises: moving it would not help."""
    try:
        return _connect(path), None
    except sqlite3.OperationalError as exc:
        if "locked" in str(exc) or "unable to open" in str(exc):
            raise
        problem = exc
    except sqlite3.DatabaseError as exc:
        problem = exc
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    aside = f"{path}.corrupt-{stamp}"
    for suffix in ("", "-wal", "-shm"):
        if os.path.exists(path + suffix):
            os.replace(path + suffix, aside + suffix)
    LOG.error("usage ledger %s unusable (%s): moved aside to %s; usage accounting starts "
              "afresh (processes running now are reported from their next reading, "
              "complete: false)", path, problem, aside)
    return _connect(path), aside
