"""Audit periods closing on an injected clock (no sleeping): the pre-end poll, one exists per
hosted instance per period, backlog after downtime, nova's own window when enriching."""
from __future__ import annotations

import contextlib
import dataclasses
import datetime

import pytest

from lifecycle_stats.usage import reports as usage_reports
from lifecycle_stats.publishing import payloads
from lifecycle_stats.records import AuditWindow
from tests.support.fakes import UUID, Clock, make_info, make_reading
from tests.support.usage_files import UsageFiles

UTC = datetime.timezone.utc
START = datetime.datetime(2026, 11, 22, 0, 50, tzinfo=UTC)


class World(UsageFiles):
    """A guest whose cpu grows 1000 ns a second, polled whenever the closer asks."""

    def __init__(self, tmp_path, *, emit_own=True):
        super().__init__(tmp_path, Clock(START))
        self.spool = self.real_spool
        self.reporter = usage_reports.ExistsReporter(
            ledger=self.ledger, spool=self.spool, host="cmp1", publisher_id="ls.cmp1",
            counters=self.counters, clock=self.clock)
        self.ledger.on_instance_ended = self.reporter.final_due
        self.waits: list[float] = []
        self.closer = self.make_closer(self.reporter, poll=self.poll, emit_own=emit_own,
                                       wait=self.wait)

    def poll(self):
        cpu = int((self.clock.now - START).total_seconds() * 1000)
        reading = dataclasses.replace(make_reading(), read_at=self.clock.now, cpu_time_ns=cpu,
                                      process_id=1)
        self.ledger.record(make_info(), reading)

    def wait(self, seconds: float) -> bool:
        self.waits.append(seconds)
        self.clock.advance(seconds)
        return False  # not stopped


@pytest.fixture
def world(tmp_path):
    with contextlib.closing(World(tmp_path)) as made:
        yield made


def test_each_period_end_polls_first_then_emits_the_period(world):
    world.poll()  # 00:50, cpu 0
    assert world.closer.step()  # waits to 00:59:58, polls, waits past 01:00
    assert world.waits == [598.0, 2.001]
    assert world.exists() == []  # 00:00-01:00 is only now completed: next step closes it
    world.closer.step()
    [note] = world.exists()
    payloads.validate(note)
    assert note.payload["audit_period_beginning"] == "2026-11-22 00:00:00"
    assert note.payload["audit_period_ending"] == "2026-11-22 01:00:00"
    assert note.payload["usage"]["cpu_time_ns"] == 598_000  # read 2 s before the end
    assert note.payload["final"] is False and note.payload["period_source"] == "agent_period"
    assert note.payload["bandwidth"] == {"tap1": {"bw_in": 0, "bw_out": 0}}


def test_consecutive_periods_add_up_to_the_whole_growth(world):
    world.poll()
    for _ in range(4):
        world.closer.step()
    world.closer.close_due()
    total = sum(n.payload["usage"]["cpu_time_ns"] for n in world.exists())
    world.poll()
    owed = world.ledger.pending_usage(UUID)  # read, not reported yet: the next exists's
    assert total + owed.totals["cpu_time_ns"] == int(
        (world.clock.now - START).total_seconds() * 1000)
    assert len(world.exists()) == 4  # 00-01, 01-02, 02-03, 03-04


def test_periods_missed_while_down_are_closed_once_with_the_same_ids(world, tmp_path):
    world.poll()
    world.clock.advance(3 * 3600)  # the agent was down for three period ends
    world.poll()
    assert world.closer.close_due() == 3
    assert world.closer.close_due() == 0  # closed periods are remembered (the ledger)
    ids = {n.message_id for n in world.exists()}
    assert len(ids) == 3
    assert world.counters.get("usage.periods_closed") == 3  # none before the first reading


def test_enrichment_uses_nova_s_window_and_the_same_id_for_the_same_window(tmp_path):
    world = World(tmp_path, emit_own=False)
    world.poll()
    world.closer.step()  # the pre-end poll runs all the same
    assert world.closer.close_due() == 0  # nova's exists drive it
    begin, end = world.ledger.period.last_completed(world.clock.now)
    window = AuditWindow(UUID, "instance.exists", "cmp1", begin, end, world.clock.now)
    assert world.reporter.nova_audit(window, None)  # identity from the ledger
    assert not world.reporter.nova_audit(window, make_info())  # legacy + versioned: once
    [note] = world.exists()
    assert note.payload["period_source"] == "nova_audit"
    assert note.payload["nova_event_type"] == "instance.exists"
    assert note.payload["usage"]["cpu_time_ns"] == 598_000
    world.close()


def test_an_unknown_instance_in_nova_s_audit_is_counted_not_invented(world):
    other = "00000000-0000-4000-8000-000000000001"
    window = AuditWindow(other, "compute.instance.exists", "cmp1", START, START, START)
    assert not world.reporter.nova_audit(window, None)
    assert world.counters.get("usage.nova_exists_unknown") == 1


def test_nova_s_exists_of_an_instance_deleted_in_its_window_is_not_billed_twice(world):
    world.poll()
    world.clock.advance(600)
    world.poll()
    world.ledger.delete_announced(UUID, world.clock.now, gone=True)  # deleted at 01:00
    begin, end = world.ledger.period.current(START)
    window = AuditWindow(UUID, "compute.instance.exists", "cmp1", begin, end, world.clock.now)
    assert not world.reporter.nova_audit(window, make_info())
    assert [n.payload["final"] for n in world.exists()] == [True]
    assert world.counters.get("usage.nova_exists_after_final") == 1
