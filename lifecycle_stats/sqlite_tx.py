"""One write transaction on a SQLite connection shared by threads (the spool, the ledger)."""
from __future__ import annotations

import contextlib
import sqlite3
import threading
from typing import Iterator


@contextlib.contextmanager
def immediate(db: sqlite3.Connection, lock: threading.Lock | threading.RLock
              ) -> Iterator[sqlite3.Connection]:
    """BEGIN IMMEDIATE (the write lock taken up front, so a busy database fails here, not
    halfway), COMMIT on success, ROLLBACK on any exception, all under the owner's lock."""
    with lock:
        db.execute("BEGIN IMMEDIATE")
        try:
            yield db
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")
