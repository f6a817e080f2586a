"""Poller and libvirt-event handling keep the registry and the last readings right."""
import dataclasses

from lifecycle_stats import counters
from lifecycle_stats.capture import domain_events, last_readings, poller
from lifecycle_stats.records import LifecycleEvent
from tests.unit.test_flush import NOW, UUID, FakeInspector, FakeRegistry, make_info, make_reading

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
    p = poller.Poller(inspector=PollingInspector({UUID: make_reading(), OTHER: other}),
                      registry=registry,
                      last_readings=readings, interval=60)
    assert p.poll_once() == 1
    assert readings.get(UUID)[1].cpu_time_ns == 5_000_000 and readings.get(OTHER) is None


def handler(registry, inspector, readings):
    c = counters.Counters()
    h = domain_events.DomainEventHandler(inspector=inspector, registry=registry,
                                         last_readings=readings, counters=c)
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
