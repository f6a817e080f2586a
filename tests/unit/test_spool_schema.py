"""The spool's format across versions: upgrade of files earlier releases wrote, tolerant body
decoding, quarantine of a corrupt file, refusal of a newer file.

tests/fixtures/spool_v0.sqlite was written by the spool of commit 8eca848 (layout version 0,
bodies without a version): records 2 (final, confirmed by `log` only) and 3 (periodic, pending
everywhere), record 1 delivered by both conduits, and a corrupt record 4 already in rejects.
"""
import datetime
import logging
import os
import shutil
import sqlite3

import msgpack
import pytest

from lifecycle_stats.counters import Counters
from lifecycle_stats.publishing import capture_rows, spool_schema
from lifecycle_stats.publishing.spool import Spool
from lifecycle_stats.records import Notification

FIXTURE = os.path.join(os.path.dirname(os.path.dirname(__file__)), "fixtures", "spool_v0.sqlite")
T0 = datetime.datetime(2026, 11, 21, 12, 0, tzinfo=datetime.timezone.utc)
ID = "00000000-0000-0000-0000-00000000000{}".format


def open_spool(path, counters=None):
    return Spool(str(path), conduits=["messagingv2", "log"], clock=lambda: T0,
                 counters=counters or Counters())


@pytest.fixture
def v0_copy(tmp_path):
    target = tmp_path / "spool.sqlite"
    shutil.copyfile(FIXTURE, target)
    return target


def test_a_spool_written_by_the_first_release_opens_and_keeps_everything(v0_copy):
    sp = open_spool(v0_copy)
    try:
        assert sp._db.execute("PRAGMA user_version").fetchone()[0] == spool_schema.SCHEMA_VERSION
        assert [(seq, n.message_id) for seq, n in sp.pending("messagingv2", 10)] == [
            (2, ID(2)), (3, ID(3))]
        assert [seq for seq, _ in sp.pending("log", 10)] == [3]
        assert sp.seen(ID(1))  # delivered before the upgrade: still recognised
        rejects = sp._db.execute("SELECT seq, message_id, origin FROM rejects").fetchall()
        assert rejects == [(4, "bad", "spool")]
        assert sp.confirm(2, "messagingv2") is True  # completes with the old `log` delivery
        assert sp.note_failure(3, "boom", "log") == (1, 86400.0)  # written a day before T0
    finally:
        sp.close()


def test_the_upgrade_is_done_once(v0_copy):
    open_spool(v0_copy).close()
    sp = open_spool(v0_copy)
    try:
        assert [seq for seq, _ in sp.pending("messagingv2", 10)] == [2, 3]
    finally:
        sp.close()


def test_new_bodies_carry_their_version_and_old_ones_still_decode(v0_copy):
    sp = open_spool(v0_copy)
    try:
        note = Notification(event_type="e", priority="INFO", publisher_id="p",
                            payload={"instance_id": "i"}, message_id="m5", timestamp="t")
        sp.put(note, "final")
        body = sp._db.execute("SELECT body FROM records WHERE message_id = 'm5'").fetchone()[0]
        old = sp._db.execute("SELECT body FROM records WHERE seq = 2").fetchone()[0]
    finally:
        sp.close()
    assert msgpack.unpackb(body)["v"] == spool_schema.BODY_VERSION
    assert "v" not in msgpack.unpackb(old)
    assert spool_schema.decode(old).message_id == ID(2)


def test_decoding_ignores_what_a_newer_body_adds():
    doc = {"v": 7, "event_type": "e", "priority": "INFO", "publisher_id": "p",
           "payload": {}, "message_id": "m", "timestamp": "t", "tier": "final",
           "created_at": 1.0, "route": "somewhere-new"}
    assert spool_schema.decode(msgpack.packb(doc)).message_id == "m"
    del doc["timestamp"]
    with pytest.raises(ValueError, match=r"body \(v7\) lacks timestamp"):
        spool_schema.decode(msgpack.packb(doc))


@pytest.mark.allow_error_logs
@pytest.mark.parametrize("damage", ["garbage", "truncated"])
def test_a_corrupt_file_is_quarantined_and_a_fresh_spool_started(v0_copy, caplog, damage):
    if damage == "garbage":
        v0_copy.write_bytes(b"this is not an sqlite database at all" * 200)
    else:
        data = v0_copy.read_bytes()
        v0_copy.write_bytes(data[:4096] + b"\xff" * 4096 + data[8192:])
    original = v0_copy.read_bytes()
    counters = Counters()
    sp = open_spool(v0_copy, counters)
    try:
        assert sp.depth() == 0 and sp.pending("log", 10) == []
        assert sp.put(Notification("e", "INFO", "p", {}, "fresh", "t"), "final")
    finally:
        sp.close()
    [moved] = [p for p in os.listdir(v0_copy.parent) if ".corrupt-" in p]
    assert moved == "spool.sqlite.corrupt-20261121T120000.000000Z"
    assert (v0_copy.parent / moved).read_bytes() == original  # kept for an operator
    assert counters.get("spool.quarantined") == 1
    [error] = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert "is corrupt" in error.getMessage() and moved in error.getMessage()
    assert error.exc_info is None  # a clear line, no traceback


def test_a_file_from_a_newer_agent_is_refused_untouched(v0_copy):
    db = sqlite3.connect(v0_copy)
    db.execute("PRAGMA user_version = 99")
    db.close()
    before = v0_copy.read_bytes()
    with pytest.raises(spool_schema.SpoolTooNew, match="version 99 is newer"):
        open_spool(v0_copy)
    assert v0_copy.read_bytes() == before
    assert not [p for p in os.listdir(v0_copy.parent) if ".corrupt-" in p]


# The layout of version 1 as that release created it (before `kind` became `tier`), written
# out here rather than taken from the code: the code only knows how to leave it.
V1_LAYOUT = """
CREATE TABLE records (seq INTEGER PRIMARY KEY AUTOINCREMENT, message_id TEXT NOT NULL UNIQUE,
    kind TEXT NOT NULL, created_at REAL NOT NULL, body BLOB NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0, last_error TEXT);
CREATE INDEX records_kind_seq ON records (kind, seq);
CREATE TABLE deliveries (seq INTEGER NOT NULL, conduit TEXT NOT NULL,
    PRIMARY KEY (seq, conduit)) WITHOUT ROWID;
CREATE TABLE delivered (message_id TEXT PRIMARY KEY, delivered_at REAL NOT NULL);
CREATE INDEX delivered_at ON delivered (delivered_at);
CREATE TABLE rejects (id INTEGER PRIMARY KEY AUTOINCREMENT, seq INTEGER, message_id TEXT,
    kind TEXT, created_at REAL, body BLOB, reason TEXT NOT NULL, rejected_at REAL NOT NULL,
    origin TEXT NOT NULL DEFAULT 'spool');
CREATE TABLE captures (instance_id TEXT PRIMARY KEY, message_id TEXT NOT NULL,
    captured_at REAL NOT NULL);
CREATE INDEX captures_at ON captures (captured_at);
PRAGMA user_version = 1;
"""
DAY_BEFORE = T0.timestamp() - 86400


def v1_body(message_id, kind):
    """A body as version 1 wrote it: `v: 1` and the record's tier under `kind`."""
    return msgpack.packb({"event_type": "compute.instance.exists", "priority": "INFO",
                          "publisher_id": "p", "payload": {"instance_id": "i"},
                          "message_id": message_id, "timestamp": "t", "v": 1, "kind": kind,
                          "created_at": DAY_BEFORE})


@pytest.fixture
def v1_spool(tmp_path):
    """final 1 (confirmed by `log`), periodic 2, a capture 3 still waiting for its build,
    final 4 after it, and a reject of a final refused by messagingv2."""
    path = tmp_path / "spool.sqlite"
    db = sqlite3.connect(path)
    db.executescript(V1_LAYOUT)
    rows = [(1, "m1", "final"), (2, "m2", "periodic"), (4, "m4", "final")]
    db.executemany("INSERT INTO records (seq, message_id, kind, created_at, body) "
                   "VALUES (?, ?, ?, ?, ?)",
                   [(seq, mid, kind, DAY_BEFORE, v1_body(mid, kind)) for seq, mid, kind in rows])
    db.execute("INSERT INTO records (seq, message_id, kind, created_at, body) "
               "VALUES (3, 'm3', 'capture', ?, x'c0')", (DAY_BEFORE,))
    db.execute("INSERT INTO deliveries VALUES (1, 'log')")
    db.execute("INSERT INTO rejects (seq, message_id, kind, created_at, body, reason, "
               "rejected_at, origin) VALUES (0, 'm0', 'final', ?, x'c0', 'refused', ?, "
               "'messagingv2')", (DAY_BEFORE, DAY_BEFORE))
    db.commit()
    db.close()
    return path


def columns(db, table):
    return [row[1] for row in db.execute(f"PRAGMA table_info({table})")]


def test_a_version_1_spool_is_upgraded_to_tiers_keeping_every_record(v1_spool):
    sp = open_spool(v1_spool)
    try:
        db = sp._db
        assert db.execute("PRAGMA user_version").fetchone()[0] == spool_schema.SCHEMA_VERSION
        assert "tier" in columns(db, "records") and "kind" not in columns(db, "records")
        assert "tier" in columns(db, "rejects") and "kind" not in columns(db, "rejects")
        indexes = {name for (name,) in db.execute(
            "SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = 'records'")}
        assert "records_tier_seq" in indexes and "records_kind_seq" not in indexes
        assert db.execute("SELECT seq, tier FROM records ORDER BY seq").fetchall() == [
            (1, "final"), (2, "periodic"), (3, "capture"), (4, "final")]
        assert db.execute("SELECT message_id, tier, origin FROM rejects").fetchall() == [
            ("m0", "final", "messagingv2")]
        # the capture still holds back what came after it; its old bodies decode
        assert [(seq, n.message_id) for seq, n in sp.pending("messagingv2", 10)] == [
            (1, "m1"), (2, "m2")]
        assert [seq for seq, _ in sp.pending("log", 10)] == [2]
        assert [w.message_id for w in capture_rows.waiting(sp, 10)] == ["m3"]
        assert sp.confirm(1, "messagingv2") is True  # completes with the old `log` delivery
    finally:
        sp.close()


def test_the_status_command_reads_tiers_before_and_after_the_upgrade(v1_spool):
    expected = {"final": 2, "periodic": 1, "capture": 1}
    assert spool_schema.read_only_stats(str(v1_spool), T0.timestamp())["by_tier"] == expected
    open_spool(v1_spool).close()
    assert spool_schema.read_only_stats(str(v1_spool), T0.timestamp())["by_tier"] == expected


def test_new_bodies_say_tier_and_old_bodies_saying_kind_still_decode(tmp_path):
    sp = open_spool(tmp_path / "spool.sqlite")
    try:
        sp.put(Notification("e", "INFO", "p", {}, "m1", "t"), "periodic")
        body = msgpack.unpackb(sp._db.execute("SELECT body FROM records").fetchone()[0])
    finally:
        sp.close()
    assert (body["v"], body["tier"]) == (2, "periodic") and "kind" not in body
    old = spool_schema.decode(v1_body("m9", "final"))
    assert (old.message_id, old.event_type) == ("m9", "compute.instance.exists")


def test_a_spool_with_tiers_is_a_layout_an_agent_of_version_1_refuses(tmp_path):
    # An agent of layout 1 refuses any file whose user_version is above 1 (SpoolTooNew,
    # the file untouched): the rename must therefore come with a version above 1.
    open_spool(tmp_path / "spool.sqlite").close()
    db = sqlite3.connect(tmp_path / "spool.sqlite")
    try:
        assert db.execute("PRAGMA user_version").fetchone()[0] > 1
        assert "kind" not in columns(db, "records")
    finally:
        db.close()


def test_the_spool_keeps_a_small_page_cache(tmp_path):
    """Regression (agent memory): SQLite's default 2000 KiB cache filled with a burst's
    bodies and stayed resident; the OS's page cache holds the file anyway."""
    spool = Spool(str(tmp_path / "spool.sqlite"), conduits=["bus"])
    try:
        size = spool.read(lambda db: db.execute("PRAGMA cache_size").fetchone()[0])
        assert size == -spool_schema.CACHE_KIB == -512
        # the senders' reads (pending) run on the lookups' connection
        assert spool._lookups.execute("PRAGMA cache_size").fetchone()[0] == -512
    finally:
        spool.close()


def test_a_version_2_spool_gains_per_conduit_failures_keeping_every_record(tmp_path):
    path = tmp_path / "spool.sqlite"
    sp = open_spool(path)
    try:
        sp.put(Notification("e", "INFO", "p", {}, "m1", "t"), "final")
    finally:
        sp.close()
    db = sqlite3.connect(path)  # back to layout 2, as an agent before it left the file
    db.executescript("DROP TABLE failures; PRAGMA user_version = 2;")
    db.close()
    sp = open_spool(path)
    try:
        assert sp._db.execute("PRAGMA user_version").fetchone()[0] == 3
        assert [n.message_id for _, n in sp.pending("messagingv2", 10)] == ["m1"]
        assert sp.note_failure(1, "boom", "messagingv2")[0] == 1
        assert sp.note_failure(1, "boom", "log")[0] == 1
        assert sp.note_failure(1, "boom", "messagingv2")[0] == 2
        assert sp._db.execute("SELECT attempts FROM records").fetchone() == (3,)
        assert sp.confirm(1, "messagingv2") is False and sp.confirm(1, "log") is True
        assert sp._db.execute("SELECT count(*) FROM failures").fetchone() == (0,)
    finally:
        sp.close()
