"""The usage ledger on a real SQLite file: increments across QEMU processes, never negative,
bucketed by audit period, surviving a reopen; property: periods sum to the total growth."""
from __future__ import annotations

import datetime
import sqlite3

import pytest
from hypothesis import given, settings, strategies as st

from lifecycle_stats.usage import ledger as usage_ledger, periods
from lifecycle_stats.records import DiskStats, DomainReading, Flavor, InstanceInfo, VnicStats

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


def test_growth_is_summed_within_one_process(ledger):
    for minutes, cpu in ((1, 100), (2, 250), (3, 400)):
        ledger.record(INFO, reading(minutes, cpu, disk=cpu, net=cpu))
    used = ledger.usage(IID, *hour(0))
    assert used.totals["cpu_time_ns"] == 300
    assert used.totals["disk:vda:read_bytes"] == 300 * 512
    assert used.totals["vnic:tap0:tx_bytes"] == 300 * 50
    assert used.observed_seconds == 120
    assert used.unobserved == ()


def test_a_new_process_counts_from_zero_and_the_unseen_end_is_bounded(ledger):
    ledger.record(INFO, reading(1, 1000))
    ledger.record(INFO, reading(2, 1500))
    ledger.record(INFO, reading(5, 200, domain_id=2))  # power-off/on behind our back
    ledger.record(INFO, reading(6, 300, domain_id=2))
    used = ledger.usage(IID, *hour(0))
    assert used.totals["cpu_time_ns"] == 500 + 200 + 100
    assert [m.seconds for m in used.unobserved] == [180]  # from 00:02 to the new process
    assert ledger.processes(IID) == 2 == used.processes


def test_a_decrease_is_a_reset_not_negative_usage(ledger):
    ledger.record(INFO, reading(1, 1000, domain_id=None))
    ledger.record(INFO, reading(2, 10, domain_id=None))
    assert ledger.usage(IID, *hour(0)).totals["cpu_time_ns"] == 10
    assert ledger.processes(IID) == 2


def test_a_closing_reading_makes_the_end_complete(ledger):
    ledger.record(INFO, reading(1, 100))
    ledger.record(INFO, reading(2, 300), closing=True)  # nova's power_off.start
    ledger.process_ended(IID, T0 + datetime.timedelta(minutes=2, seconds=1))
    latest = ledger.latest(IID)
    assert latest.closed and latest.ended_at is not None and latest.reading.cpu_time_ns == 300
    assert ledger.usage(IID, *hour(0)).unobserved == ()


def test_an_end_without_closing_reading_is_reported_with_its_bound(ledger):
    ledger.record(INFO, reading(1, 100))
    ledger.record(INFO, reading(10, 0, active=False))  # found shut off
    missed = ledger.usage(IID, *hour(0)).unobserved
    assert [m.seconds for m in missed] == [540]


def test_readings_older_than_the_held_one_are_ignored(ledger):
    ledger.record(INFO, reading(5, 500))
    ledger.record(INFO, reading(4, 100, domain_id=7))  # a slow poll finishing late
    assert ledger.processes(IID) == 1
    assert ledger.latest(IID).reading.cpu_time_ns == 500


def test_usage_lands_in_the_period_of_its_reading(ledger):
    ledger.record(INFO, reading(50, 100))
    ledger.record(INFO, reading(70, 400))
    ledger.record(INFO, reading(130, 1000))
    assert ledger.usage(IID, *hour(0)).totals.get("cpu_time_ns", 0) == 0
    assert ledger.usage(IID, *hour(1)).totals["cpu_time_ns"] == 300
    assert ledger.usage(IID, *hour(2)).totals["cpu_time_ns"] == 600
    assert ledger.usage(IID, hour(0)[0], hour(2)[1]).totals["cpu_time_ns"] == 900


def test_the_ledger_survives_a_reopen_and_refuses_a_newer_schema(tmp_path):
    path = str(tmp_path / "usage.sqlite")
    first = usage_ledger.UsageLedger(path, periods.parse("hour"))
    first.record(INFO, reading(1, 100))
    first.record(INFO, reading(2, 700))
    first.close()  # (kill -9 is covered by the integration tier)
    second = usage_ledger.UsageLedger(path, periods.parse("hour"))
    assert second.usage(IID, *hour(0)).totals["cpu_time_ns"] == 600
    second.close()
    db = sqlite3.connect(path)
    db.execute("PRAGMA user_version=99")
    db.close()
    with pytest.raises(sqlite3.DatabaseError, match="schema version 99"):
        usage_ledger.UsageLedger(path, periods.parse("hour"))


def test_hosted_excludes_instances_deleted_by_the_period_end(ledger):
    ledger.record(INFO, reading(10, 100))
    assert [i.instance_id for i in ledger.hosted(*hour(0))] == [IID]
    ledger.instance_deleted(IID, T0 + datetime.timedelta(minutes=20))
    assert ledger.hosted(*hour(0)) == []


def test_prune_forgets_old_periods_only(tmp_path):
    ledger = usage_ledger.UsageLedger(str(tmp_path / "u.sqlite"), periods.parse("hour"),
                                      retention=datetime.timedelta(hours=2))
    ledger.record(INFO, reading(10, 100))
    ledger.record(INFO, reading(200, 900))
    ledger.prune(T0 + datetime.timedelta(hours=4))
    assert ledger.usage(IID, *hour(0)).first_read_at is None
    assert ledger.usage(IID, *hour(3)).totals["cpu_time_ns"] == 800
    ledger.close()


# One step of a counter's life: grow by some amount; restart in a new QEMU process (new domain
# id) at a value; or reset within the same id to a lower value (a decrease is a new process).
steps = st.lists(st.tuples(st.sampled_from(["grow", "restart", "reset"]),
                           st.integers(0, 10**9), st.integers(1, 4000)),
                 min_size=1, max_size=40)


@settings(max_examples=60, deadline=None)
@given(steps=steps)
def test_periods_sum_to_the_total_growth(tmp_path_factory, steps):
    ledger = usage_ledger.UsageLedger(str(tmp_path_factory.mktemp("p") / "u.sqlite"),
                                      periods.parse("hour"))
    cpu, domain_id, seconds, expected = 0, 1, 0, 0
    ledger.record(INFO, reading(0, 0))
    for kind, amount, gap in steps:
        seconds += gap
        if kind == "restart":
            cpu, domain_id = amount, domain_id + 1
            expected += amount
        elif kind == "reset" and cpu > 0:
            cpu = amount % cpu  # lower than before: counted from zero
            expected += cpu
        else:
            cpu += amount
            expected += amount
        ledger.record(INFO, reading(seconds / 60, cpu, domain_id=domain_id, disk=cpu // 3))
    hours = [ledger.usage(IID, *hour(n)) for n in range(seconds // 3600 + 1)]
    ledger.close()
    assert sum(u.totals.get("cpu_time_ns", 0) for u in hours) == expected
    assert all(value >= 0 for u in hours for value in u.totals.values())


def test_a_closing_reading_holds_through_polls_that_follow_it_shortly(ledger):
    ledger.record(INFO, reading(1, 100), closing=True)
    ledger.record(INFO, reading(1.5, 150))  # a poll between nova's .start and the stop
    ledger.process_ended(IID, T0 + datetime.timedelta(minutes=1.6))
    assert ledger.usage(IID, *hour(0)).unobserved == ()


def test_a_closing_reading_long_ago_does_not_close_a_process_that_ran_on(ledger):
    ledger.record(INFO, reading(1, 100), closing=True)  # a power_off that failed
    ledger.record(INFO, reading(30, 900))
    ledger.process_ended(IID, T0 + datetime.timedelta(minutes=31))
    assert [m.seconds for m in ledger.usage(IID, *hour(0)).unobserved] == [60]


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
    assert ledger.usage(IID, *hour(0)).totals["cpu_time_ns"] == 500


def test_a_reading_taken_before_its_process_ended_is_not_a_new_process(ledger):
    """A bulk poll requested before nova's destroy returns after libvirt's STOPPED was
    handled: its reading (same QEMU process, stamped before the end) is late, not a new
    process counting from zero (measured on the real daemon: cpu counted twice)."""
    ledger.record(INFO, reading(1, 350, domain_id=7))
    ledger.record(INFO, reading(2, 500, domain_id=7), closing=True)  # nova's power_off.start
    ledger.process_ended(IID, T0 + datetime.timedelta(minutes=3))  # libvirt: stopped
    ledger.record(INFO, reading(2.5, 540, domain_id=7))  # the poll that finished late
    ledger.record(INFO, reading(4, 100, domain_id=8))  # powered on again
    ledger.record(INFO, reading(5, 550, domain_id=8))
    assert ledger.processes(IID) == 2
    assert ledger.usage(IID, *hour(0)).totals["cpu_time_ns"] == 150 + 550
