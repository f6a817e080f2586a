"""The usage ledger on a real SQLite file: growth per counter series and QEMU process, ends
on evidence, unread intervals with their reason, what is owed to the next report, surviving
a reopen (the property over a whole world is tests/unit/test_usage_property.py)."""
from __future__ import annotations

import dataclasses
import datetime
import sqlite3

import pytest

from lifecycle_stats.usage import ledger as usage_ledger, periods
from lifecycle_stats.records import (
    DiskStats, DomainReading, Flavor, InstanceInfo, Notification, VnicStats,
)

UTC = datetime.timezone.utc
T0 = datetime.datetime(2026, 11, 22, 0, 0, tzinfo=UTC)
IID = "7d4f7c8e-1f7e-4b59-9b0e-2f8c7f3b9a01"
INFO = InstanceInfo(IID, "instance-00000001", "vm", Flavor("m1.nano", 64, 1, 0, 0, 1),
                    "user", "u", "project", "p", None, "image", None, "1.1")


def reading(minutes: float, cpu: int, *, domain_id: int | None = 1, disk: int = 0,
            net: int = 0, active: bool = True) -> DomainReading:
    return DomainReading(
        instance_id=IID, domain_name=INFO.domain_name, state="running" if active else "shutoff",
        active=active, cpu_time_ns=cpu if active else None, vcpus=1, memory_kib=65536,
        memory_max_kib=65536,
        disks=(DiskStats("vda", disk, disk * 512, disk, disk * 512),) if active else (),
        vnics=(VnicStats("tap0", net * 100, net, 0, 0, net * 50, net, 0, 0),) if active else (),
        read_at=T0 + datetime.timedelta(minutes=minutes), path="bulk",
        process_id=domain_id if active else None)


@pytest.fixture
def ledger(tmp_path):
    opened = usage_ledger.UsageLedger(str(tmp_path / "usage.sqlite"), periods.parse("hour"))
    yield opened
    opened.close()


def hour(n: int) -> tuple[datetime.datetime, datetime.datetime]:
    return T0 + datetime.timedelta(hours=n), T0 + datetime.timedelta(hours=n + 1)


def owed(ledger, upto=None):
    """What the next report would carry (read by `upto`, not reported yet)."""
    return ledger.pending_usage(IID, upto)


def reasons(used):
    return [(m.reason, m.seconds) for m in used.unobserved]


FIRST_SIGHT = ("running_when_first_seen", 0.0)  # no start time known: from the first reading


def test_growth_is_summed_within_one_process(ledger):
    for minutes, cpu in ((1, 100), (2, 250), (3, 400)):
        ledger.record(INFO, reading(minutes, cpu, disk=cpu, net=cpu))
    used = owed(ledger)
    assert used.totals["cpu_time_ns"] == 300
    assert used.totals["disk:vda:read_bytes"] == 300 * 512
    assert used.totals["vnic:tap0:tx_bytes"] == 300 * 50
    assert used.observed_seconds == 120
    assert reasons(used) == [FIRST_SIGHT]


def test_a_new_process_counts_from_zero_and_the_unseen_end_is_bounded(ledger):
    ledger.record(INFO, reading(1, 1000))
    ledger.record(INFO, reading(2, 1500))
    ledger.record(INFO, reading(5, 200, domain_id=2))  # power-off/on behind our back
    ledger.record(INFO, reading(6, 300, domain_id=2))
    used = owed(ledger)
    assert used.totals["cpu_time_ns"] == 500 + 200 + 100
    assert reasons(used) == [FIRST_SIGHT, ("ended_unread", 180)]  # 00:02 to the new process
    assert ledger.processes(IID) == 2 == used.processes


def test_a_process_whose_start_is_known_bounds_its_predecessor_s_end_by_it(ledger):
    ledger.record(INFO, reading(1, 1000))
    started = (T0 + datetime.timedelta(minutes=3)).timestamp()
    ledger.record(INFO, dataclasses.replace(reading(5, 200, domain_id=2),
                                            process_started_at=started))
    assert reasons(owed(ledger))[1] == ("ended_unread", 120)


def test_a_process_started_after_the_ledger_was_created_counts_from_zero(tmp_path):
    opened = usage_ledger.UsageLedger(str(tmp_path / "u.sqlite"), periods.parse("hour"),
                                      clock=lambda: T0)
    started = (T0 + datetime.timedelta(seconds=5)).timestamp()
    opened.record(INFO, dataclasses.replace(reading(1, 700), process_started_at=started))
    used = opened.pending_usage(IID)
    assert used.totals["cpu_time_ns"] == 700 and used.unobserved == ()
    opened.close()


def test_a_process_running_before_the_ledger_existed_says_what_went_unread(tmp_path):
    opened = usage_ledger.UsageLedger(str(tmp_path / "u.sqlite"), periods.parse("hour"),
                                      clock=lambda: T0 + datetime.timedelta(minutes=1))
    started = T0.timestamp()
    opened.record(INFO, dataclasses.replace(reading(2, 700), process_started_at=started))
    used = opened.pending_usage(IID)
    assert used.totals.get("cpu_time_ns", 0) == 0
    assert reasons(used) == [("running_when_first_seen", 120)]
    opened.close()


def test_a_cpu_decrease_is_another_process_not_negative_usage(ledger):
    ledger.record(INFO, reading(1, 1000, domain_id=None))
    ledger.record(INFO, reading(2, 10, domain_id=None))
    assert owed(ledger).totals["cpu_time_ns"] == 10
    assert ledger.processes(IID) == 2


def test_a_closing_reading_makes_the_end_complete(ledger):
    ledger.record(INFO, reading(1, 100))
    ledger.record(INFO, reading(2, 300), closing=True)  # nova's power_off.start
    ledger.process_ended(IID, T0 + datetime.timedelta(minutes=2, seconds=1))
    latest = ledger.latest(IID)
    assert latest.closed and latest.ended_at is not None and latest.reading.cpu_time_ns == 300
    assert reasons(owed(ledger)) == [FIRST_SIGHT]


def test_an_end_without_closing_reading_is_reported_with_its_bound(ledger):
    ledger.record(INFO, reading(1, 100))
    ledger.record(INFO, reading(10, 0, active=False))  # found shut off
    assert reasons(owed(ledger))[1:] == [("ended_unread", 540)]


def test_a_poll_after_the_closing_reading_means_the_process_ran_on_unread(ledger):
    """No hold time: the closing reading closes only while it is the newest one."""
    ledger.record(INFO, reading(1, 100), closing=True)
    ledger.record(INFO, reading(1.5, 150))  # a poll between nova's .start and the stop
    ledger.process_ended(IID, T0 + datetime.timedelta(minutes=1.6))
    assert reasons(owed(ledger))[1:] == [("ended_unread", pytest.approx(6.0))]


def test_late_readings_of_the_held_or_an_older_process_add_nothing(ledger):
    ledger.record(INFO, reading(5, 500, domain_id=7))
    ledger.record(INFO, reading(4, 100, domain_id=7))  # a slow poll finishing late
    ledger.record(INFO, reading(6, 900, domain_id=6))  # a late reading of an older process
    assert ledger.processes(IID) == 1
    assert ledger.latest(IID).reading.cpu_time_ns == 500
    assert owed(ledger).totals.get("cpu_time_ns", 0) == 0


def test_a_reading_stamped_later_but_sampled_earlier_adds_nothing_and_is_counted(ledger):
    """A bulk poll is stamped when it starts; a flush of the same process stamped after it may
    have sampled earlier (lower cpu). Within one process cpu never goes down, so that reading
    is out of order: it bills nothing (not the process's whole cpu again as a "reset") and
    its stamp only moves the held values' time forward (they were sampled no earlier)."""
    ledger.record(INFO, reading(1, 1000, domain_id=7, disk=10))
    ledger.record(INFO, reading(2, 5000, domain_id=7, disk=50))
    ledger.record(INFO, reading(2.01, 4900, domain_id=7, disk=40), closing=True)
    ledger.record(INFO, reading(3, 6000, domain_id=7, disk=60))
    used = owed(ledger)
    assert used.totals["cpu_time_ns"] == 5000
    assert used.totals["disk:vda:read_bytes"] == 50 * 512
    assert ledger.processes(IID) == 1
    assert ledger.counters.get("usage.readings_out_of_order") == 1
    assert ledger.counters.get("usage.series_resets") == 0


def test_a_lower_cpu_long_after_without_start_times_is_a_new_process_not_a_late_sample(ledger):
    """Same domain id, no start times (a remote URI): a late sample is stamped within the held
    read's duration; minutes later a lower cpu is a process that got the id again."""
    ledger.record(INFO, reading(1, 1000, domain_id=7))
    ledger.record(INFO, reading(2, 5000, domain_id=7))
    ledger.record(INFO, reading(10, 100, domain_id=7))  # libvirtd restarted: id 7 again
    assert owed(ledger).totals["cpu_time_ns"] == 4000 + 100
    assert ledger.counters.get("usage.readings_out_of_order") == 0


def test_the_same_id_with_a_later_start_well_before_its_read_is_a_new_process(tmp_path):
    """Host reboot: ids restart at 1, so the new process may get the held one's id; its
    start (hours later, read well before the reading) tells it apart even when its cpu is
    already above the old process's last reading (before: SAME, its growth taken against the
    old process's counters, found by review). The pid-file race pairs the held id with a
    start no earlier than the read itself: that stays SAME (next test)."""
    ledger = usage_ledger.UsageLedger(str(tmp_path / "usage.sqlite"), periods.parse("day"),
                                      clock=lambda: T0 - datetime.timedelta(days=1))
    first = (T0 + datetime.timedelta(minutes=0.5)).timestamp()
    second = (T0 + datetime.timedelta(minutes=200)).timestamp()
    for minutes, cpu, disk, started in ((1, 1000, 10, first), (2, 2000, 20, first),
                                        (500, 9000, 90, second)):
        ledger.record(INFO, dataclasses.replace(reading(minutes, cpu, domain_id=1, disk=disk),
                                                process_started_at=started))
    used = owed(ledger)
    assert ledger.processes(IID) == 2
    assert used.totals["cpu_time_ns"] == 2000 + 9000
    assert used.totals["disk:vda:read_requests"] == 20 + 90
    ledger.close()


def test_the_same_id_with_a_start_read_after_the_stats_is_the_held_process(ledger):
    """The pid-file race: the stats are the held process's, the start the next one's (it
    began after the read did)."""
    started = T0.timestamp()
    ledger.record(INFO, dataclasses.replace(reading(1, 1000, domain_id=7),
                                            process_started_at=started))
    raced = (T0 + datetime.timedelta(minutes=2, seconds=0.3)).timestamp()
    ledger.record(INFO, dataclasses.replace(reading(2, 5000, domain_id=7),
                                            process_started_at=raced))
    assert ledger.processes(IID) == 1
    assert owed(ledger).totals["cpu_time_ns"] == 4000


def test_without_start_times_a_lower_id_after_the_held_process_ended_is_a_new_process(ledger):
    """A host reboot hands out ids from 1 again: a lower id read after the held process
    ended is the new process (before: OLDER, every reading of it dropped, found by
    review); a lower id read while the held one runs stays a late reading (test above)."""
    ledger.record(INFO, reading(1, 1000, domain_id=9))
    ledger.record(INFO, reading(2, 2000, domain_id=9))
    ledger.record(INFO, reading(3, 0, domain_id=9, active=False))  # shut off: the host goes down
    for minutes, cpu in ((30, 500), (60, 90000), (600, 9_000_000)):
        ledger.record(INFO, reading(minutes, cpu, domain_id=1))
    assert owed(ledger).totals["cpu_time_ns"] == 1000 + 9_000_000
    assert ledger.processes(IID) == 2
    assert ledger.counters.get("usage.readings_of_ended_processes") == 0


def test_without_start_times_a_lower_id_long_after_the_last_reading_is_a_new_process(ledger):
    ledger.record(INFO, reading(1, 1000, domain_id=9))
    ledger.record(INFO, reading(2, 2000, domain_id=9))  # the host went down unseen
    ledger.record(INFO, reading(40, 700, domain_id=2))
    assert ledger.processes(IID) == 2
    assert owed(ledger).totals["cpu_time_ns"] == 1000 + 700


def test_with_the_same_start_known_a_lower_cpu_is_out_of_order_however_late(ledger):
    started = T0.timestamp()
    for minutes, cpu in ((1, 1000), (2, 5000), (10, 100)):
        ledger.record(INFO, dataclasses.replace(reading(minutes, cpu, domain_id=7),
                                                process_started_at=started))
    assert owed(ledger).totals["cpu_time_ns"] == 4000
    assert ledger.counters.get("usage.readings_out_of_order") == 1


def test_an_out_of_order_closing_reading_keeps_the_newer_values_and_closes(ledger):
    ledger.record(INFO, reading(1, 1000, domain_id=7))
    ledger.record(INFO, reading(2, 5000, domain_id=7))  # a poll that sampled after the flush
    ledger.record(INFO, reading(2.01, 4900, domain_id=7), closing=True)  # the flush
    ledger.process_ended(IID, T0 + datetime.timedelta(minutes=2.02))
    latest = ledger.latest(IID)
    assert latest.closed and latest.reading.cpu_time_ns == 5000
    assert reasons(owed(ledger)) == [FIRST_SIGHT]


def test_what_is_owed_is_what_was_read_by_the_report_s_end(ledger):
    ledger.record(INFO, reading(50, 100))
    ledger.record(INFO, reading(70, 400))
    ledger.record(INFO, reading(130, 1000))
    assert owed(ledger, hour(0)[1]).totals.get("cpu_time_ns", 0) == 0
    assert owed(ledger, hour(1)[1]).totals["cpu_time_ns"] == 300
    assert owed(ledger, hour(2)[1]).totals["cpu_time_ns"] == 900


@pytest.mark.allow_error_logs
def test_the_ledger_survives_a_reopen_and_moves_a_newer_schema_aside(tmp_path):
    path = str(tmp_path / "usage.sqlite")
    first = usage_ledger.UsageLedger(path, periods.parse("hour"))
    first.record(INFO, reading(1, 100))
    first.record(INFO, reading(2, 700))
    first.close()  # (kill -9: tests/unit/test_usage_property.py reopens without closing)
    second = usage_ledger.UsageLedger(path, periods.parse("hour"))
    assert second.pending_usage(IID).totals["cpu_time_ns"] == 600 and not second.moved_aside
    second.close()
    db = sqlite3.connect(path)
    db.execute("PRAGMA user_version=99")
    db.close()
    third = usage_ledger.UsageLedger(path, periods.parse("hour"))
    assert third.moved_aside and third.counters.get("usage.ledger_moved_aside") == 1
    assert third.latest(IID) is None
    assert sqlite3.connect(third.moved_aside).execute("PRAGMA user_version").fetchone() == (99,)
    third.close()


def test_hosted_excludes_instances_ended_by_the_period_end(ledger):
    ledger.record(INFO, reading(10, 100))
    assert [i.instance_id for i in ledger.hosted(*hour(0))] == [IID]
    ledger.delete_announced(IID, T0 + datetime.timedelta(minutes=20))
    assert [i.instance_id for i in ledger.hosted(*hour(0))] == [IID]  # announced only
    ledger.domain_gone(IID, T0 + datetime.timedelta(minutes=21))
    assert ledger.hosted(*hour(1)) == []


def test_prune_forgets_what_was_reported_never_what_is_owed(tmp_path):
    ledger = usage_ledger.UsageLedger(str(tmp_path / "u.sqlite"), periods.parse("hour"),
                                      retention=datetime.timedelta(hours=2))
    ledger.record(INFO, reading(10, 100))
    ledger.record(INFO, reading(20, 300))
    note = Notification("compute.instance.exists", "INFO", "p", {}, "m-1", "t")
    ledger.claim_report("m-1", IID, hour(0)[1], lambda used: note, begin=hour(0)[0],
                        end=hour(0)[1], tier="periodic", source="agent_period", now=hour(1)[0])
    ledger.record(INFO, reading(200, 900))
    ledger.record(INFO, reading(210, 1000))
    ledger.prune(T0 + datetime.timedelta(hours=4))  # reported, but not spooled yet: kept
    assert ledger.unspooled_reports() == [("periodic", note)]
    ledger.mark_spooled(["m-1"], hour(1)[0])
    ledger.prune(T0 + datetime.timedelta(hours=4))
    reported = ledger._db.execute("SELECT count(*) FROM entries WHERE report = 'm-1'")
    assert reported.fetchone() == (0,)
    assert owed(ledger).totals["cpu_time_ns"] == 700  # owed: kept however old
    ledger.close()


@pytest.mark.allow_error_logs
def test_a_failing_ledger_is_counted_and_never_raises_into_a_capture(ledger):
    ledger.record(INFO, reading(1, 100))
    ledger._db.close()  # as good as a disk that went away
    ledger.record(INFO, reading(2, 200))
    ledger.process_ended(IID, T0)
    assert ledger.latest(IID) is None
    assert ledger.counters.get("usage.ledger_errors") == 3


def test_a_process_id_of_minus_one_is_unknown_not_a_new_process(ledger):
    ledger.record(INFO, reading(1, 100, domain_id=7))
    ledger.record(INFO, reading(2, 300, domain_id=-1))  # a handle looked up while it was off
    ledger.record(INFO, reading(3, 600, domain_id=7))
    assert ledger.processes(IID) == 1
    assert owed(ledger).totals["cpu_time_ns"] == 500


def test_a_reading_taken_before_its_process_ended_adds_its_growth_to_that_process(ledger):
    """A bulk poll requested before nova's destroy returns after libvirt's STOPPED was
    handled: its reading (same QEMU process, stamped before the end) is late growth of that
    process, not a new process counting from zero."""
    ledger.record(INFO, reading(1, 350, domain_id=7))
    ledger.record(INFO, reading(2, 500, domain_id=7), closing=True)  # nova's power_off.start
    ledger.process_ended(IID, T0 + datetime.timedelta(minutes=3))  # libvirt: stopped
    ledger.record(INFO, reading(2.5, 540, domain_id=7))  # the poll that finished late
    ledger.record(INFO, reading(4, 100, domain_id=8))  # powered on again
    ledger.record(INFO, reading(5, 550, domain_id=8))
    assert ledger.processes(IID) == 2
    assert owed(ledger).totals["cpu_time_ns"] == 190 + 550


def test_an_end_contradicted_by_a_later_reading_of_the_same_process_is_withdrawn(ledger):
    ledger.record(INFO, reading(1, 100, domain_id=7))
    ledger.process_ended(IID, T0 + datetime.timedelta(minutes=2))
    ledger.record(INFO, reading(3, 400, domain_id=7))  # it was running all along
    used = owed(ledger)
    assert used.totals["cpu_time_ns"] == 300 and reasons(used) == [FIRST_SIGHT]
    assert ledger.latest(IID).ended_at is None


def test_a_slow_poll_stamped_before_the_new_process_started_bounds_nothing_by_its_stamp(ledger):
    """The predecessor ended unseen before the new process started, not before the poll that
    read the new process was stamped (a bulk poll is stamped when it is asked)."""
    ledger.record(INFO, reading(1, 100, domain_id=7))
    started = (T0 + datetime.timedelta(minutes=5)).timestamp()
    slow = dataclasses.replace(reading(4, 30, domain_id=8), process_started_at=started)
    ledger.record(INFO, slow)
    assert reasons(owed(ledger))[1:] == [("ended_unread", 240)]  # 00:01 to 00:05


def test_a_stopped_event_after_the_held_process_ended_tells_of_an_unread_process(ledger):
    """libvirt's STOPPED when the ledger's process had ended: another process started and
    stopped without a reading (its start read failed); that time ran unread."""
    ledger.record(INFO, reading(1, 100, domain_id=7), closing=True)
    ledger.process_ended(IID, T0 + datetime.timedelta(minutes=2), stopped_event=True)
    ledger.process_ended(IID, T0 + datetime.timedelta(minutes=9), stopped_event=True)
    assert reasons(owed(ledger))[1:] == [("ended_unread", 420)]


def test_an_undefine_before_the_delete_announcement_is_heard_still_ends_the_instance(ledger):
    """A delete read racing nova's destroy returns after it; libvirt's undefine is handled
    first, the announcement then finds the domain gone."""
    ledger.record(INFO, reading(1, 100))
    ledger.domain_gone(IID, T0 + datetime.timedelta(minutes=2))
    assert ledger.ended(IID) is None  # no delete announced: a resize, a migration
    assert ledger.delete_announced(IID, T0 + datetime.timedelta(minutes=1, seconds=59))
    assert ledger.ended(IID) is not None


def test_a_domain_seen_again_after_an_undefine_is_not_gone(ledger):
    ledger.record(INFO, reading(1, 100))
    ledger.domain_gone(IID, T0 + datetime.timedelta(minutes=2))  # resized: undefined ...
    ledger.record(INFO, reading(3, 50, domain_id=2))  # ... defined and started again
    assert not ledger.delete_announced(IID, T0 + datetime.timedelta(minutes=4))
    assert ledger.ended(IID) is None


# The reports table of schema version 2, as that release created it: a report's tier was
# named `kind`. A v2 file is made here from today's by the inverse of the migration.
V2_REPORTS = ["message_id", "instance_id", "kind", "source", "notification", "made_at",
              "spooled_at", "version"]


def test_a_schema_2_ledger_is_migrated_in_place_keeping_what_it_owes(tmp_path):
    path = str(tmp_path / "usage.sqlite")
    first = usage_ledger.UsageLedger(path, periods.parse("hour"))
    first.record(INFO, reading(10, 100))
    first.record(INFO, reading(20, 300))
    note = Notification("compute.instance.exists", "INFO", "p", {}, "m-1", "t")
    first.claim_report("m-1", IID, hour(0)[1], lambda used: note, begin=hour(0)[0],
                       end=hour(0)[1], tier="periodic", source="agent_period", now=hour(1)[0])
    first.record(INFO, reading(70, 900))
    first.close()
    db = sqlite3.connect(path)
    db.executescript("ALTER TABLE reports RENAME COLUMN tier TO kind; PRAGMA user_version=2;")
    assert [row[1] for row in db.execute("PRAGMA table_info(reports)")] == V2_REPORTS
    db.close()
    second = usage_ledger.UsageLedger(path, periods.parse("hour"))
    try:
        assert not second.moved_aside
        assert second._db.execute("PRAGMA user_version").fetchone() == (3,)
        columns = [row[1] for row in second._db.execute("PRAGMA table_info(reports)")]
        assert "tier" in columns and "kind" not in columns
        assert second.unspooled_reports() == [("periodic", note)]  # still owed to the spool
        assert owed(second).totals["cpu_time_ns"] == 600  # the reading after the report
    finally:
        second.close()
