"""Group commit: writers that arrive together share one transaction, hence one fsync.

Leader/follower: a writer queues its operation; if no batch is being committed it becomes
the leader, takes every queued operation, runs each in its own SAVEPOINT inside one
transaction and commits once. Writers that arrive meanwhile wait and form the next batch.
Each writer returns only after the COMMIT that holds its operation (synchronous=FULL: the WAL
is fsynced), so durability is what a transaction per writer gave.

One operation's failure is its own: it is rolled back to its savepoint and raised to its
writer only. A failure of the transaction itself (BEGIN or COMMIT: database locked, disk
full) is raised to every writer of the batch; nothing of it was stored.
"""
from __future__ import annotations

import sqlite3
import threading
from typing import Any, Callable

from lifecycle_stats import sqlite_tx

Operation = Callable[[sqlite3.Connection], Any]


class _Slot:
    __slots__ = ("operation", "done", "result", "error")

    def __init__(self, operation: Operation) -> None:
        self.operation = operation
        self.done = False
        self.result: Any = None
        self.error: BaseException | None = None

    def outcome(self) -> Any:
        if self.error is not None:
            raise self.error
        return self.result


class GroupCommit:
    """Runs operations on db under lock, batching concurrent ones into one transaction."""

    def __init__(self, db: sqlite3.Connection, lock: threading.RLock,
                 on_commit: Callable[[int], None] = lambda size: None) -> None:
        self._db = db
        self._lock = lock
        self._on_commit = on_commit  # called with the batch size after each commit
        self._cond = threading.Condition()
        self._queue: list[_Slot] = []
        self._leading = False

    def run(self, operation: Operation) -> Any:
        """operation(db) inside a committed transaction; its result, or its exception."""
        slot = _Slot(operation)
        with self._cond:
            self._queue.append(slot)
            while self._leading and not slot.done:
                self._cond.wait()
            if slot.done:
                return slot.outcome()
            self._leading = True
            batch, self._queue = self._queue, []
        try:
            self._commit(batch)
        finally:
            with self._cond:
                self._leading = False
                self._cond.notify_all()
        return slot.outcome()

    def _commit(self, batch: list[_Slot]) -> None:
        try:
            with sqlite_tx.immediate(self._db, self._lock) as db:
                for slot in batch:
                    self._run_one(db, slot)
        except BaseException as exc:  # nothing of the batch was stored
            for slot in batch:
                slot.result, slot.error = None, exc
        else:
            self._on_commit(len(batch))
        for slot in batch:
            slot.done = True

    @staticmethod
    def _run_one(db: sqlite3.Connection, slot: _Slot) -> None:
        db.execute("SAVEPOINT one_writer")
        try:
            slot.result = slot.operation(db)
        except Exception as exc:
            db.execute("ROLLBACK TO one_writer")
            slot.error = exc
        db.execute("RELEASE one_writer")
