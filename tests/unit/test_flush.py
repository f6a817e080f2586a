"""Flush decisions (final / last_known / unavailable / duplicate / not nova) with a real spool
and in-memory stand-ins for the libvirt side."""
import concurrent.futures
import dataclasses
import datetime
import logging
import sqlite3
import threading
import time
import uuid

import pytest

from lifecycle_stats import counters
from lifecycle_stats.capture.publication import Publication
from lifecycle_stats.capture import flush, last_readings
from lifecycle_stats.capture.observations import Observations
from lifecycle_stats.capture.settings import Retry, Settings
from lifecycle_stats.capture.stop_gate import StopGate
from lifecycle_stats.interfaces import NoUsage, Outcome
from lifecycle_stats.publishing import payloads, signing, spool
from lifecycle_stats.exceptions import (
    CaptureDeferred, HypervisorError, ShuttingDown,
)
from lifecycle_stats.records import StopAnnouncement
from tests.support.fakes import (
    AT, NOW, UUID, FakeInspector, FakeRegistry, GatedInspector, make_info, make_reading,
)


class Flusher(flush.Flusher):
    """The flush as capture.pipeline.Pipeline drives it: one capture under the stop gate (the
    deletion's accounting after it is the pipeline's: test_pipeline.py, test_usage_flow.py)."""

    def __init__(self, *, inspector, registry, readings, settings=None, **kw):
        self.gate = StopGate()
        settings = settings or Settings("cmp1", "lifecycle-stats.cmp1")
        super().__init__(reader=inspector, registry=registry, gate=self.gate,
                         observations=Observations(readings, NoUsage()),
                         settings=settings, **kw)
        # what the pipeline's publication thread does after each capture, here synchronously
        self.publication = Publication(spool=kw["spool"], settings=settings,
                                       counters=kw["counters"])

    def handle(self, trigger):
        with self.gate.working("flushing"):
            outcome = self.capture(trigger).outcome
        self.publication.build_waiting()
        return outcome

    def close(self, timeout):
        return self.gate.close(timeout)


def trigger(event_type="compute.instance.delete.start", instance_id=UUID, attempt_id=None):
    return StopAnnouncement(instance_id=instance_id, event_type=event_type, host="cmp1",
                         received_at=NOW, identity={"tenant_id": "p1"}, attempt_id=attempt_id)


@pytest.fixture
def box(tmp_path):
    class Box:
        pass

    b = Box()
    b.counters = counters.Counters()
    b.spool = spool.Spool(str(tmp_path / "spool.sqlite"), conduits=["test"],
                          counters=b.counters)
    b.readings = last_readings.LastReadings(clock=lambda: NOW)
    b.sleeps = []

    def make(inspector, registry, spool=None, **retry):
        return Flusher(inspector=inspector, registry=registry, readings=b.readings,
                       spool=spool or b.spool, counters=b.counters, clock=lambda: NOW,
                       sleep=b.sleeps.append,
                       settings=Settings("cmp1", "lifecycle-stats.cmp1", retry=Retry(**retry)))

    b.make = make
    yield b
    b.spool.close()


def spooled(box):
    """What senders would find: the captures built (as the publication thread does), then
    everything pending."""
    Publication(spool=box.spool, settings=Settings("cmp1", "lifecycle-stats.cmp1"),
                counters=box.counters).build_waiting()
    return [n for _, n in box.spool.pending("test", 100)]


def test_live_domain_gives_one_valid_final_event(box):
    flusher = box.make(FakeInspector({UUID: make_reading()}), FakeRegistry({UUID: make_info()}))
    assert flusher.handle(trigger()) is Outcome.FINAL
    [note] = spooled(box)
    payloads.validate(note)
    assert note.event_type == "compute.instance.delete.samples"
    assert note.publisher_id == "lifecycle-stats.cmp1"
    assert note.payload["capture"]["kind"] == "final"
    assert note.payload["capture"]["read_path"] == "single"  # a final is read on its own
    assert note.message_id == payloads.delete_message_id(trigger()) == note.payload["message_id"]
    assert {s["name"] for s in note.payload["samples"]} >= {"cpu", "disk.read.bytes",
                                                             "network.incoming.bytes"}
    assert box.counters.get("flush.final") == 1


def test_every_later_trigger_is_a_duplicate(box):
    inspector = FakeInspector({UUID: make_reading()})
    flusher = box.make(inspector, FakeRegistry({UUID: make_info()}))
    outcomes = [flusher.handle(trigger(t)) for t in
                ("compute.instance.delete.start", "instance.delete.start",
                 "compute.instance.delete.start")]
    assert outcomes == [Outcome.FINAL, Outcome.DUPLICATE, Outcome.DUPLICATE]
    assert len(spooled(box)) == 1 and inspector.reads == 1


def test_concurrent_triggers_for_one_instance_spool_once(box):
    flusher = box.make(FakeInspector({UUID: make_reading()}), FakeRegistry({UUID: make_info()}))
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        outcomes = list(pool.map(lambda _: flusher.handle(trigger()), range(16)))
    assert outcomes.count(Outcome.FINAL) == 1
    assert outcomes.count(Outcome.DUPLICATE) == 15
    assert len(spooled(box)) == 1


class ForgetfulSpool:
    """Never remembers: every trigger reads, so overlapping reads show a broken lock."""

    def __init__(self, spool):
        self._spool = spool

    def __getattr__(self, name):
        return getattr(self._spool, name)

    def seen(self, message_id):
        return False

    def put(self, notification, tier):
        self._spool.put(dataclasses.replace(notification, message_id=str(uuid.uuid4())), tier)


def test_a_third_trigger_never_runs_beside_a_second(box):
    inspector = GatedInspector({UUID: make_reading()})
    flusher = box.make(inspector, FakeRegistry({UUID: make_info()}))
    flusher._spool = ForgetfulSpool(box.spool)
    threads = [threading.Thread(target=flusher.handle, args=(trigger(),)) for _ in range(3)]
    threads[0].start()
    assert inspector.entered.acquire(timeout=5)  # the first holds the lock
    threads[1].start()
    time.sleep(0.1)  # the second waits for it
    inspector.gates[0].set()
    assert inspector.entered.acquire(timeout=5)  # the first left; the second holds the lock
    threads[2].start()  # arrives after the first left: must wait for the second
    time.sleep(0.1)
    for gate in inspector.gates[1:]:
        gate.set()
    for t in threads:
        t.join(5)
    assert inspector.reads == 3 and inspector.most == 1
    assert flusher._locks._locks == {}  # nothing left behind


def test_gone_domain_reports_the_cached_reading_with_its_age(box):
    box.readings.update(make_info(), make_reading())
    flusher = box.make(FakeInspector({}), FakeRegistry({}))
    assert flusher.handle(trigger()) is Outcome.LAST_KNOWN
    [note] = spooled(box)
    payloads.validate(note)
    assert note.payload["capture"]["kind"] == "last_known"
    assert note.payload["capture"]["age_ms"] == 42_000
    assert note.payload["display_name"] == "web-1"


def test_shut_off_domain_reports_the_last_running_reading(box):
    box.readings.update(make_info(), make_reading())
    stopped = make_reading(active=False)
    flusher = box.make(FakeInspector({UUID: stopped}), FakeRegistry({UUID: make_info()}))
    assert flusher.handle(trigger()) is Outcome.LAST_KNOWN
    [note] = spooled(box)
    cpu = [s for s in note.payload["samples"] if s["name"] == "cpu"]
    assert cpu and cpu[0]["volume"] == 5_000_000


def test_nothing_known_is_reported_as_unavailable_not_silence(box):
    flusher = box.make(FakeInspector({}), FakeRegistry({}))
    assert flusher.handle(trigger()) is Outcome.UNAVAILABLE
    [note] = spooled(box)
    payloads.validate(note)
    assert note.payload["samples"] == [] and note.payload["tenant_id"] == "p1"


@pytest.mark.parametrize("gone", [False, True])
def test_a_domain_nova_does_not_own_yields_nothing(box, gone):
    readings = {} if gone else {UUID: make_reading()}
    flusher = box.make(FakeInspector(readings), FakeRegistry(not_nova=[UUID]))
    assert flusher.handle(trigger()) is Outcome.NOT_NOVA
    assert spooled(box) == []


def test_a_failing_live_read_falls_back_and_is_counted(box):
    box.readings.update(make_info(), make_reading())
    flusher = box.make(FakeInspector(error=HypervisorError("boom")), FakeRegistry({}))
    assert flusher.handle(trigger()) is Outcome.LAST_KNOWN
    assert box.counters.get("flush.read_errors") == 1


def test_final_reading_refreshes_the_cache(box):
    newer = dataclasses.replace(make_reading(), cpu_time_ns=9_000_000)
    flusher = box.make(FakeInspector({UUID: newer}), FakeRegistry({UUID: make_info()}))
    flusher.handle(trigger())
    assert box.readings.get(UUID)[1].cpu_time_ns == 9_000_000


class ForgettingRegistry(FakeRegistry):
    """The undefine event arrived while the live read waited out nova's destroy."""

    def identify(self, instance_id):
        return None


@pytest.mark.parametrize("live", ["shut off", "running but unidentifiable"])
def test_a_delete_racing_undefine_reports_last_known_not_nothing(box, live):
    box.readings.update(make_info(), make_reading())
    reading = make_reading(active=(live != "shut off"))
    flusher = box.make(FakeInspector({UUID: reading}), ForgettingRegistry({}))
    assert flusher.handle(trigger()) is Outcome.LAST_KNOWN
    [note] = spooled(box)
    assert note.payload["capture"]["kind"] == "last_known"


def test_validate_rejects_a_payload_that_breaks_the_contract():
    import jsonschema

    note = payloads.delete_samples(kind="final", trigger=trigger(), info=make_info(),
                                   reading=make_reading(), host="cmp1", publisher_id="p",
                                   now=NOW)
    payloads.validate(note)
    broken = dataclasses.replace(note, payload={**note.payload, "samples": []})
    with pytest.raises(jsonschema.ValidationError):
        payloads.validate(broken)  # a final capture must carry samples


# -- a retried delete is a new capture; one attempt is one event ----------------------------

def test_each_delete_attempt_is_its_own_event_and_names_the_one_it_supersedes(box):
    flusher = box.make(FakeInspector({UUID: make_reading()}), FakeRegistry({UUID: make_info()}))
    first = [flusher.handle(trigger(t, attempt_id="req-1")) for t in
             ("compute.instance.delete.start", "instance.delete.start")]
    retry = flusher.handle(trigger(attempt_id="req-2"))  # nova retried the delete days later
    redelivered = flusher.handle(trigger(attempt_id="req-2"))
    assert first == [Outcome.FINAL, Outcome.DUPLICATE]
    assert (retry, redelivered) == (Outcome.FINAL, Outcome.DUPLICATE)
    one, two = spooled(box)
    for note in (one, two):
        payloads.validate(note)
    assert one.message_id != two.message_id
    assert one.payload["supersedes"] is None and two.payload["supersedes"] == one.message_id
    assert two.payload["capture"]["attempt_id"] == "req-2"
    assert not {s["message_id"] for s in one.payload["samples"]} & {
        s["message_id"] for s in two.payload["samples"]}


def test_the_supersedes_ledger_outlives_delivery(box):
    flusher = box.make(FakeInspector({UUID: make_reading()}), FakeRegistry({UUID: make_info()}))
    flusher.handle(trigger(attempt_id="req-1"))
    [(seq, first)] = box.spool.pending("test", 10)
    box.spool.confirm(seq, "test")  # published and gone from the spool
    flusher.handle(trigger(attempt_id="req-2"))
    [second] = spooled(box)
    assert second.payload["supersedes"] == first.message_id


# -- failures: transient ones redeliver, permanent ones are kept and flagged ----------------

class FlakySpool(spool.Spool):
    """The real spool, whose first `failures` puts fail the way sqlite fails when the
    database is locked by another process."""

    def __init__(self, *args, failures, error=None, **kw):
        super().__init__(*args, **kw)
        self.failures = failures
        self.error = error or sqlite3.OperationalError("database is locked")

    def put(self, notification, tier):
        self._maybe_fail()
        return super().put(notification, tier)

    def put_flagged(self, flagged, rejected, reason):
        self._maybe_fail()
        return super().put_flagged(flagged, rejected, reason)

    def put_capture(self, message_id, instance_id, body):
        self._maybe_fail()
        return super().put_capture(message_id, instance_id, body)

    def _maybe_fail(self):
        if self.failures:
            self.failures -= 1
            raise self.error


def test_a_locked_spool_is_retried_in_process_then_the_trigger_redelivered(box, tmp_path):
    flaky = FlakySpool(str(tmp_path / "flaky.sqlite"), conduits=["test"], failures=4)
    try:
        inspector = FakeInspector({UUID: make_reading()})
        flusher = box.make(inspector, FakeRegistry({UUID: make_info()}), spool=flaky,
                           tries_per_attempt=3)
        with pytest.raises(CaptureDeferred, match="attempt 1"):
            flusher.handle(trigger())
        assert box.sleeps == [0.2, 0.4]  # backoff between the in-process tries
        assert flaky.pending("test", 10) == []
        inspector.readings.clear()  # nova destroyed the domain before the redelivery
        assert flusher.handle(trigger()) is Outcome.FINAL  # the redelivery: 1 fails
        [note] = [n for _, n in flaky.pending("test", 10)]
        assert note.payload["capture"]["kind"] == "final"  # what was read live stays final
        assert inspector.reads == 1  # read once; only the spooling was retried
        assert box.counters.get("flush.deferred") == 1 and box.counters.get("flush.final") == 1
    finally:
        flaky.close()


def test_a_read_error_with_nothing_cached_redelivers_a_bounded_number_of_times(box):
    inspector = FakeInspector(error=HypervisorError("cannot reach libvirtd"))
    flusher = box.make(inspector, FakeRegistry({}), max_attempts=3, tries_per_attempt=2)
    for attempt in (1, 2):
        with pytest.raises(CaptureDeferred, match=f"attempt {attempt}"):
            flusher.handle(trigger())
    assert flusher.handle(trigger()) is Outcome.UNAVAILABLE  # never silence
    assert inspector.reads == 2 + 2 + 1 and len(spooled(box)) == 1


def test_a_live_read_whose_identity_lookup_fails_once_is_retried_to_final(box):
    """A domain new to the registry is identified by reading its metadata then: a libvirt
    error there threw the live reading away (`unavailable`, acknowledged), where every other
    libvirt error that may pass is retried (found by review)."""
    class FlakyRegistry(FakeRegistry):
        lookups = 0

        def identify(self, instance_id):
            self.lookups += 1
            if self.lookups == 1:
                raise HypervisorError("cannot read metadata: connection reset")
            return super().identify(instance_id)

    registry = FlakyRegistry({UUID: make_info()})
    flusher = box.make(FakeInspector({UUID: make_reading()}), registry)
    assert flusher.handle(trigger()) is Outcome.FINAL
    [note] = spooled(box)
    assert note.payload["capture"]["kind"] == "final" and note.payload["samples"]
    assert registry.lookups == 2 and box.counters.get("flush.read_errors") == 1


def test_a_failing_identity_lookup_on_the_last_attempt_still_spools(box):
    class BrokenRegistry(FakeRegistry):
        def identify(self, instance_id):
            raise HypervisorError("cannot read metadata")

    flusher = box.make(FakeInspector({UUID: make_reading()}), BrokenRegistry({}),
                       max_attempts=1)
    assert flusher.handle(trigger()) is Outcome.UNAVAILABLE  # never silence
    assert len(spooled(box)) == 1


@pytest.mark.allow_error_logs
def test_a_capture_that_breaks_the_schema_is_kept_and_published_flagged(box, caplog):
    bad = make_info(flavor=dataclasses.replace(make_info().flavor, vcpus=-1))
    flusher = box.make(FakeInspector({UUID: make_reading()}), FakeRegistry({UUID: bad}))
    # nova's answer comes from the capture (read live: final); the schema is checked when
    # the delete.samples is built from it, after that answer (publication.py)
    assert flusher.handle(trigger()) is Outcome.FINAL
    [note] = spooled(box)
    payloads.validate(note)
    capture = note.payload["capture"]
    assert capture["kind"] == "unavailable" and capture["flagged"] is True
    assert "-1 is less than the minimum of 0" in capture["errors"][0]
    assert note.payload["tenant_id"] == "p1" and note.payload["samples"] == []
    [(origin, reason, body)] = box.spool._db.execute(
        "SELECT origin, reason, body FROM rejects").fetchall()
    kept = spool.decode(body)  # the capture as read, samples and all, for an operator
    assert origin == "capture" and kept.payload["capture"]["kind"] == "final"
    assert len(kept.payload["samples"]) > 0 and "ValidationError" in reason
    assert box.counters.get("publication.flagged") == 1
    assert any(r.levelno == logging.ERROR for r in caplog.records)


class PartialRecordInspector(FakeInspector):
    def read(self, instance_id):
        raise KeyError("block.0.rd.bytes")  # a stats record missing a field it promised


@pytest.mark.allow_error_logs
def test_a_partial_stats_record_is_flagged_not_dropped(box):
    flusher = box.make(PartialRecordInspector(), FakeRegistry({UUID: make_info()}))
    assert flusher.handle(trigger()) is Outcome.FLAGGED
    [note] = spooled(box)
    assert note.payload["capture"]["errors"] == ["KeyError: 'block.0.rd.bytes'"]
    assert note.payload["display_name"] == "web-1"  # nova's metadata still identifies it


class UnusableRegistry(FakeRegistry):
    def unusable(self, instance_id):
        return "metadata.malformed"

    def is_known(self, instance_id):
        return True


def test_broken_nova_metadata_gives_unavailable_with_the_triggers_identity(box):
    """nova announced the delete: its word wins over a broken <nova:instance> document."""
    flusher = box.make(FakeInspector({UUID: make_reading()}), UnusableRegistry({}))
    assert flusher.handle(trigger()) is Outcome.UNAVAILABLE
    [note] = spooled(box)
    payloads.validate(note)
    assert note.payload["instance_id"] == UUID and note.payload["tenant_id"] == "p1"
    assert box.counters.get("flush.metadata_unusable") == 1


@pytest.mark.allow_error_logs
def test_a_flagged_capture_retried_after_a_locked_spool_is_kept_once(box, tmp_path):
    flaky = FlakySpool(str(tmp_path / "flaky.sqlite"), conduits=["test"], failures=2)
    try:
        flusher = box.make(PartialRecordInspector(), FakeRegistry({UUID: make_info()}),
                           spool=flaky)
        assert flusher.handle(trigger()) is Outcome.FLAGGED
        assert len(flaky.pending("test", 10)) == 1
        assert flaky._db.execute("SELECT count(*) FROM rejects").fetchone()[0] == 1
    finally:
        flaky.close()


@pytest.mark.parametrize("error", [sqlite3.DatabaseError("database disk image is malformed"),
                                   OSError(28, "No space left on device")])
def test_a_damaged_or_full_spool_defers_the_capture_instead_of_losing_it(box, tmp_path, error):
    flaky = FlakySpool(str(tmp_path / "flaky.sqlite"), conduits=["test"], failures=3,
                       error=error)
    try:
        flusher = box.make(FakeInspector({UUID: make_reading()}),
                           FakeRegistry({UUID: make_info()}), spool=flaky)
        with pytest.raises(CaptureDeferred):
            flusher.handle(trigger())
        assert flusher.handle(trigger()) is Outcome.FINAL
    finally:
        flaky.close()


def test_final_samples_are_stamped_no_later_than_nova_announced_the_delete(box):
    """Gnocchi un-ends a resource on a measure at/after ended_at, which Ceilometer sets when
    it processes delete.start: a sample stamped after nova's announcement could resurrect."""
    reading = make_reading()  # read at AT
    announced = AT - datetime.timedelta(milliseconds=3)
    flusher = box.make(FakeInspector({UUID: reading}), FakeRegistry({UUID: make_info()}))
    flusher.handle(dataclasses.replace(trigger(), announced_at=announced))
    [note] = spooled(box)
    stamps = {s["timestamp"] for s in note.payload["samples"]}
    assert stamps == {payloads.isotime(announced)}
    assert note.timestamp == payloads.isotime(announced)  # stock meters.yaml uses the envelope
    assert note.payload["capture"]["captured_at"] == payloads.isotime(AT)  # the true read time


@pytest.mark.parametrize("announced", [None, AT + datetime.timedelta(seconds=2)])
def test_a_reading_older_than_the_announcement_keeps_its_read_time(announced):
    t = dataclasses.replace(trigger(), announced_at=announced)
    assert payloads.sample_time(t, make_reading()) == AT


def test_samples_are_signed_with_the_configured_secret_and_legacy_can_be_off(box, tmp_path):
    flusher = Flusher(
        inspector=FakeInspector({UUID: make_reading()}), registry=FakeRegistry({UUID: make_info()}),
        readings=box.readings, spool=box.spool, counters=counters.Counters(),
        clock=lambda: NOW,
        settings=Settings("cmp1", "p", legacy_meters=False, telemetry_secret="s1"))
    flusher.handle(trigger())
    [note] = spooled(box)
    payloads.validate(note)
    assert all(signing.verify(s, "s1") and not signing.verify(s, "s2")
               for s in note.payload["samples"])
    assert not {"instance", "disk.read.bytes"} & {s["name"] for s in note.payload["samples"]}


def test_a_flush_that_outlives_close_never_writes_to_the_spool(box):
    inspector = GatedInspector({UUID: make_reading()})
    flusher = box.make(inspector, FakeRegistry({UUID: make_info()}))
    outcome = []

    def run():
        try:
            outcome.append(flusher.handle(trigger()))
        except ShuttingDown as exc:
            outcome.append(exc)

    worker = threading.Thread(target=run)
    worker.start()
    assert inspector.entered.acquire(timeout=5)  # reading the domain
    assert flusher.close(timeout=0.1) is False  # still running: the agent goes on stopping
    box.spool.close()
    inspector.gates[0].set()
    worker.join(5)
    assert isinstance(outcome[0], ShuttingDown)  # the listener requeues it: not acknowledged
    with pytest.raises(ShuttingDown):
        flusher.handle(trigger())


def test_close_waits_for_flushes_in_flight(box):
    inspector = GatedInspector({UUID: make_reading()})
    flusher = box.make(inspector, FakeRegistry({UUID: make_info()}))
    worker = threading.Thread(target=flusher.handle, args=(trigger(),))
    worker.start()
    assert inspector.entered.acquire(timeout=5)
    threading.Timer(0.1, inspector.gates[0].set).start()
    assert flusher.close(timeout=5) is True
    assert len(spooled(box)) == 1
