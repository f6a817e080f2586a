"""A deletion's live reading goes in the usage ledger after nova's answer, never out of order:
nova's delete waits for the read and the capture's commit alone (the ledger's own transaction
and fsync came on top), and the ledger still sees the closing reading before any later event
of the instance (libvirt's undefine, a poll, the delete itself), and again from the durable
capture after a crash."""
from __future__ import annotations

import dataclasses
import datetime
import threading

from lifecycle_stats import counters
from lifecycle_stats.capture.last_readings import LastReadings
from lifecycle_stats.capture.observations import Observations
from lifecycle_stats.capture.pipeline import Pipeline, Readers, Settings
from lifecycle_stats.interfaces import NoUsage, Outcome
from lifecycle_stats.publishing import spool
from lifecycle_stats.records import StopAnnouncement
from lifecycle_stats.usage import periods
from lifecycle_stats.usage.ledger import UsageLedger
from tests.support.fakes import NOW, UUID, FakeInspector, FakeRegistry, make_info, make_reading

HOST = "cmp1"
LATER = NOW + datetime.timedelta(seconds=1)


class CallLog(NoUsage):
    """A ledger that writes down what it is told, in order."""

    def __init__(self) -> None:
        self.calls: list[tuple] = []

    def record_all(self, items, *, closing=False):
        self.calls += [("record", info.instance_id, r.read_at, closing) for info, r in items]

    def record(self, info, reading, *, closing=False):
        self.record_all([(info, reading)], closing=closing)

    def domain_gone(self, instance_id, at):
        self.calls.append(("gone", instance_id))
        return False

    def delete_announced(self, instance_id, at, *, sent_by=None, gone=False):
        self.calls.append(("delete", instance_id))
        return False


class SlowLedger(CallLog):
    """A ledger whose transaction lasts until the test releases it."""

    def __init__(self) -> None:
        super().__init__()
        self.entered, self.release = threading.Event(), threading.Event()

    def record_all(self, items, *, closing=False):
        self.entered.set()
        self.release.wait(5)
        super().record_all(items, closing=closing)


def trigger():
    return StopAnnouncement(instance_id=UUID, event_type="compute.instance.delete.start",
                            host=HOST, received_at=NOW, identity={"tenant_id": "p1"})


def pipeline(tmp_path, ledger, name="spool.sqlite"):
    store = spool.Spool(str(tmp_path / name), conduits=["test"], counters=counters.Counters())
    door = Pipeline(readers=Readers.one(FakeInspector({UUID: make_reading()})),
                    registry=FakeRegistry({UUID: make_info()}), spool=store, ledger=ledger,
                    settings=Settings.for_host(HOST), clock=lambda: NOW)
    return door, store


def test_nova_is_answered_before_the_ledger_hears_of_the_reading(tmp_path):
    ledger = CallLog()
    door, store = pipeline(tmp_path, ledger)
    try:
        assert door.announced(trigger()) is Outcome.FINAL
        assert ledger.calls == []  # nothing of the ledger on nova's wait
        assert door.observations.cache.get(UUID) is not None  # the cache has it at once
        door.publication.build_waiting()  # the publication thread, after the answer
        read_at = make_reading().read_at
        assert ledger.calls == [("record", UUID, read_at, True), ("delete", UUID)]
    finally:
        store.close()


def test_a_later_event_of_the_instance_records_the_held_reading_first():
    ledger = CallLog()
    seen = Observations(LastReadings(clock=lambda: NOW), ledger)
    seen.observe_deletion(make_info(), make_reading())
    seen.domain_gone(UUID, LATER)  # nova's destroy, heard before the publication's build
    seen.domain_gone(UUID, LATER)
    assert ledger.calls == [("record", UUID, make_reading().read_at, True), ("gone", UUID),
                            ("gone", UUID)]


def test_a_poll_records_every_held_reading_before_its_own():
    ledger = CallLog()
    seen = Observations(LastReadings(clock=lambda: NOW), ledger)
    seen.observe_deletion(make_info(), make_reading())
    seen.observe_poll([])
    assert ledger.calls == [("record", UUID, make_reading().read_at, True)]


def test_an_event_waits_for_a_held_reading_being_recorded_by_another_thread():
    ledger = SlowLedger()
    entered, release = ledger.entered, ledger.release
    seen = Observations(LastReadings(clock=lambda: NOW), ledger)
    seen.observe_deletion(make_info(), make_reading())
    builder = threading.Thread(target=seen.deletion_captured,
                               args=(make_info(), make_reading()))
    builder.start()
    assert entered.wait(5)
    gone = threading.Thread(target=seen.domain_gone, args=(UUID, LATER))
    gone.start()
    gone.join(0.2)
    assert gone.is_alive()  # the undefine waits for the closing reading's transaction
    release.set()
    builder.join(5)
    gone.join(5)
    assert ledger.calls == [("record", UUID, make_reading().read_at, True), ("gone", UUID)]


def test_a_deletion_never_waits_for_another_instance_s_ledger_transaction():
    """The publication thread records one deletion's closing reading (a ledger fsync) while
    the next deletion is captured: that capture, on nova's wait, must not queue behind it."""
    ledger = SlowLedger()
    entered, release = ledger.entered, ledger.release
    other = "0f6f1f0e-4c1e-4a55-9f0c-6d2b1c3a4e5f"
    seen = Observations(LastReadings(clock=lambda: NOW), ledger)
    seen.observe_deletion(make_info(), make_reading())
    builder = threading.Thread(target=seen.deletion_captured,
                               args=(make_info(), make_reading()))
    builder.start()
    try:
        assert entered.wait(5)
        capture = threading.Thread(target=seen.observe_deletion,
                                   args=(make_info(instance_id=other),
                                         dataclasses.replace(make_reading(),
                                                             instance_id=other)))
        capture.start()
        capture.join(1.0)
        assert not capture.is_alive()  # held only the short lock of the held readings
    finally:
        release.set()
        builder.join(5)


def test_after_a_crash_the_build_accounts_the_reading_from_the_capture(tmp_path):
    door, store = pipeline(tmp_path, CallLog())
    assert door.announced(trigger()) is Outcome.FINAL
    store.close()  # the agent dies between the answer and the build: nothing in the ledger

    ledger = UsageLedger(str(tmp_path / "usage.sqlite"), periods.parse("hour"))
    restarted, store = pipeline(tmp_path, ledger)
    try:
        assert restarted.publication.build_waiting() == 1
        latest = ledger.latest(UUID)
        assert latest is not None and latest.closed
        assert latest.reading.read_at == make_reading().read_at
        assert latest.reading.cpu_time_ns == make_reading().cpu_time_ns
    finally:
        store.close()
        ledger.close()
