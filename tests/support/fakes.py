"""In-memory stand-ins shared by the tests: readings and instance identities, the libvirt side
(inspector, registry), a settable clock and a trigger handler that records.

Defined once here; test modules import them from here, never from one another.
"""
from __future__ import annotations

import dataclasses
import datetime
import threading

from lifecycle_stats.exceptions import DomainGone, HypervisorError
from lifecycle_stats.interfaces import Outcome
from lifecycle_stats.records import DiskStats, DomainReading, Flavor, InstanceInfo, VnicStats

UUID = "7a1e8d2c-3b4f-4e5a-9c6d-1f2e3d4c5b6a"
AT = datetime.datetime(2026, 11, 21, 12, 0, 0, 123456, tzinfo=datetime.timezone.utc)
NOW = AT + datetime.timedelta(seconds=42)  # when a trigger arrives, after the reading AT


def make_info(**kw):
    fields = dict(
        instance_id=UUID, domain_name="instance-0000002a", display_name="web-1",
        flavor=Flavor("m1.small", memory_mb=2048, root_gb=20, swap_mb=0, ephemeral_gb=0,
                      vcpus=1),
        user_id="u1", user_name="alice", project_id="p1", project_name="shop",
        image_ref="img-1", root_type="image", creation_time=None, metadata_version="1.1",
    )
    fields.update(kw)
    return InstanceInfo(**fields)


def make_reading(active=True, disks=None, vnics=None, memory_stats=None, perf=None):
    disks = disks if disks is not None else (
        DiskStats("vda", 10, 4096, 20, 8192, read_time_ns=700, write_time_ns=900,
                  capacity=1 << 30, allocation=1 << 20, physical=1 << 21),
        DiskStats("vdb", 1, 512, 2, 1024))
    vnics = vnics if vnics is not None else (VnicStats("tap1", 100, 2, 0, 1, 300, 4, 1, 0),)
    return DomainReading(
        instance_id=UUID, domain_name="instance-0000002a",
        state="running" if active else "shutoff", active=active,
        cpu_time_ns=5_000_000 if active else None, vcpus=2, memory_kib=2097152,
        memory_max_kib=2097152, disks=disks if active else (), vnics=vnics if active else (),
        read_at=AT, path="bulk", state_code=1 if active else 5,
        memory_stats=memory_stats if memory_stats is not None else {},
        perf=perf if perf is not None else {},
    )


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
        return dataclasses.replace(self.readings[instance_id], path="single")  # as read() does


class GatedInspector(FakeInspector):
    """The n-th read blocks until gates[n] is set; counts how many reads run at once."""

    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        self.gates = [threading.Event() for _ in range(3)]
        self.entered = threading.Semaphore(0)
        self.running = self.most = self.calls = 0
        self._guard = threading.Lock()

    def read(self, instance_id):
        with self._guard:
            gate = self.gates[self.calls]
            self.calls += 1
            self.running += 1
            self.most = max(self.most, self.running)
        self.entered.release()
        try:
            gate.wait(5)
            return super().read(instance_id)
        finally:
            with self._guard:
                self.running -= 1


class FakeRegistry:
    def __init__(self, infos=None, not_nova=()):
        self.infos = infos or {}
        self.not_nova = set(not_nova)

    def get(self, instance_id):
        return self.infos.get(instance_id)

    def is_known(self, instance_id):
        return instance_id in self.infos or instance_id in self.not_nova

    def unusable(self, instance_id):
        return None

    def identify(self, instance_id):
        if self.is_known(instance_id):
            return self.get(instance_id)
        raise HypervisorError("not connected")  # an unknown domain needs a libvirt read

    def forget(self, instance_id):  # libvirt undefined the domain
        self.infos.pop(instance_id, None)


class Clock:
    """A clock the test sets: call it for now; advance(seconds) moves a datetime or a float."""

    def __init__(self, now):
        self.now = now

    def __call__(self):
        return self.now

    def advance(self, seconds: float):
        if isinstance(self.now, datetime.datetime):
            self.now += datetime.timedelta(seconds=seconds)
        else:
            self.now += seconds
        return self.now


class TriggerRecorder:
    """The agent's trigger handler: records, optionally blocks or fails."""

    def __init__(self, outcome=Outcome.FINAL):
        self.triggers = []
        self.outcome = outcome
        self.release = threading.Event()
        self.release.set()
        self.entered = threading.Event()
        self.error: Exception | None = None

    def __call__(self, trigger, answer=None):
        self.entered.set()
        self.release.wait(30)
        if self.error is not None:
            raise self.error
        self.triggers.append(trigger)
        if answer is not None:
            answer(self.outcome)
        return self.outcome


class FlakySpool:
    """A real spool whose next `fail` puts of compute.instance.exists raise as a locked
    database does (the usage tests: an exists owed, spooled later)."""

    def __init__(self, real, fail=0):
        self.real, self.fail = real, fail

    def put(self, notification, tier):
        if notification.event_type == "compute.instance.exists" and self.fail > 0:
            self.fail -= 1
            import sqlite3
            raise sqlite3.OperationalError("database is locked")
        return self.real.put(notification, tier)

    def __getattr__(self, name):
        return getattr(self.real, name)
