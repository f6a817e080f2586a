"""Capture first, publish after: a deletion's capture (the read plus one durable append of what
was read) is all nova waits for; the delete.samples is built from it afterwards
(capture/publication.py), also after a crash in between, and senders keep capture order."""
import dataclasses

import pytest

from lifecycle_stats import counters
from lifecycle_stats.capture import capture_record, flush
from lifecycle_stats.capture.last_readings import LastReadings
from lifecycle_stats.capture.observations import Observations
from lifecycle_stats.capture.publication import Publication
from lifecycle_stats.capture.settings import Settings
from lifecycle_stats.capture.stop_gate import StopGate
from lifecycle_stats.interfaces import NoUsage, Outcome
from lifecycle_stats.publishing import capture_rows, payloads, spool
from lifecycle_stats.records import StopAnnouncement, Notification
from tests.support.fakes import NOW, UUID, FakeInspector, FakeRegistry, make_info, make_reading

SETTINGS = Settings("cmp1", "lifecycle-stats.cmp1")


def trigger(instance_id=UUID):
    return StopAnnouncement(instance_id=instance_id, event_type="compute.instance.delete.start",
                         host="cmp1", received_at=NOW, identity={"tenant_id": "p1"})


@pytest.fixture
def box(tmp_path):
    class Box:
        counters = counters.Counters()
        spool = None

        def make(self, inspector, registry):
            self.gate = StopGate()
            return flush.Flusher(
                reader=inspector, registry=registry, gate=self.gate, spool=self.spool,
                observations=Observations(LastReadings(clock=lambda: NOW), NoUsage()),
                settings=SETTINGS, counters=self.counters, clock=lambda: NOW)

    b = Box()
    b.spool = spool.Spool(str(tmp_path / "spool.sqlite"), conduits=["test"], counters=b.counters)
    yield b
    b.spool.close()


def capture_only(box, inspector=None, registry=None, instance_id=UUID):
    """What nova waits for: the capture alone, no build."""
    flusher = box.make(inspector or FakeInspector({instance_id: make_reading()}),
                       registry or FakeRegistry({instance_id: make_info()}))
    with box.gate.working("flushing"):
        return flusher.capture(trigger(instance_id=instance_id)).outcome


def tiers(sp):
    return [k for (k,) in sp._db.execute("SELECT tier FROM records ORDER BY seq")]


def exists(n):
    return Notification("compute.instance.exists", "INFO", "lifecycle-stats.cmp1",
                        {"instance_id": UUID, "n": n}, f"exists-{n}",
                        "2026-11-21T12:00:00.000000+00:00")


def test_the_capture_is_durable_before_anything_is_built(box, tmp_path):
    assert capture_only(box) is Outcome.FINAL
    assert tiers(box.spool) == ["capture"]
    assert box.spool.pending("test", 10) == []  # nothing for a conduit yet
    assert box.spool.seen(payloads.delete_message_id(trigger()))  # a redelivery is a duplicate
    assert capture_only(box) is Outcome.DUPLICATE
    box.spool.close()  # the agent dies here (between capture and publication)

    reopened = spool.Spool(box.spool.path, conduits=["test"])  # the next start
    try:
        assert Publication(spool=reopened, settings=SETTINGS,
                           counters=box.counters).build_waiting() == 1
        [(_, note)] = reopened.pending("test", 10)
        payloads.validate(note)
        assert note.message_id == payloads.delete_message_id(trigger())
        assert note.payload["capture"]["kind"] == "final"  # read live: stays final
        assert len(note.payload["samples"]) > 0 and tiers(reopened) == ["final"]
        assert reopened.last_capture(UUID) == note.message_id
    finally:
        reopened.close()
        box.spool = spool.Spool(str(tmp_path / "spool.sqlite"), conduits=["test"])


def test_a_build_from_the_record_equals_the_build_at_the_read(box):
    reading, info = make_reading(), make_info()
    assert capture_only(box) is Outcome.FINAL
    [waiting] = capture_rows.waiting(box.spool, 10)
    capture = capture_record.decode(waiting.body)
    # what was read, as read (the fake's single read), and who nova said it was
    assert dataclasses.replace(capture.reading, path=reading.path) == reading
    assert capture.info == info and capture.trigger == trigger()
    direct = payloads.delete_samples(
        kind="final", trigger=trigger(), info=info, reading=capture.reading, host="cmp1",
        publisher_id="lifecycle-stats.cmp1", now=capture.now, figures=capture.figures)
    Publication(spool=box.spool, settings=SETTINGS, counters=box.counters).build_waiting()
    [(_, built)] = box.spool.pending("test", 10)
    assert built == direct


def test_senders_keep_capture_order_while_a_capture_waits_for_its_build(box):
    assert capture_only(box) is Outcome.FINAL
    box.spool.put(exists(1), "final")  # the deletion's final exists, spooled after it
    assert tiers(box.spool) == ["capture", "final"]
    assert box.spool.pending("test", 10) == []  # the exists waits behind the capture
    assert box.spool.pending_count("test") == 2  # a drain waits for the build too
    Publication(spool=box.spool, settings=SETTINGS, counters=box.counters).build_waiting()
    assert [n.event_type for _, n in box.spool.pending("test", 10)] == [
        "compute.instance.delete.samples", "compute.instance.exists"]


@pytest.mark.allow_error_logs
def test_an_unreadable_capture_moves_to_rejects_and_the_others_are_built(box):
    other = "0c6f1a43-34d1-4c8f-a5a7-3c36ad5b1a11"
    capture_only(box)
    capture_only(box, instance_id=other)
    box.spool._db.execute("UPDATE records SET body = x'c1' WHERE seq = 1")  # torn on disk
    assert Publication(spool=box.spool, settings=SETTINGS,
                       counters=box.counters).build_waiting() == 1
    [(_, note)] = box.spool.pending("test", 10)
    assert note.payload["instance_id"] == other
    [(origin, body)] = box.spool._db.execute("SELECT origin, body FROM rejects").fetchall()
    assert origin == "spool" and body == b"\xc1"
    assert box.counters.get("spool.corrupt") == 1


def test_a_sender_publishes_a_capture_before_its_swap_in_capture_order(box):
    publication = Publication(spool=box.spool, settings=SETTINGS, counters=box.counters)
    assert capture_only(box) is Outcome.FINAL
    box.spool.put(exists(1), "final")  # spooled behind the capture
    pending = box.spool.pending("test", 10, publication.build)
    assert [n.event_type for _, n in pending] == [
        "compute.instance.delete.samples", "compute.instance.exists"]
    assert tiers(box.spool) == ["capture", "final"]  # nothing was swapped to send it
    assert pending[0][1].message_id == payloads.delete_message_id(trigger())
    payloads.validate(pending[0][1])
    # built once, and the swap writes exactly what was sent
    publication.build_waiting()
    [(_, swapped), _] = box.spool.pending("test", 10)
    assert swapped == pending[0][1]
    assert box.counters.get("publication.built") == 1


def test_a_delivered_capture_leaves_the_spool_only_after_its_deletion_is_accounted(box):
    accounted = []
    publication = Publication(spool=box.spool, settings=SETTINGS, counters=box.counters,
                              on_built=lambda capture: accounted.append(capture.message_id))
    assert capture_only(box) is Outcome.FINAL
    [(seq, _)] = box.spool.pending("test", 10, publication.build)
    assert box.spool.confirm(seq, "test") is False  # delivered, but not accounted yet
    assert tiers(box.spool) == ["capture"] and box.spool.pending_count("test") == 0
    box.spool.close()  # the agent dies before the accounting

    reopened = spool.Spool(box.spool.path, conduits=["test"])  # the next start
    try:
        assert tiers(reopened) == ["capture"]  # not retired at start either
        assert reopened.pending("test", 10, publication.build) == []  # not sent again
        again = Publication(spool=reopened, settings=SETTINGS, counters=box.counters,
                            on_built=lambda capture: accounted.append(capture.message_id))
        assert again.build_waiting() == 1
        assert accounted == [payloads.delete_message_id(trigger())]
        assert tiers(reopened) == [] and reopened.seen(accounted[0])  # retired, remembered
    finally:
        reopened.close()
        box.spool = spool.Spool(box.spool.path, conduits=["test"])


@pytest.mark.allow_error_logs
def test_senders_wait_at_an_unreadable_capture_until_it_moves_to_rejects(box):
    publication = Publication(spool=box.spool, settings=SETTINGS, counters=box.counters)
    other = "0c6f1a43-34d1-4c8f-a5a7-3c36ad5b1a11"
    capture_only(box)
    capture_only(box, instance_id=other)
    box.spool._db.execute("UPDATE records SET body = x'c1' WHERE seq = 1")  # torn on disk
    assert box.spool.pending("test", 10, publication.build) == []  # order: nothing passes it
    publication.build_waiting()
    [(_, note)] = box.spool.pending("test", 10, publication.build)
    assert note.payload["instance_id"] == other


def test_two_senders_deliver_a_capture_built_once_with_no_publication_thread(box, tmp_path):
    from lifecycle_stats.emitters.memory import MemoryConduit
    from lifecycle_stats.publishing.sender import Sender

    box.spool.close()
    box.spool = spool.Spool(str(tmp_path / "two.sqlite"), conduits=["a", "b"])
    publication = Publication(spool=box.spool, settings=SETTINGS, counters=box.counters)
    assert capture_only(box) is Outcome.FINAL
    conduits = {"a": MemoryConduit(), "b": MemoryConduit()}
    senders = [Sender(box.spool, name, conduit, build=publication.build, poll_interval=0.05)
               for name, conduit in conduits.items()]
    try:
        for s in senders:
            s.start()
        assert all(s.drain(10) for s in senders)  # no publication thread is running
        for conduit in conduits.values():
            [sent] = conduit.sent
            assert sent.message_id == payloads.delete_message_id(trigger())
        assert box.counters.get("publication.built") == 1
        assert tiers(box.spool) == ["capture"]  # delivered everywhere, not accounted yet
        publication.build_waiting()
        assert tiers(box.spool) == []
    finally:
        for s in senders:
            s.stop(5)


def test_a_capture_asked_for_after_its_swap_is_built_but_not_remembered():
    """A sender reads a capture row, the publication thread builds, accounts and swaps it,
    then the sender asks for its build: built again (harmless, same bytes), and nothing is
    left in the memo (before: an entry no one would ever forget, one per such race)."""
    from lifecycle_stats.capture.publication import _Memo
    from lifecycle_stats.publishing.capture_rows import Waiting

    builds = []
    memo = _Memo(lambda waiting: builds.append(waiting.seq) or ("built", waiting.seq))
    waiting = Waiting(7, "m-7", b"body")
    assert memo.get(waiting) == ("built", 7)
    memo.forget([7], swapped=True)
    assert memo.get(waiting) == ("built", 7)
    assert builds == [7, 7] and len(memo) == 0


@pytest.mark.allow_error_logs
def test_a_build_that_raises_holds_back_only_what_comes_after_the_capture(box):
    """A bug in a build must not stall the records spooled before the capture (they were
    sendable before it was) nor lose it: the list ends at it, as for one not built yet."""
    box.spool.put(exists(1), "periodic")
    capture_only(box)
    box.spool.put(exists(2), "periodic")

    def broken(_waiting):
        raise RuntimeError("a bug in the build")

    [(_, note)] = box.spool.pending("test", 10, broken)
    assert note.message_id == "exists-1"
    assert tiers(box.spool) == ["periodic", "capture", "periodic"]  # nothing lost


def test_the_swap_encodes_only_what_a_conduit_still_has_to_send(box, tmp_path, monkeypatch):
    """A capture every conduit delivered leaves at its swap without its notification being
    encoded and written (it would be deleted in the same transaction); one a conduit still
    owes is swapped for the notification that conduit then sends."""
    box.spool.close()
    box.spool = spool.Spool(str(tmp_path / "two.sqlite"), conduits=["a", "b"])
    encoded = []
    real_encode = capture_rows.spool_schema.encode
    monkeypatch.setattr(capture_rows.spool_schema, "encode",
                        lambda *args: encoded.append(args[0].message_id) or real_encode(*args))
    publication = Publication(spool=box.spool, settings=SETTINGS, counters=box.counters)
    other = "0c6f1a43-34d1-4c8f-a5a7-3c36ad5b1a11"
    capture_only(box)
    capture_only(box, instance_id=other)
    first, second = box.spool.pending("a", 10, publication.build)
    assert box.spool.pending("b", 10, publication.build)[0] == first
    for conduit in ("a", "b"):
        box.spool.confirm(first[0], conduit)  # the first delivered everywhere
    box.spool.confirm(second[0], "a")  # the second still owed to b
    assert publication.build_waiting() == 2
    assert encoded == [second[1].message_id]
    assert box.spool.seen(first[1].message_id) and tiers(box.spool) == ["final"]
    assert box.spool.pending("a", 10) == [] and box.spool.pending("b", 10) == [second]


def test_captures_are_built_and_swapped_16_at_a_time(box):
    """Regression (agent memory): a burst's captures were built 100 at a time and held until
    their swap (~60 KiB of Python objects each), and what they held stayed resident."""
    import uuid

    for n in range(40):
        assert capture_only(box, instance_id=str(uuid.UUID(int=n + 1))) is Outcome.FINAL
    held = []
    publication = Publication(spool=box.spool, settings=SETTINGS, counters=box.counters,
                              on_published=lambda: held.append(len(publication._memo)))
    assert publication.build_waiting() == 40
    assert box.counters.get("publication.batches") == 3  # 16 + 16 + 8, one swap each
    assert held == [0, 0, 0]  # each batch forgotten once swapped
    assert tiers(box.spool) == ["final"] * 40


@pytest.mark.allow_error_logs
def test_a_capture_flagged_at_its_build_still_has_its_deletion_accounted(box):
    """Read live, but its delete.samples breaks the schema (here nova's metadata: a negative
    vCPU count): published flagged, and the ledger still hears of the delete (before: never,
    so the instance never ended and its final exists never went out)."""
    bad = make_info(flavor=dataclasses.replace(make_info().flavor, vcpus=-1))
    assert capture_only(box, registry=FakeRegistry({UUID: bad})) is Outcome.FINAL
    accounted = []
    Publication(spool=box.spool, settings=SETTINGS, counters=box.counters,
                on_built=lambda capture: accounted.append(capture.trigger.instance_id)
                ).build_waiting()
    [(_, note)] = box.spool.pending("test", 10)
    assert note.payload["capture"]["flagged"] is True
    assert accounted == [UUID]
    assert box.counters.get("publication.flagged") == 1


@pytest.mark.allow_error_logs
def test_a_capture_that_can_be_neither_built_nor_flagged_moves_to_rejects(box):
    """A record that decodes but whose build and flagged build both raise (no capture time)
    must not stop every sender in front of it for good."""
    import msgpack

    capture_only(box)
    box.spool.put(exists(1), "periodic")
    seq, body = box.spool._db.execute("SELECT seq, body FROM records WHERE seq = 1").fetchone()
    doc = msgpack.unpackb(body)
    doc["now"] = None
    box.spool._db.execute("UPDATE records SET body = ? WHERE seq = ?",
                          (msgpack.packb(doc, use_bin_type=True), seq))
    publication = Publication(spool=box.spool, settings=SETTINGS, counters=box.counters)
    publication.build_waiting()
    assert [n.message_id for _, n in box.spool.pending("test", 10, publication.build)] == [
        "exists-1"]
    [(origin,)] = box.spool._db.execute("SELECT origin FROM rejects").fetchall()
    assert origin == "spool" and box.counters.get("spool.corrupt") == 1


def test_a_swap_between_the_memo_s_two_looks_leaves_no_entry_behind():
    """The memo looked for a late capture and for its entry under two lock holds: a swap in
    between left an entry no one would ever forget (~60 KiB each)."""
    from lifecycle_stats.capture.publication import _Memo
    from lifecycle_stats.publishing.capture_rows import Waiting

    memo = _Memo(lambda waiting: ("built", waiting.seq))

    class SwapOnSecondHold:
        """The memo's lock; the swap's forget() lands right after the first hold ends."""

        def __init__(self, lock):
            self.lock, self.holds = lock, 0

        def __enter__(self):
            self.lock.acquire()

        def __exit__(self, *exc):
            self.lock.release()
            self.holds += 1
            if self.holds == 1:
                memo._lock = self.lock
                memo.forget([7], swapped=True)

    memo._lock = SwapOnSecondHold(memo._lock)
    assert memo.get(Waiting(7, "m-7", b"body")) == ("built", 7)
    assert len(memo) == 0
