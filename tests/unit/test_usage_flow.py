"""Usage through the core's front door (capture.pipeline.Pipeline): process-ending actions take closing readings, delete.samples says
complete or stale and the domain's real state, and the final exists goes out once the domain
is gone after the delete (found gone by the flush's read, or libvirt's undefine).
Real SQLite spool and ledger, in-memory libvirt stand-ins, an injected clock."""
from __future__ import annotations

import dataclasses

import pytest

from lifecycle_stats import counters
from lifecycle_stats.capture.pipeline import Pipeline, Readers, Settings
from lifecycle_stats.interfaces import Outcome
from lifecycle_stats.usage import ledger as usage_ledger, periods
from lifecycle_stats.publishing import payloads, spool
from lifecycle_stats.records import StopAnnouncement, isotime
from tests.support.fakes import AT, UUID, Clock, FakeInspector, FakeRegistry, make_info, make_reading


def reading_at(at, cpu, active=True, domain_id=1):
    """A reading of a QEMU process that started when the ledger did (counted from zero)."""
    return dataclasses.replace(make_reading(active=active), read_at=at,
                               cpu_time_ns=cpu if active else None,
                               process_id=domain_id if active else None,
                               process_started_at=AT.timestamp() if active else None)


def action(name, at, event="compute.instance.{}.start"):
    return StopAnnouncement(instance_id=UUID, event_type=event.format(name), host="cmp1",
                         received_at=at, action=name)


class Host:
    """One agent's capture side on a state directory (re-made to play an agent restart).
    libvirt's events go to the ledger through core.observations, as the agent's do
    (capture/domain_events.py): a deletion's closing reading is recorded before them."""

    def __init__(self, state, clock, inspector, registry):
        self.counters = counters.Counters()
        self.spool = spool.Spool(str(state / "spool.sqlite"), conduits=["test"],
                                 counters=self.counters)
        self.ledger = usage_ledger.UsageLedger(str(state / "usage.sqlite"),
                                               periods.parse("hour"), clock=clock)
        self.core = Pipeline(readers=Readers.one(inspector), registry=registry,
                             spool=self.spool, ledger=self.ledger,
                             settings=Settings("cmp1", "ls.cmp1"), counters=self.counters,
                             clock=clock)
        self.readings = self.core.observations.cache

    def handle(self, trigger):
        """As the agent hands nova's announcements to the core."""
        return self.core.announced(trigger)

    def spooled(self):
        self.core.publication.build_waiting()  # the publication thread's work, synchronously
        return {n.event_type: n for _, n in self.spool.pending("test", 100)}

    def close(self):
        self.spool.close()
        self.ledger.close()


@pytest.fixture
def clock():
    return Clock(AT)


@pytest.fixture
def live():
    return FakeInspector({UUID: reading_at(AT, 1_000)})


@pytest.fixture
def host(tmp_path, clock, live):
    made = Host(tmp_path, clock, live, FakeRegistry({UUID: make_info()}))
    made.ledger.record(make_info(), reading_at(AT, 1_000))  # the poller's first reading
    yield made
    made.close()


def test_a_process_ending_action_takes_a_closing_reading_and_publishes_nothing(host, clock,
                                                                                live):
    live.readings[UUID] = reading_at(clock.advance(30), 4_000)
    assert host.handle(action("power_off", clock.now)) is Outcome.READ
    assert host.spooled() == {}
    latest = host.ledger.latest(UUID)
    assert latest.closed and latest.reading.cpu_time_ns == 4_000
    assert host.readings.get(UUID)[1].cpu_time_ns == 4_000
    assert host.counters.get("flush.action.power_off") == 1


def test_an_action_on_a_domain_already_off_is_counted_missed(host, clock, live):
    live.readings[UUID] = reading_at(clock.advance(30), 0, active=False)
    assert host.handle(action("shelve", clock.now)) is Outcome.MISSED
    assert host.counters.get("flush.action_missed") == 1


def power_off_then_delete(host, clock, live, days=3):
    live.readings[UUID] = reading_at(clock.advance(30), 4_000)
    host.handle(action("power_off", clock.now))
    host.core.observations.process_ended(UUID, clock.advance(0.5))  # libvirt's STOPPED
    live.readings[UUID] = reading_at(clock.advance(days * 86400), 0, active=False)
    return host.handle(action("delete", clock.now))


def test_power_off_then_delete_is_complete_and_says_the_domain_is_off(host, clock, live):
    assert power_off_then_delete(host, clock, live) is Outcome.LAST_KNOWN
    assert "compute.instance.exists" not in host.spooled()  # the domain is still there
    host.core.observations.domain_gone(UUID, clock.advance(1))  # libvirt's undefine
    events = host.spooled()
    capture = events["compute.instance.delete.samples"].payload["capture"]
    assert capture["complete"] is True
    assert (capture["domain_state"], capture["read_state"]) == ("shutoff", "running")
    assert capture["age_ms"] > 3 * 86400 * 1000
    final = events["compute.instance.exists"].payload
    payloads.validate(events["compute.instance.exists"])
    assert final["final"] is True and final["period_source"] == "deleted"
    assert final["usage"]["complete"] is True  # the process ended after a closing reading
    assert final["usage"]["cpu_time_ns"] == 4_000  # from its start: all it used


def test_after_an_agent_restart_the_ledger_stands_in_for_the_cache(tmp_path, host, clock,
                                                                   live):
    live.readings[UUID] = reading_at(clock.advance(30), 4_000)
    host.handle(action("power_off", clock.now))
    host.core.observations.process_ended(UUID, clock.advance(0.5))
    host.close()
    restarted = Host(tmp_path, clock, live, FakeRegistry({UUID: make_info()}))
    live.readings[UUID] = reading_at(clock.advance(600), 0, active=False)
    assert restarted.handle(action("delete", clock.now)) is Outcome.LAST_KNOWN
    note = restarted.spooled()["compute.instance.delete.samples"]
    assert note.payload["capture"]["complete"] is True
    assert [s["volume"] for s in note.payload["samples"] if s["name"] == "cpu"] == [4_000]
    restarted.close()


def test_a_delete_racing_destroy_is_stale_and_the_final_exists_bounds_the_loss(host, clock,
                                                                               live):
    live.readings[UUID] = reading_at(clock.advance(60), 3_000)  # a poll
    host.ledger.record(make_info(), live.readings[UUID])
    del live.readings[UUID]  # nova destroyed it before our read
    clock.advance(2)
    assert host.handle(action("delete", clock.now)) is Outcome.LAST_KNOWN
    events = host.spooled()
    capture = events["compute.instance.delete.samples"].payload["capture"]
    assert capture["complete"] is False and capture["domain_state"] == "gone"
    assert capture["age_ms"] == 2000
    usage = events["compute.instance.exists"].payload["usage"]  # found gone: ended
    assert usage["cpu_time_ns"] == 3_000 and usage["complete"] is False
    assert usage["incomplete_seconds"] == 2.0
    assert usage["usage_incomplete"][0]["reason"] == "ended_unread"


def test_a_live_delete_is_complete_with_all_usage_in_the_final_exists(host, clock, live):
    live.readings[UUID] = reading_at(clock.advance(60), 9_000)
    assert host.handle(action("delete", clock.now)) is Outcome.FINAL
    del live.readings[UUID]
    host.core.observations.domain_gone(UUID, clock.advance(0.2))  # destroyed and undefined
    events = host.spooled()
    assert events["compute.instance.delete.samples"].payload["capture"]["complete"] is True
    final = events["compute.instance.exists"]
    assert final.payload["usage"]["cpu_time_ns"] == 9_000
    assert final.payload["usage"]["usage_incomplete"] == []
    assert final.payload["audit_period_beginning"] == "2026-11-21 12:00:00"
    assert host.spool.seen(final.message_id)


def test_an_instance_never_seen_running_still_gets_its_gauges(tmp_path, clock):
    off = FakeInspector({UUID: reading_at(AT, 0, active=False)})
    fresh = Host(tmp_path, clock, off, FakeRegistry({UUID: make_info()}))
    assert fresh.handle(action("delete", clock.now)) is Outcome.FINAL
    note = fresh.spooled()["compute.instance.delete.samples"]
    names = {s["name"] for s in note.payload["samples"]}
    assert {"vcpus", "memory", "instance", "instance:m1.small"} <= names
    assert all(s["type"] == "gauge" for s in note.payload["samples"])
    assert note.payload["capture"]["complete"] is False
    fresh.close()


def test_a_final_exists_is_not_the_capture_a_retried_delete_supersedes(host, clock, live):
    live.readings[UUID] = reading_at(clock.advance(60), 9_000)
    host.handle(action("delete", clock.now))
    host.core.observations.domain_gone(UUID, clock.advance(1))
    assert "compute.instance.exists" in host.spooled()
    samples = host.spooled()["compute.instance.delete.samples"]
    assert host.spool.last_capture(UUID) == samples.message_id


def test_the_final_exists_is_stamped_no_later_than_nova_announced_the_delete(host, clock, live):
    """Ceilometer's stock meters.yaml turns compute.instance.exists into samples stamped with
    the envelope time; stamped after nova's delete.start they would un-end the instance in
    Gnocchi (as a late delete.samples would)."""
    live.readings[UUID] = reading_at(clock.advance(60), 9_000)
    announced = clock.now
    clock.advance(2)  # the agent handles the announcement two seconds after nova sent it
    trigger = dataclasses.replace(action("delete", clock.now), announced_at=announced)
    assert host.handle(trigger) is Outcome.FINAL
    host.core.observations.domain_gone(UUID, clock.advance(1))
    events = host.spooled()
    assert events["compute.instance.exists"].timestamp == isotime(announced)
    assert events["compute.instance.delete.samples"].timestamp == isotime(announced)
