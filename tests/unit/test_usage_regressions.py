"""Issue 18's defects 1-8, one named test each, written before the fix (all 14 failed on the
ledger of 0987b6e; branch ledger-before-squash, commit 66347b6): each drives the real core
(capture.pipeline.Pipeline), ledger, reporter and closer on SQLite files with in-memory libvirt
stand-ins and an injected clock, and checks what billing sees — Σ usage over every exists,
deduplicated by message_id, against the counter growth the test fed in."""
from __future__ import annotations

import contextlib
import dataclasses
import datetime

import pytest

from lifecycle_stats.capture.pipeline import Pipeline, Readers, Settings
from lifecycle_stats.exceptions import CaptureDeferred, HypervisorError
from lifecycle_stats.records import AuditWindow, StopAnnouncement, DiskStats, VnicStats
from lifecycle_stats import counters
from lifecycle_stats.usage import codec, ledger as usage_ledger, periods
from tests.support import fakes
from tests.support.fakes import (
    UUID, FakeInspector, FakeRegistry, FlakySpool, make_info, make_reading,
)
from tests.support.usage_files import UsageFiles

UTC = datetime.timezone.utc
T0 = datetime.datetime(2026, 11, 22, 0, 10, tzinfo=UTC)


class Clock(fakes.Clock):
    def at(self, minutes: float) -> datetime.datetime:
        self.now = T0 + datetime.timedelta(minutes=minutes)
        return self.now


def read(minutes, cpu, *, pid=1, vda=0, tap=0, started=None):
    """A reading of QEMU process `pid` (libvirt's domain id) with one disk and one vNIC."""
    base = make_reading()
    fields = dict(read_at=T0 + datetime.timedelta(minutes=minutes), cpu_time_ns=cpu,
                  process_id=pid, disks=(DiskStats("vda", vda, vda * 10, 0, 0),),
                  vnics=(VnicStats("tap1", tap, tap, 0, 0, 0, 0, 0, 0),))
    if started is not None:
        fields["process_started_at"] = started
    return dataclasses.replace(base, **fields)


class World(UsageFiles):
    def __init__(self, state, *, fail_exists=0, backlog=24, emit_own=True):
        super().__init__(state, Clock(T0))
        self.spool = FlakySpool(self.real_spool, fail_exists)
        self.inspector = FakeInspector({})
        self.core = Pipeline(readers=Readers.one(self.inspector),
                             registry=FakeRegistry({UUID: make_info()}), spool=self.spool,
                             ledger=self.ledger, settings=Settings("cmp1", "ls.cmp1"),
                             counters=self.counters, clock=self.clock, sleep=lambda _s: None)
        self.reporter = self.core.reporter
        self.closer = self.make_closer(self.reporter, poll=lambda: None, backlog=backlog,
                                       emit_own=emit_own, wait=lambda _s: False)

    def poll(self, reading):
        self.clock.now = max(self.clock.now, reading.read_at)
        self.ledger.record_all([(make_info(), reading)])

    def announce(self, action, minutes, live=None):
        """nova announces a stop; `live` is what the domain answers then (None: gone)."""
        at = self.clock.at(minutes)
        if live is None:
            self.inspector.readings.pop(UUID, None)
        else:
            self.inspector.readings[UUID] = live
        trigger = StopAnnouncement(instance_id=UUID, event_type=f"compute.instance.{action}.start",
                                host="cmp1", received_at=at, action=action, announced_at=at,
                                attempt_id=f"req-{action}-{minutes}")
        outcome = self.core.announced(trigger)
        self.core.publication.build_waiting()  # the publication thread's work, synchronously
        return outcome

    def exists(self):
        """The exists billing keeps: deduplicated by message_id."""
        return list({note.message_id: note.payload for note in super().exists()}.values())

    def billed(self, key="cpu_time_ns"):
        return sum(e["usage"][key] for e in self.exists())

    def billed_disk(self, stat="read_requests"):
        return sum(e["usage"]["disks"].get("vda", {}).get(stat, 0) for e in self.exists())

    def billed_vnic(self, stat="rx_bytes"):
        return sum(e["usage"]["vnics"].get("tap1", {}).get(stat, 0) for e in self.exists())

    def close_period_of(self, minutes):
        """Close every period that ended by `minutes` (as the closer does at its step)."""
        self.clock.at(minutes)
        self.closer.close_due()


@pytest.fixture
def world(tmp_path):
    with contextlib.closing(World(tmp_path)) as made:
        yield made


def test_defect_1_one_counter_going_down_resets_that_series_alone(world):
    world.poll(read(1, 1000, vda=50, tap=500))
    world.poll(read(2, 1600, vda=80, tap=20))  # the vNIC re-attached at the same target
    world.close_period_of(55)  # nothing yet: the period ends at 01:00
    world.close_period_of(61)
    assert world.billed() == 600  # cpu is not re-billed since boot
    assert world.billed_disk() == 30
    assert world.billed_vnic() == 20  # the reset series counts from zero


def test_defect_2_a_failed_closing_read_does_not_end_the_process(world):
    world.poll(read(1, 1000))
    world.inspector.error = HypervisorError("libvirt: timed out")
    world.announce("power_off", 2, live=read(2, 1200))  # the read fails; the guest runs on
    world.inspector.error = None
    world.poll(read(5, 1900))
    world.close_period_of(61)
    assert world.billed() == 900


def test_defect_3_a_poll_reaching_the_new_process_before_stopped_is_not_billed_twice(world):
    world.poll(read(1, 350, pid=7))
    world.poll(read(2, 20, pid=8))  # stamped before nova's destroy, read the new process
    world.ledger.process_ended(UUID, T0 + datetime.timedelta(minutes=3))  # STOPPED of pid 7
    world.poll(read(4, 100, pid=8))
    world.close_period_of(61)
    assert world.billed() == 100  # pid 8 from zero; pid 7 from its first reading


def test_defect_4_an_end_with_unread_usage_is_not_complete(world):
    world.poll(read(1, 100))
    world.announce("power_off", 2, live=read(2, 300))  # closing reading
    world.poll(read(3, 900))  # the guest ran on: a clean shutdown takes its time
    world.ledger.process_ended(UUID, T0 + datetime.timedelta(minutes=4))
    world.close_period_of(61)
    [report] = world.exists()
    assert report["usage"]["complete"] is False
    assert report["usage"]["incomplete_seconds"] >= 60.0


def test_defect_5a_a_delete_early_in_the_next_period_keeps_the_last_full_period(tmp_path):
    world = World(tmp_path, emit_own=False)  # enrich_nova_exists
    world.poll(read(1, 1000))
    world.poll(read(49, 5000))
    world.close_period_of(51)  # 01:01: the agent's own period exists is not sent
    world.announce("delete", 52)  # 01:02, the domain already gone (raced the destroy)
    begin = datetime.datetime(2026, 11, 22, 0, 0, tzinfo=UTC)
    window = AuditWindow(UUID, "compute.instance.exists", "cmp1", begin,
                         begin + datetime.timedelta(hours=1), world.clock.at(60))
    world.reporter.nova_audit(window, make_info())  # nova's audit runs after the delete
    assert world.billed() == 4000
    world.close()


def test_defect_5b_nova_s_mid_period_exists_is_not_billed_again_by_the_full_period(tmp_path):
    world = World(tmp_path, emit_own=False)
    world.poll(read(1, 1000))
    world.poll(read(20, 3000))
    begin = datetime.datetime(2026, 11, 22, 0, 0, tzinfo=UTC)
    rebuild = AuditWindow(UUID, "compute.instance.exists", "cmp1", begin,
                          world.clock.at(21), world.clock.at(21))  # nova's rebuild: start..now
    world.reporter.nova_audit(rebuild, make_info())
    world.poll(read(40, 7000))
    full = AuditWindow(UUID, "compute.instance.exists", "cmp1", begin,
                       begin + datetime.timedelta(hours=1), world.clock.at(55))
    world.reporter.nova_audit(full, make_info())
    assert world.billed() == 6000
    world.close()


def test_defect_6a_a_reading_committed_after_its_period_was_reported_is_reported_next(world):
    world.poll(read(1, 1000))
    world.close_period_of(51)  # 01:01: 00:00-01:00 reported
    world.ledger.record(make_info(), read(49.9, 1500))  # a slow poll stamped 00:59:54
    world.poll(read(55, 2500))
    world.close_period_of(111)  # 02:01
    assert world.billed() == 1500


def test_defect_6b_an_outage_longer_than_the_backlog_loses_nothing(tmp_path):
    world = World(tmp_path, backlog=2)
    world.poll(read(1, 1000))
    world.poll(read(40, 4000))  # 00:50, then the agent is down for five period ends
    world.close_period_of(5 * 60 + 1)
    assert world.billed() == 3000
    world.close()


@pytest.mark.allow_error_logs
def test_defect_7a_a_final_exists_that_failed_to_spool_is_spooled_later(tmp_path):
    world = World(tmp_path, fail_exists=1)
    world.poll(read(1, 1000))
    world.poll(read(5, 3000))
    world.announce("delete", 6)  # gone: the final exists's spool write fails once
    world.close_period_of(7)  # the closer's next cycle
    finals = [e for e in world.exists() if e["final"]]
    assert len(finals) == 1 and world.billed() == 2000
    world.close()


def test_defect_7b_an_enriched_exists_is_not_acknowledged_when_the_spool_fails(tmp_path):
    world = World(tmp_path, fail_exists=1, emit_own=False)
    world.poll(read(1, 1000))
    world.poll(read(30, 2000))
    begin = datetime.datetime(2026, 11, 22, 0, 0, tzinfo=UTC)
    window = AuditWindow(UUID, "compute.instance.exists", "cmp1", begin,
                         begin + datetime.timedelta(hours=1), world.clock.at(55))
    with pytest.raises(CaptureDeferred):  # the bus requeues nova's message
        world.reporter.nova_audit(window, make_info())
    world.reporter.nova_audit(window, make_info())  # the redelivery
    assert world.billed() == 1000
    world.close()


@pytest.mark.allow_error_logs
def test_defect_8_a_corrupt_ledger_is_moved_aside_and_the_agent_starts(tmp_path):
    path = tmp_path / "usage.sqlite"
    path.write_bytes(b"this is not a database" * 100)
    seen = counters.Counters()
    ledger = usage_ledger.UsageLedger(str(path), periods.parse("hour"), counters=seen)
    ledger.record(make_info(), read(1, 100))
    assert seen.get("usage.ledger_moved_aside") == 1
    assert ledger.latest(UUID).reading.cpu_time_ns == 100
    assert [p.name for p in tmp_path.iterdir() if ".corrupt" in p.name]
    ledger.close()


def test_defect_8_ledger_rows_decode_with_unknown_keys():
    doc = codec.unpack(codec.encode_reading(read(1, 100)))
    doc["disks"][0]["added_by_a_newer_agent"] = 1
    doc["added_by_a_newer_agent"] = {"x": 1}
    assert codec.decode_reading(codec.pack(doc)).disks[0].read_requests == 0


def test_failed_delete_then_power_cycle_then_the_real_delete(world):
    """The issue's second scenario: one final exists, with the delete that happened."""
    world.poll(read(1, 1000, pid=1))
    world.announce("delete", 2, live=read(2, 1200, pid=1))  # nova's delete then fails
    world.poll(read(3, 1500, pid=1))
    world.announce("power_off", 4, live=read(4, 1700, pid=1))
    world.ledger.process_ended(UUID, world.clock.at(4.1))
    world.poll(read(6, 300, pid=2))  # powered on again
    world.announce("delete", 8, live=None)  # the real delete (read raced the destroy)
    finals = [e for e in world.exists() if e["final"]]
    assert len(finals) == 1
    assert world.billed() == 700 + 300


def test_failed_delete_then_hard_reboot_does_not_end_the_instance(world):
    """A hard reboot (nova's usual cure for an instance a failed delete left in ERROR)
    destroys and undefines the domain, then defines and starts it again. The failed delete's
    announcement ended the instance at that undefine: a false final exists, and everything
    the new process used dropped (found by review)."""
    world.poll(read(1, 1000, pid=1))
    world.announce("delete", 2, live=read(2, 1200, pid=1))  # nova's delete then fails
    world.poll(read(3, 1500, pid=1))
    world.announce("reboot", 3.9, live=read(3.9, 1550, pid=1))  # hard reboot: closing read
    world.ledger.process_ended(UUID, world.clock.at(4), stopped_event=True)
    world.ledger.domain_gone(UUID, world.clock.at(4.01))  # undefined, defined again
    world.poll(read(5, 300, pid=2))
    world.poll(read(40, 5300, pid=2))
    world.close_period_of(61)
    assert [e for e in world.exists() if e["final"]] == []
    assert world.billed() == 550 + 5300
    assert world.counters.get("usage.deletes_withdrawn") == 1
    world.announce("delete", 70, live=None)  # the real delete, its domain already gone
    assert len([e for e in world.exists() if e["final"]]) == 1


def test_a_stop_announced_before_the_delete_withdraws_nothing(world):
    """A reboot.start sent before the delete.start (redelivered late) is no sign that the
    delete failed: the delete still ends the instance at the undefine."""
    world.poll(read(1, 1000, pid=1))
    world.announce("delete", 3, live=read(3, 1200, pid=1))
    world.clock.at(2)  # the late reboot.start was sent at minute 2
    world.core.observations.stop_announced(UUID, world.clock.now)
    world.ledger.domain_gone(UUID, world.clock.at(3.1))
    assert len([e for e in world.exists() if e["final"]]) == 1
    assert world.counters.get("usage.deletes_withdrawn") == 0


def test_a_process_started_while_watched_bills_its_boot(world):
    """The issue's first scenario: a guest started while the agent watches is billed from its
    QEMU process's start (counters start at zero), not from the agent's first reading."""
    started = (T0 + datetime.timedelta(minutes=1)).timestamp()
    world.poll(read(1.5, 400, pid=3, started=started))
    world.poll(read(3, 900, pid=3, started=started))
    world.close_period_of(61)
    [report] = world.exists()
    assert report["usage"]["cpu_time_ns"] == 900
    assert report["usage"]["complete"] is True
