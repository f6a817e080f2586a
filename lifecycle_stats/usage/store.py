"""The usage ledger's SQLite file: where it lives, its schema and version, how it opens, and
the guard that keeps a failing file from costing a capture."""
from __future__ import annotations

import functools
import logging
import os
import sqlite3

LOG = logging.getLogger(__name__)
LEDGER_FILENAME = "usage.sqlite"
SCHEMA_VERSION = 1
_SCHEMA = """
CREATE TABLE instances (instance_id TEXT PRIMARY KEY, info BLOB NOT NULL,
    first_seen REAL NOT NULL, last_seen REAL NOT NULL, deleted_at REAL);
CREATE TABLE processes (instance_id TEXT NOT NULL, number INTEGER NOT NULL, domain_id INTEGER,
    from_zero INTEGER NOT NULL, first_at REAL NOT NULL, first BLOB NOT NULL,
    latest_at REAL NOT NULL, latest BLOB NOT NULL, closed_at REAL, ended_at REAL,
    PRIMARY KEY (instance_id, number));
CREATE TABLE usage (instance_id TEXT NOT NULL, period_begin REAL NOT NULL,
    period_end REAL NOT NULL, totals BLOB NOT NULL, observed_seconds REAL NOT NULL,
    first_at REAL NOT NULL, last_at REAL NOT NULL, unobserved BLOB NOT NULL,
    PRIMARY KEY (instance_id, period_begin));
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


def open_ledger(path: str) -> sqlite3.Connection:
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    os.close(fd)
    db = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=30)
    if db.execute("PRAGMA journal_mode=WAL").fetchone()[0].lower() != "wal":
        db.close()
        raise sqlite3.OperationalError(f"{path}: cannot use the WAL journal")
    db.execute("PRAGMA synchronous=FULL")  # a recorded reading survives power loss
    version = db.execute("PRAGMA user_version").fetchone()[0]
    if version == 0:
        db.executescript("BEGIN;" + _SCHEMA + f"PRAGMA user_version={SCHEMA_VERSION}; COMMIT;")
    elif version != SCHEMA_VERSION:
        db.close()
        raise sqlite3.DatabaseError(f"{path}: usage ledger schema version {version}, this "
                                    f"agent reads version {SCHEMA_VERSION}")
    return db
