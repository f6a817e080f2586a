"""Group commit (publishing/group_commit.py): concurrent writers share one transaction; each
writer's own failure stays its own; a failed commit fails the whole batch and stores nothing."""
import sqlite3
import threading
import time

import pytest

from lifecycle_stats.counters import Counters
from lifecycle_stats.publishing.group_commit import GroupCommit
from lifecycle_stats.publishing.spool import Spool
from lifecycle_stats.records import Notification


def note(n):
    return Notification(
        event_type="compute.instance.delete.samples", priority="INFO",
        publisher_id="lifecycle-stats.h1", payload={"instance_id": f"i-{n}", "n": n},
        message_id=f"msg-{n}", timestamp="2026-11-21T12:00:00.000000+00:00")


@pytest.fixture
def db(tmp_path):
    conn = sqlite3.connect(str(tmp_path / "g.sqlite"), isolation_level=None,
                           check_same_thread=False)
    conn.execute("CREATE TABLE t (v INTEGER UNIQUE)")
    yield conn
    conn.close()


def wait_until(predicate, timeout=10.0):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.005)


def queued_behind_held_lock(group, lock, operations):
    """Run each operation on its own thread while lock is held, so that one leader waits
    for the lock and every other writer queues; release; the results by operation index."""
    results = [None] * len(operations)

    def writer(i):
        try:
            results[i] = ("ok", group.run(operations[i]))
        except Exception as exc:  # noqa: BLE001 - the test inspects it
            results[i] = ("error", exc)

    with lock:
        threads = [threading.Thread(target=writer, args=(i,)) for i in range(len(operations))]
        for thread in threads:
            thread.start()
        wait_until(lambda: len(group._queue) == len(operations) - 1)
    for thread in threads:
        thread.join(10)
    return results


def insert(v):
    return lambda db: db.execute("INSERT INTO t (v) VALUES (?)", (v,)).rowcount


def test_writers_arriving_during_a_commit_share_the_next_one(db):
    lock, sizes = threading.RLock(), []
    group = GroupCommit(db, lock, on_commit=sizes.append)
    results = queued_behind_held_lock(group, lock, [insert(v) for v in range(10)])
    assert results == [("ok", 1)] * 10
    assert sorted(sizes) == [1, 9]  # the leader's own, then everyone who queued meanwhile
    assert db.execute("SELECT count(*) FROM t").fetchone()[0] == 10


def test_one_writers_failure_is_its_own(db):
    lock = threading.RLock()
    group = GroupCommit(db, lock)

    def insert_then_fail(db):
        db.execute("INSERT INTO t (v) VALUES (100)")
        raise ValueError("this writer's bug")

    operations = [insert(1), insert_then_fail, insert(2), insert(1)]  # the last: a duplicate
    results = queued_behind_held_lock(group, lock, operations)
    assert [r[0] for r in results] == ["ok", "error", "ok", "error"]
    assert isinstance(results[1][1], ValueError)
    assert isinstance(results[3][1], sqlite3.IntegrityError)
    assert sorted(v for (v,) in db.execute("SELECT v FROM t")) == [1, 2]  # not 100


def test_a_failed_commit_fails_every_writer_of_the_batch(db, tmp_path):
    lock = threading.RLock()
    group = GroupCommit(db, lock)
    other = sqlite3.connect(str(tmp_path / "g.sqlite"), isolation_level=None)
    db.execute("PRAGMA busy_timeout = 0")
    other.execute("BEGIN EXCLUSIVE")  # another process holds the write lock: BEGIN fails
    try:
        results = queued_behind_held_lock(group, lock, [insert(v) for v in range(4)])
    finally:
        other.execute("ROLLBACK")
        other.close()
    assert all(kind == "error" and isinstance(exc, sqlite3.OperationalError)
               for kind, exc in results)
    assert db.execute("SELECT count(*) FROM t").fetchone()[0] == 0
    assert group.run(insert(7)) == 1  # the group works again afterwards


def test_concurrent_spool_puts_share_fsyncs_and_all_are_stored(tmp_path):
    counters = Counters()
    spool = Spool(str(tmp_path / "spool.sqlite"), conduits=["a"], counters=counters)
    try:
        with spool._lock:  # the first put leads and waits; 49 queue behind it
            threads = [threading.Thread(target=spool.put, args=(note(n), "final"))
                       for n in range(50)]
            for thread in threads:
                thread.start()
            wait_until(lambda: len(spool._group._queue) == 49)
        for thread in threads:
            thread.join(10)
        assert spool.pending_count("a") == 50
        assert counters.get("spool.put") == 50
        assert counters.get("spool.commits") == 2
        assert spool.last_capture("i-7") == "msg-7"
    finally:
        spool.close()
