"""The spool's format across versions: upgrade of a file today's release wrote, tolerant body
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
from lifecycle_stats.publishing import spool_schema
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
        assert sp.note_failure(3, "boom") == (1, 86400.0)  # written a day before T0
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
           "payload": {}, "message_id": "m", "timestamp": "t", "kind": "final",
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
