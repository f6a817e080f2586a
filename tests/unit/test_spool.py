import datetime
import os
import signal
import stat
import subprocess
import sys
import textwrap
import threading

import msgpack
import pytest

from lifecycle_stats.emitters.memory import MemoryConduit
from lifecycle_stats.publishing import spool as spool_mod
from lifecycle_stats.counters import Counters
from lifecycle_stats.records import Notification
from lifecycle_stats.publishing.sender import Sender
from lifecycle_stats.publishing.spool import Spool
from tests.support.fakes import Clock

T0 = datetime.datetime(2026, 11, 21, 12, 0, 0, tzinfo=datetime.timezone.utc)
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def note(n, **payload):
    return Notification(
        event_type="compute.instance.delete.samples", priority="INFO",
        publisher_id="lifecycle-stats.h1", payload={"n": n, **payload},
        message_id=f"msg-{n}", timestamp="2026-11-21T12:00:00.000000+00:00")


@pytest.fixture
def clock():
    return Clock(T0)


@pytest.fixture
def counters():
    return Counters()


@pytest.fixture
def make_spool(tmp_path, clock, counters):
    opened = []

    def make(conduits=("a",), **kw):
        kw.setdefault("clock", clock)
        kw.setdefault("counters", counters)
        sp = Spool(str(tmp_path / "state" / "spool.sqlite"), conduits=list(conduits), **kw)
        opened.append(sp)
        return sp

    yield make
    for sp in opened:
        sp.close()


def ids(items):
    return [n.message_id for _, n in items]


def test_put_pending_confirm_in_order(make_spool):
    sp = make_spool()
    for n in (3, 1, 2):
        assert sp.put(note(n), "final")
    items = sp.pending("a", 10)
    assert ids(items) == ["msg-3", "msg-1", "msg-2"]
    assert items[0][1] == note(3)
    assert sp.confirm(items[0][0], "a") is True
    assert ids(sp.pending("a", 10)) == ["msg-1", "msg-2"]
    assert ids(sp.pending("a", 1)) == ["msg-1"]
    assert sp.depth() == 2


def test_roundtrip_keeps_nested_payload(make_spool):
    sp = make_spool()
    sent = note(1, samples=[{"name": "cpu", "volume": 5, "resource_metadata": {"a": None}}],
                ratio=0.25)
    sp.put(sent, "final")
    [(_, got)] = sp.pending("a", 1)
    assert got == sent


def test_duplicates_are_ignored(make_spool, counters):
    sp = make_spool()
    assert sp.put(note(1), "final") is True
    assert sp.put(note(1, other=True), "periodic") is False
    assert sp.depth() == 1
    assert sp.pending("a", 10)[0][1].payload == {"n": 1}
    assert counters.get("spool.duplicate") == 1


def test_bad_tier_and_conduit_rejected(make_spool):
    sp = make_spool()
    with pytest.raises(ValueError, match="tier"):
        sp.put(note(1), "exists")
    sp.put(note(1), "final")
    with pytest.raises(ValueError, match="unknown conduit"):
        sp.confirm(1, "nope")


def test_constructor_validates(tmp_path):
    with pytest.raises(ValueError, match="conduits"):
        Spool(str(tmp_path / "s"), conduits=[])
    with pytest.raises(ValueError, match="conduits"):
        Spool(str(tmp_path / "s"), conduits=["a", "a"])
    with pytest.raises(ValueError, match="max_records"):
        Spool(str(tmp_path / "s"), conduits=["a"], max_records=0)


def test_record_stays_until_every_conduit_confirmed(make_spool):
    sp = make_spool(conduits=("bus", "file"))
    sp.put(note(1), "final")
    sp.put(note(2), "final")
    [(seq1, _), (seq2, _)] = sp.pending("file", 10)
    assert sp.confirm(seq1, "file") is False
    assert sp.confirm(seq1, "file") is False  # idempotent
    assert ids(sp.pending("file", 10)) == ["msg-2"]
    assert ids(sp.pending("bus", 10)) == ["msg-1", "msg-2"]
    assert sp.depth() == 2
    assert sp.confirm(seq1, "bus") is True
    assert sp.depth() == 1
    assert sp.confirm(seq1, "bus") is False  # already gone


def test_failing_conduit_does_not_stop_the_other(make_spool, counters):
    sp = make_spool(conduits=("bus", "file"))
    bus, file_ = MemoryConduit(), MemoryConduit()
    bus.failures_left = 1
    waits, in_backoff, bus_back = [], threading.Event(), threading.Event()

    def backoff(seconds):  # the bus stays down until the test says otherwise
        waits.append(seconds)
        in_backoff.set()
        bus_back.wait(10)

    senders = [Sender(sp, "bus", bus, counters=counters, sleep=backoff),
               Sender(sp, "file", file_, counters=counters)]
    for n in range(5):
        sp.put(note(n), "final")
    for s in senders:
        s.start()
    try:
        assert senders[1].drain(timeout=10)
        assert [n.message_id for n in file_.sent] == [f"msg-{n}" for n in range(5)]
        assert bus.sent == []
        assert sp.depth() == 5  # waiting for the bus
        assert sp.pending_count("bus") == 5 and sp.pending_count("file") == 0
        assert in_backoff.wait(10)
        assert waits == [0.5]
        bus_back.set()
        assert senders[0].drain(timeout=10)
    finally:
        for s in senders:
            assert s.stop(timeout=10)
    assert [n.message_id for n in bus.sent] == [f"msg-{n}" for n in range(5)]
    assert sp.depth() == 0
    assert counters.get("sender.bus.retries") == 1
    assert counters.get("sender.file.sent") == 5


def test_restart_sees_unconfirmed_records(make_spool):
    sp = make_spool(conduits=("bus", "file"))
    for n in range(3):
        sp.put(note(n), "final")
    seq0 = sp.pending("bus", 1)[0][0]
    sp.confirm(seq0, "bus")
    sp.close()
    again = make_spool(conduits=("bus", "file"))
    assert ids(again.pending("bus", 10)) == ["msg-1", "msg-2"]
    assert ids(again.pending("file", 10)) == ["msg-0", "msg-1", "msg-2"]


def test_restart_without_a_conduit_retires_what_the_rest_confirmed(make_spool):
    sp = make_spool(conduits=("bus", "file"))
    sp.put(note(1), "final")
    sp.confirm(sp.pending("bus", 1)[0][0], "bus")
    sp.close()
    again = make_spool(conduits=("bus",))
    assert again.depth() == 0
    assert again.seen("msg-1")


def test_files_are_private(make_spool, tmp_path):
    old = os.umask(0)
    try:
        sp = make_spool()
        sp.put(note(1), "final")
    finally:
        os.umask(old)
    state = tmp_path / "state"
    assert stat.S_IMODE(state.stat().st_mode) == 0o700
    files = sorted(p.name for p in state.iterdir())
    assert files == ["spool.sqlite", "spool.sqlite-shm", "spool.sqlite-wal"]
    for name in files:
        assert stat.S_IMODE((state / name).stat().st_mode) == 0o600, name


def test_existing_loose_file_is_tightened(tmp_path):
    path = tmp_path / "spool.sqlite"
    path.touch()
    os.chmod(path, 0o644)
    Spool(str(path), conduits=["a"]).close()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_wal_and_full_sync(make_spool):
    sp = make_spool()
    assert sp._db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert sp._db.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL


def test_periodic_shed_oldest_first_finals_never(make_spool, counters):
    sp = make_spool(max_records=3)
    sp.put(note(1), "periodic")
    sp.put(note(2), "final")
    sp.put(note(3), "periodic")
    assert sp.put(note(4), "periodic") is True  # sheds msg-1
    assert ids(sp.pending("a", 10)) == ["msg-2", "msg-3", "msg-4"]
    assert sp.put(note(5), "final") is True  # sheds msg-3
    assert ids(sp.pending("a", 10)) == ["msg-2", "msg-4", "msg-5"]
    assert counters.get("spool.shed") == 2
    assert sp.put(note(6), "final") is True  # sheds msg-4, the last periodic
    assert sp.put(note(7), "final") is True  # over the bound: nothing left to shed
    assert counters.get("spool.over_bound") == 1
    assert sp.put(note(8), "periodic") is False  # refused: the bound is full of finals
    assert counters.get("spool.shed") == 4
    assert ids(sp.pending("a", 10)) == ["msg-2", "msg-5", "msg-6", "msg-7"]
    assert not sp.seen("msg-8")


@pytest.mark.allow_error_logs
def test_corrupt_body_goes_to_rejects(make_spool, counters, caplog):
    sp = make_spool()
    sp.put(note(1), "final")
    sp.put(note(2), "final")
    sp.put(note(3), "final")
    sp._db.execute("UPDATE records SET body = ? WHERE message_id = 'msg-1'", (b"\xc1garbage",))
    sp._db.execute("UPDATE records SET body = ? WHERE message_id = 'msg-2'",
                   (msgpack.packb({"event_type": "x"}),))
    assert ids(sp.pending("a", 10)) == ["msg-3"]
    assert sp.depth() == 1
    rejects = sp._db.execute("SELECT message_id, reason FROM rejects ORDER BY seq").fetchall()
    assert [r[0] for r in rejects] == ["msg-1", "msg-2"]
    assert "lacks" in rejects[1][1]
    assert counters.get("spool.corrupt") == 2
    assert "moved to the rejects table" in caplog.text


@pytest.mark.allow_error_logs
def test_a_corrupt_record_read_by_two_conduits_is_rejected_once(make_spool, counters):
    sp = make_spool(conduits=("a", "b"))
    sp.put(note(1), "final")
    sp.put(note(2), "final")
    sp._db.execute("UPDATE records SET body = ? WHERE message_id = 'msg-1'", (b"\xc1garbage",))
    stale = sp._lookups.execute("SELECT seq, message_id FROM records WHERE message_id = "
                                "'msg-1'").fetchone()  # what b's sender read before a's reject
    assert ids(sp.pending("a", 10)) == ["msg-2"]
    with sp._tx() as db:  # b's sender rejects what it read before
        sp._reject(db, *stale, "undecodable")
    assert ids(sp.pending("b", 10)) == ["msg-2"]
    assert sp._db.execute("SELECT count(*) FROM rejects").fetchone()[0] == 1
    assert counters.get("spool.corrupt") == 1


def test_seen_after_delivery_and_retention(make_spool, clock):
    sp = make_spool(retention_seconds=3600)
    assert not sp.seen("msg-1")
    sp.put(note(1), "final")
    assert sp.seen("msg-1")
    sp.confirm(sp.pending("a", 1)[0][0], "a")
    assert sp.depth() == 0
    assert sp.seen("msg-1")
    assert sp.put(note(1), "final") is False  # a redelivered trigger: already published
    clock.advance(3601)
    assert not sp.seen("msg-1")
    assert sp.put(note(1), "final") is True


def test_delivered_rows_are_bounded(make_spool):
    sp = make_spool(retention_rows=2)
    for n in range(4):
        sp.put(note(n), "final")
        sp.confirm(sp.pending("a", 1)[0][0], "a")
    sp.put(note(99), "final")  # prunes
    assert [sp.seen(f"msg-{n}") for n in range(4)] == [False, False, True, True]


def test_depth_and_oldest_age(make_spool, clock):
    sp = make_spool()
    assert sp.depth() == 0 and sp.oldest_age_seconds() is None
    sp.put(note(1), "final")
    clock.advance(5)
    sp.put(note(2), "periodic")
    clock.advance(2.5)
    assert sp.depth() == 2
    assert sp.oldest_age_seconds() == pytest.approx(7.5)


def test_read_only_stats_while_open(make_spool, clock):
    sp = make_spool(conduits=("bus", "file"))
    sp.put(note(1), "final")
    sp.put(note(2), "periodic")
    sp.confirm(1, "file")
    stats = spool_mod.read_only_stats(sp.path, (clock.now.timestamp() + 4))
    assert stats == {"depth": 2, "oldest_age_seconds": 4.0,
                     "by_tier": {"final": 1, "periodic": 1},
                     "confirmed_by_conduit": {"file": 1}, "rejects": 0}


CHILD = textwrap.dedent("""
    import os, signal, sys
    from lifecycle_stats.records import Notification
    from lifecycle_stats.publishing.spool import Spool
    sp = Spool(sys.argv[1], conduits=["bus", "file"])
    for n in range(50):
        sp.put(Notification("compute.instance.delete.samples", "INFO", "p", {"n": n},
                            f"msg-{n}", "t"), "final")
    for seq, _ in sp.pending("file", 20):
        sp.confirm(seq, "file")
    os.kill(os.getpid(), signal.SIGKILL)
""")


def test_spool_survives_kill_9(tmp_path):
    path = str(tmp_path / "spool.sqlite")
    child = subprocess.run([sys.executable, "-c", CHILD, path], cwd=REPO, timeout=60,
                           capture_output=True, text=True)
    assert child.returncode == -signal.SIGKILL, child.stderr
    sp = Spool(path, conduits=["bus", "file"])
    try:
        assert sp.depth() == 50
        assert sp.pending_count("file") == 30
        emitters = {"bus": MemoryConduit(), "file": MemoryConduit()}
        senders = [Sender(sp, name, em) for name, em in emitters.items()]
        for s in senders:
            s.start()
        try:
            assert all(s.drain(timeout=20) for s in senders)
        finally:
            assert all(s.stop(timeout=10) for s in senders)
        assert [n.payload["n"] for n in emitters["bus"].sent] == list(range(50))
        assert [n.payload["n"] for n in emitters["file"].sent] == list(range(20, 50))
        assert sp.depth() == 0
    finally:
        sp.close()


def read_during_an_open_write(sp, read):
    """read() on another thread while a write transaction (msg-9's insert) is open; what it
    returned, once it returned within 2 s (the transaction still open)."""
    inside, release = threading.Event(), threading.Event()

    def slow_write(db):
        sp.insert(db, "msg-9", "final", spool_mod.encode(note(9), "final", 0.0), 0.0)
        inside.set()
        release.wait(10)

    writer = threading.Thread(target=sp.write, args=(slow_write,))
    writer.start()
    try:
        assert inside.wait(5)
        got = []
        reader = threading.Thread(target=lambda: got.append(read()))
        reader.start()
        reader.join(2)
        assert not reader.is_alive(), "the read waited for the open transaction"
        return got[0]
    finally:
        release.set()
        writer.join(5)


def test_lookups_on_nova_s_wait_do_not_wait_for_a_commit_in_progress(make_spool):
    """seen() and last_capture() read the last commit on a connection of their own: a
    writer's open transaction (which holds the writers' lock through its fsync) never holds
    them, and what it has not committed is not seen yet."""
    sp = make_spool()
    assert sp.put_capture("cap-1", "inst-1", b"capture one")
    answers = read_during_an_open_write(
        sp, lambda: [sp.seen("cap-1"), sp.seen("msg-9"), sp.last_capture("inst-1")])
    assert answers == [True, False, "cap-1"]
    assert sp.seen("msg-9")


def test_a_sender_s_read_does_not_wait_for_a_commit_in_progress(make_spool):
    """pending() reads the last commit on the lookups' connection: a sender never waits
    behind a writer's open transaction (a capture's put, a swap), nor makes one wait."""
    sp = make_spool()
    sp.put(note(1), "final")
    assert ids(read_during_an_open_write(sp, lambda: sp.pending("a", 10))) == ["msg-1"]
    assert ids(sp.pending("a", 10)) == ["msg-1", "msg-9"]


def test_a_count_for_status_or_metrics_never_holds_up_a_capture(make_spool):
    """The status file's and a scrape's counts (55 ms at 100,000 records) ran on the writers'
    connection under its lock: a capture's commit, and so nova's delete, waited for each
    (found by review). Here a count is held inside its query while a capture is spooled."""
    spool = make_spool()
    inside, release = threading.Event(), threading.Event()

    class HeldCounts:
        def __init__(self, db):
            self._db = db

        def execute(self, sql, *args):
            if sql.startswith("SELECT count(*) FROM records"):
                inside.set()
                release.wait(10)
            return self._db.execute(sql, *args)

        def __getattr__(self, name):
            return getattr(self._db, name)

    for name in ("_db", "_counts"):  # whichever connection the count uses
        if hasattr(spool, name):
            setattr(spool, name, HeldCounts(getattr(spool, name)))
    counting = threading.Thread(target=spool.depth)
    counting.start()
    try:
        assert inside.wait(5)
        spooled = threading.Thread(target=spool.put_capture, args=("m-1", "i-1", b"body"))
        spooled.start()
        spooled.join(2)
        assert not spooled.is_alive(), "the capture waited for the count"
    finally:
        release.set()
        counting.join(5)
        spooled.join(5)
