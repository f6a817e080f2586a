"""Poller and libvirt-event handling keep the registry and the last readings right."""
import dataclasses
import datetime
import time

import pytest

from lifecycle_stats import counters
from lifecycle_stats.capture import domain_events, last_readings, poller
from lifecycle_stats.capture.observations import Observations
from lifecycle_stats.interfaces import NoUsage
from lifecycle_stats.records import LifecycleEvent
from tests.support.fakes import (
    NOW, UUID, Clock, FakeInspector, FakeRegistry, make_info, make_reading,
)

OTHER = "0b0b0b0b-0000-4000-8000-000000000001"


class PollingInspector(FakeInspector):
    def poll(self):
        return dict(self.readings)


class RecordingRegistry(FakeRegistry):
    """refresh_by_uuid() records what was asked for; a uuid in `gone` is forgotten, as the
    real registry does when libvirt says the domain no longer exists."""

    def __init__(self, *a, gone=(), **kw):
        super().__init__(*a, **kw)
        self.refreshed, self.forgotten, self.gone = [], [], set(gone)

    def forget(self, instance_id):
        self.forgotten.append(instance_id)
        self.infos.pop(instance_id, None)

    def refresh_by_uuid(self, instance_id):
        if instance_id in self.gone:
            self.forget(instance_id)
            return None
        self.refreshed.append(instance_id)
        return self.infos.get(instance_id)


def test_poll_caches_nova_instances_only():
    registry = RecordingRegistry({UUID: make_info()}, not_nova=[OTHER])
    readings = last_readings.LastReadings(clock=lambda: NOW)
    other = dataclasses.replace(make_reading(), instance_id=OTHER)
    p = poller.Poller(reader=PollingInspector({UUID: make_reading(), OTHER: other}),
                      registry=registry, observations=Observations(readings, NoUsage()),
                      interval=60, counters=counters.Counters())
    assert p.poll_once() == 1
    assert readings.get(UUID)[1].cpu_time_ns == 5_000_000 and readings.get(OTHER) is None


def handler(registry, inspector, readings):
    c = counters.Counters()
    h = domain_events.DomainEventHandler(reader=inspector, registry=registry,
                                         observations=Observations(readings, NoUsage()),
                                         counters=c)
    return h, c


def event(name, detail="", instance_id=UUID):
    return LifecycleEvent(instance_id, "instance-0000002a", name, detail, NOW)


def test_shutdown_takes_a_reading_while_qemu_still_answers():
    readings = last_readings.LastReadings(clock=lambda: NOW)
    newer = dataclasses.replace(make_reading(), cpu_time_ns=7_000_000)
    h, c = handler(RecordingRegistry({UUID: make_info()}), FakeInspector({UUID: newer}), readings)
    h(event("shutdown", "host"))
    assert readings.get(UUID)[1].cpu_time_ns == 7_000_000 and c.get("events.stop_reads") == 1


def test_shutdown_of_a_domain_already_gone_keeps_the_cached_reading():
    readings = last_readings.LastReadings(clock=lambda: NOW)
    readings.update(make_info(), make_reading())
    h, c = handler(RecordingRegistry({UUID: make_info()}), FakeInspector({}), readings)
    h(event("shutdown", "host"))
    assert readings.get(UUID)[1].cpu_time_ns == 5_000_000
    assert c.get("events.stop_read_missed") == 1


def test_defined_and_metadata_events_refresh_and_undefined_forgets():
    registry = RecordingRegistry({UUID: make_info()}, gone=[OTHER])
    readings = last_readings.LastReadings(clock=lambda: NOW)
    readings.update(make_info(), make_reading())
    h, _ = handler(registry, FakeInspector({}), readings)
    h(event("defined", "added"))
    h(event("metadata_changed", "element"))
    h(event("started", "booted", instance_id=OTHER))  # gone again by now: forgotten
    assert registry.refreshed == [UUID, UUID] and registry.forgotten == [OTHER]
    h(event("undefined", "removed"))
    assert registry.forgotten == [OTHER, UUID]
    assert readings.get(UUID) is not None  # kept for a late delete.start (last_known)
    h(event("stopped", "migrated"))  # a stop is not a deletion: nothing happens
    assert registry.forgotten == [OTHER, UUID]


def later(reading, seconds, **fields):
    return dataclasses.replace(reading, read_at=reading.read_at
                               + datetime.timedelta(seconds=seconds), **fields)


def test_a_stale_poll_does_not_overwrite_a_newer_stop_time_reading():
    readings = last_readings.LastReadings(clock=lambda: NOW)
    polled = dataclasses.replace(make_reading(), process_id=7)  # requested at AT
    at_stop = later(polled, 0.05, cpu_time_ns=9_000_000, path="single")
    readings.update(make_info(), at_stop)
    readings.update(make_info(), polled)  # the poll's result arrives after the stop read
    assert readings.get(UUID)[1] is at_stop


def test_within_one_process_the_higher_counters_win_whatever_the_stamps():
    readings = last_readings.LastReadings(clock=lambda: NOW)
    high = dataclasses.replace(make_reading(), process_id=7, cpu_time_ns=9_000_000)
    readings.update(make_info(), high)
    readings.update(make_info(), later(high, 1, cpu_time_ns=8_000_000))  # clock stepped back
    assert readings.get(UUID)[1] is high
    # a new QEMU process restarts its counters: the later reading wins there
    restarted = later(high, 2, process_id=8, cpu_time_ns=1_000)
    readings.update(make_info(), restarted)
    assert readings.get(UUID)[1] is restarted


def test_a_hard_reboot_does_not_start_the_retention_clock():
    clock = Clock(NOW)
    readings = last_readings.LastReadings(retention=datetime.timedelta(hours=1), clock=clock)
    readings.update(make_info(), make_reading())
    h, _ = handler(RecordingRegistry({UUID: make_info()}), FakeInspector({}), readings)
    for name, detail in (("stopped", "destroyed"), ("undefined", "removed"),
                         ("defined", "added"), ("started", "booted")):
        h(event(name, detail))  # nova's hard reboot, rescue or resize: undefine + define
    clock.now += datetime.timedelta(hours=2)
    assert readings.prune() == 0 and readings.get(UUID) is not None


class SyncingRegistry(RecordingRegistry):
    def __init__(self, *a, present=(), **kw):
        super().__init__(*a, **kw)
        self.present = set(present)

    def sync(self):
        return set(self.present)


def test_resync_expires_entries_of_domains_that_vanished_while_events_were_down():
    clock = Clock(NOW)
    readings = last_readings.LastReadings(retention=datetime.timedelta(hours=1), clock=clock)
    readings.update(make_info(), make_reading())
    readings.update(make_info(), dataclasses.replace(make_reading(), instance_id=OTHER))
    readings.domain_gone(OTHER)  # an undefine heard before the connection dropped ...
    registry = SyncingRegistry({UUID: make_info()}, present=[OTHER])  # ... then defined again
    h, _ = handler(registry, FakeInspector({}), readings)
    h.resync()  # UUID vanished while no event could be heard
    clock.now += datetime.timedelta(hours=2)
    assert readings.prune() == 1
    assert readings.get(UUID) is None and readings.get(OTHER) is not None


class FlakyInspector(PollingInspector):
    """Its first polls fail the way a bug or a partial record would: not a libvirt error."""

    def __init__(self, *a, failures=2, **kw):
        super().__init__(*a, **kw)
        self.failures = failures

    def poll(self):
        if self.failures:
            self.failures -= 1
            raise KeyError("net.0.rx.bytes")
        return super().poll()


@pytest.mark.allow_error_logs
def test_the_poller_survives_any_exception_and_says_when_it_last_succeeded(caplog):
    c = counters.Counters()
    readings = last_readings.LastReadings(clock=lambda: NOW)
    p = poller.Poller(reader=FlakyInspector({UUID: make_reading()}),
                      registry=RecordingRegistry({UUID: make_info()}),
                      observations=Observations(readings, NoUsage()),
                      interval=0.01, counters=c, clock=lambda: NOW)
    assert p.thread_state == "not started" and p.last_success_at is None
    p.start()
    try:
        deadline = time.monotonic() + 5
        while c.get("poller.polls") == 0:
            assert time.monotonic() < deadline, "the poller never recovered"
            time.sleep(0.01)
        assert p.thread_state == "alive"
    finally:
        p.stop()
    assert c.get("poller.errors") == 2 and p.last_success_at == NOW
    assert readings.get(UUID) is not None
    assert "bulk poll failed unexpectedly" in caplog.text
    assert p.thread_state == "stopped"
