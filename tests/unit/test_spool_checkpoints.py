"""The spool's WAL checkpoints on a thread of their own (publishing/checkpoints.py), so a
capture's commit never copies the log into the database while nova waits. Real SQLite."""
from __future__ import annotations

import logging
import os
import sqlite3
import time

import pytest

from lifecycle_stats.counters import Counters
from lifecycle_stats.publishing import checkpoints
from lifecycle_stats.publishing.spool import Spool
from lifecycle_stats.records import Notification

BIG = "x" * 40_000  # about a delete.samples


def note(n: int) -> Notification:
    return Notification(event_type="compute.instance.delete.samples", priority="INFO",
                        publisher_id="lifecycle-stats.h1", payload={"n": n, "pad": BIG},
                        message_id=f"msg-{n}", timestamp="2026-11-21T12:00:00.000000+00:00")


def log_frames(path: str) -> tuple[int, int]:
    """(frames in the log, frames of it already in the database), without checkpointing."""
    db = sqlite3.connect(path)
    try:  # a checkpoint of nothing new reports the log's state (TRUNCATE would change it)
        _busy, logged, copied = db.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
        return logged, copied
    finally:
        db.close()


def test_commits_leave_the_checkpoint_to_the_background_thread(tmp_path):
    counters = Counters()
    spool = Spool(str(tmp_path / "spool.sqlite"), conduits=["a"], counters=counters)
    try:
        checkpointer = checkpoints.Checkpointer(spool, interval=3600)
        checkpointer.start()  # the thread waits: commits only
        for n in range(150):  # ~6 MB of log, past SQLite's own 1000-page checkpoint
            spool.put(note(n), "final")
        assert spool.read(lambda db: db.execute("PRAGMA wal_autocheckpoint").fetchone()[0]) \
            == checkpoints.FALLBACK_PAGES
        logged, _ = log_frames(spool.path)
        assert logged > 1000  # no commit checkpointed the log (which restarts it)
        assert checkpointer.thread_state == "alive"
    finally:
        checkpointer.stop(5)
        spool.close()
    assert counters.get("spool.checkpoints") == 0  # the thread never woke


def test_the_thread_checkpoints_what_the_commits_logged(tmp_path):
    counters = Counters()
    spool = Spool(str(tmp_path / "spool.sqlite"), conduits=["a"], counters=counters)
    try:
        checkpointer = checkpoints.Checkpointer(spool, interval=0.05)
        checkpointer.start()
        for n in range(30):
            spool.put(note(n), "final")
        frames = (os.path.getsize(spool.path + "-wal") - 32) // (4096 + 24)  # WAL layout
        assert frames > 300  # 30 puts of ~40 KB
        deadline = time.monotonic() + 10
        while counters.get("spool.checkpointed_pages") < frames and time.monotonic() < deadline:
            time.sleep(0.05)
        assert counters.get("spool.checkpointed_pages") >= frames
        spool.put(note(99), "final")  # the log was all copied: this commit restarts it
        logged, _ = log_frames(spool.path)
        assert logged < 100
    finally:
        checkpointer.stop(5)
        spool.close()
    assert checkpointer.thread_state == "stopped"


@pytest.mark.allow_error_logs
def test_when_the_thread_ends_the_commits_checkpoint_at_sqlites_own_size_again(
        tmp_path, monkeypatch, caplog):
    def no_connection(*args, **kwargs):
        raise sqlite3.OperationalError("unable to open database file")

    counters = Counters()
    spool = Spool(str(tmp_path / "spool.sqlite"), conduits=["a"], counters=counters)
    try:
        monkeypatch.setattr(checkpoints.sqlite3, "connect", no_connection)
        checkpointer = checkpoints.Checkpointer(spool, interval=0.01)
        checkpointer.start()
        deadline = time.monotonic() + 10
        while checkpointer.thread_state == "alive" and time.monotonic() < deadline:
            time.sleep(0.01)
        monkeypatch.undo()
        assert checkpointer.thread_state == "dead"  # the status file shows it
        assert counters.get("spool.checkpoint_errors") == 1
        assert "commits checkpoint again" in caplog.text
        assert spool.read(lambda db: db.execute("PRAGMA wal_autocheckpoint").fetchone()[0]) \
            == checkpoints.SQLITE_PAGES
    finally:
        spool.close()


def test_a_failed_checkpoint_is_counted_and_logged_and_the_spool_goes_on(tmp_path, caplog):
    counters = Counters()
    spool = Spool(str(tmp_path / "spool.sqlite"), conduits=["a"], counters=counters)
    closed = sqlite3.connect(spool.path)
    closed.close()
    with caplog.at_level(logging.WARNING):
        got = checkpoints.Checkpointer(spool).checkpoint(closed)
    assert got == 0 and counters.get("spool.checkpoint_errors") == 1
    assert "background checkpoint" in caplog.text
    assert spool.put(note(1), "final")  # the commit's own fallback still bounds the log
    spool.close()


def test_without_background_checkpoints_sqlite_checkpoints_in_the_commit(tmp_path):
    spool = Spool(str(tmp_path / "spool.sqlite"), conduits=["a"])
    try:
        assert spool.read(lambda db: db.execute("PRAGMA wal_autocheckpoint").fetchone()[0]) \
            == 1000
        assert checkpoints.Checkpointer(spool).thread_state == "not started"
    finally:
        spool.close()
