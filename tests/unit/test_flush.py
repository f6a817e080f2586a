"""Flush decisions (final / last_known / unavailable / duplicate / not nova) with a real spool
and in-memory stand-ins for the libvirt side."""
import concurrent.futures
import dataclasses
import datetime

import pytest

from lifecycle_stats import counters
from lifecycle_stats.capture import flush, last_readings
from lifecycle_stats.publishing import payloads, signing, spool
from lifecycle_stats.exceptions import DomainGone, HypervisorError
from lifecycle_stats.records import DeleteTrigger
from tests.unit.test_samples import AT, UUID, make_info, make_reading

NOW = AT + datetime.timedelta(seconds=42)


class FakeInspector:
    def __init__(self, readings=None, error=None):
        self.readings = readings or {}
        self.error = error
        self.reads = 0

    def read(self, instance_id):
        self.reads += 1
        if self.error is not None:
            raise self.error
        if instance_id not in self.readings:
            raise DomainGone(instance_id)
        return self.readings[instance_id]


class FakeRegistry:
    def __init__(self, infos=None, not_nova=()):
        self.infos = infos or {}
        self.not_nova = set(not_nova)

    def get(self, instance_id):
        return self.infos.get(instance_id)

    def is_known(self, instance_id):
        return instance_id in self.infos or instance_id in self.not_nova

    def identify(self, instance_id):
        if self.is_known(instance_id):
            return self.get(instance_id)
        raise HypervisorError("not connected")  # an unknown domain needs a libvirt read


def trigger(event_type="compute.instance.delete.start", instance_id=UUID):
    return DeleteTrigger(instance_id=instance_id, event_type=event_type, host="cmp1",
                         received_at=NOW, identity={"tenant_id": "p1"})


@pytest.fixture
def box(tmp_path):
    class Box:
        pass

    b = Box()
    b.counters = counters.Counters()
    b.spool = spool.Spool(str(tmp_path / "spool.sqlite"), conduits=["test"],
                          counters=b.counters)
    b.readings = last_readings.LastReadings(clock=lambda: NOW)
    b.woken = 0

    def make(inspector, registry):
        def wake():
            b.woken += 1
        return flush.Flusher(inspector=inspector, registry=registry,
                             last_readings=b.readings, spool=b.spool, host="cmp1",
                             publisher_id="lifecycle-stats.cmp1", on_spooled=wake,
                             counters=b.counters, clock=lambda: NOW)

    b.make = make
    yield b
    b.spool.close()


def spooled(box):
    return [n for _, n in box.spool.pending("test", 100)]


def test_live_domain_gives_one_valid_final_event(box):
    flusher = box.make(FakeInspector({UUID: make_reading()}), FakeRegistry({UUID: make_info()}))
    assert flusher.handle(trigger()) is flush.Outcome.FINAL
    [note] = spooled(box)
    payloads.validate(note)
    assert note.event_type == "compute.instance.delete.samples"
    assert note.publisher_id == "lifecycle-stats.cmp1"
    assert note.payload["capture"]["kind"] == "final"
    assert note.payload["capture"]["read_path"] == "bulk"
    assert note.message_id == payloads.delete_message_id(UUID) == note.payload["message_id"]
    assert {s["name"] for s in note.payload["samples"]} >= {"cpu", "disk.read.bytes",
                                                             "network.incoming.bytes"}
    assert box.woken == 1 and box.counters.get("flush.final") == 1


def test_every_later_trigger_is_a_duplicate(box):
    inspector = FakeInspector({UUID: make_reading()})
    flusher = box.make(inspector, FakeRegistry({UUID: make_info()}))
    outcomes = [flusher.handle(trigger(t)) for t in
                ("compute.instance.delete.start", "instance.delete.start",
                 "compute.instance.delete.start")]
    assert outcomes == [flush.Outcome.FINAL, flush.Outcome.DUPLICATE, flush.Outcome.DUPLICATE]
    assert len(spooled(box)) == 1 and inspector.reads == 1


def test_concurrent_triggers_for_one_instance_spool_once(box):
    flusher = box.make(FakeInspector({UUID: make_reading()}), FakeRegistry({UUID: make_info()}))
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        outcomes = list(pool.map(lambda _: flusher.handle(trigger()), range(16)))
    assert outcomes.count(flush.Outcome.FINAL) == 1
    assert outcomes.count(flush.Outcome.DUPLICATE) == 15
    assert len(spooled(box)) == 1


def test_gone_domain_reports_the_cached_reading_with_its_age(box):
    box.readings.update(make_info(), make_reading())
    flusher = box.make(FakeInspector({}), FakeRegistry({}))
    assert flusher.handle(trigger()) is flush.Outcome.LAST_KNOWN
    [note] = spooled(box)
    payloads.validate(note)
    assert note.payload["capture"]["kind"] == "last_known"
    assert note.payload["capture"]["age_ms"] == 42_000
    assert note.payload["display_name"] == "web-1"


def test_shut_off_domain_reports_the_last_running_reading(box):
    box.readings.update(make_info(), make_reading())
    stopped = make_reading(active=False)
    flusher = box.make(FakeInspector({UUID: stopped}), FakeRegistry({UUID: make_info()}))
    assert flusher.handle(trigger()) is flush.Outcome.LAST_KNOWN
    [note] = spooled(box)
    cpu = [s for s in note.payload["samples"] if s["name"] == "cpu"]
    assert cpu and cpu[0]["volume"] == 5_000_000


def test_nothing_known_is_reported_as_unavailable_not_silence(box):
    flusher = box.make(FakeInspector({}), FakeRegistry({}))
    assert flusher.handle(trigger()) is flush.Outcome.UNAVAILABLE
    [note] = spooled(box)
    payloads.validate(note)
    assert note.payload["samples"] == [] and note.payload["tenant_id"] == "p1"


@pytest.mark.parametrize("gone", [False, True])
def test_a_domain_nova_does_not_own_yields_nothing(box, gone):
    readings = {} if gone else {UUID: make_reading()}
    flusher = box.make(FakeInspector(readings), FakeRegistry(not_nova=[UUID]))
    assert flusher.handle(trigger()) is flush.Outcome.NOT_NOVA
    assert spooled(box) == [] and box.woken == 0


def test_a_failing_live_read_falls_back_and_is_counted(box):
    box.readings.update(make_info(), make_reading())
    flusher = box.make(FakeInspector(error=HypervisorError("boom")), FakeRegistry({}))
    assert flusher.handle(trigger()) is flush.Outcome.LAST_KNOWN
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
    assert flusher.handle(trigger()) is flush.Outcome.LAST_KNOWN
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
    flusher = flush.Flusher(
        inspector=FakeInspector({UUID: make_reading()}), registry=FakeRegistry({UUID: make_info()}),
        last_readings=box.readings, spool=box.spool, host="cmp1", publisher_id="p",
        clock=lambda: NOW, legacy_meters=False, telemetry_secret="s1")
    flusher.handle(trigger())
    [note] = spooled(box)
    payloads.validate(note)
    assert all(signing.verify(s, "s1") and not signing.verify(s, "s2")
               for s in note.payload["samples"])
    assert not {"instance", "disk.read.bytes"} & {s["name"] for s in note.payload["samples"]}
