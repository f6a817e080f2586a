import datetime

import pytest

from lifecycle_stats.publishing import meters, samples
from lifecycle_stats.records import DiskStats, DomainReading, Flavor, InstanceInfo, VnicStats

UUID = "7a1e8d2c-3b4f-4e5a-9c6d-1f2e3d4c5b6a"
AT = datetime.datetime(2026, 11, 21, 12, 0, 0, 123456, tzinfo=datetime.timezone.utc)


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


def make_reading(active=True, disks=None, vnics=None):
    disks = disks if disks is not None else (
        DiskStats("vda", 10, 4096, 20, 8192), DiskStats("vdb", 1, 512, 2, 1024))
    vnics = vnics if vnics is not None else (VnicStats("tap1", 100, 2, 0, 1, 300, 4, 1, 0),)
    return DomainReading(
        instance_id=UUID, domain_name="instance-0000002a",
        state="running" if active else "shutoff", active=active,
        cpu_time_ns=5_000_000 if active else None, vcpus=2, memory_kib=2097152,
        memory_max_kib=2097152, disks=disks if active else (), vnics=vnics if active else (),
        read_at=AT, path="bulk",
    )


def by_name(result):
    out = {}
    for s in result:
        out.setdefault(s.name, []).append(s)
    return out


def test_every_catalogue_meter_and_flavor_meter_for_an_active_instance():
    got = by_name(samples.build_samples(make_info(), make_reading(), host="cmp1",
                                        capture_id="delete"))
    assert set(got) == meters.REQUIRED_FOR_ACTIVE | {"instance:m1.small"}


@pytest.mark.parametrize("name,resource_id,volume", [
    ("cpu", UUID, 5_000_000),
    ("vcpus", UUID, 2),
    ("memory", UUID, 2048),
    ("instance", UUID, 1),
    ("instance:m1.small", UUID, 1),
    ("disk.read.bytes", UUID, 4096 + 512),
    ("disk.write.requests", UUID, 22),
    ("disk.device.read.bytes", f"{UUID}-vda", 4096),
    ("disk.device.write.bytes", f"{UUID}-vdb", 1024),
    ("network.incoming.bytes", f"instance-0000002a-{UUID}-tap1", 100),
    ("network.outgoing.packets", f"instance-0000002a-{UUID}-tap1", 4),
    ("network.incoming.packets.drop", f"instance-0000002a-{UUID}-tap1", 1),
    ("network.outgoing.packets.error", f"instance-0000002a-{UUID}-tap1", 1),
])
def test_volumes_and_resource_ids_follow_ceilometer(name, resource_id, volume):
    got = by_name(samples.build_samples(make_info(), make_reading(), host="cmp1",
                                        capture_id="delete"))
    assert {(s.resource_id, s.volume) for s in got[name]} >= {(resource_id, volume)}


def test_types_units_and_identity():
    got = by_name(samples.build_samples(make_info(), make_reading(), host="cmp1",
                                        capture_id="delete"))
    cpu = got["cpu"][0]
    assert (cpu.type, cpu.unit) == ("cumulative", "ns")
    assert (got["memory"][0].type, got["memory"][0].unit) == ("gauge", "MB")
    assert got["network.incoming.bytes"][0].unit == "B"
    assert cpu.user_id == "u1" and cpu.project_id == "p1"
    assert cpu.timestamp == "2026-11-21T12:00:00.123456+00:00"
    assert cpu.resource_metadata["instance_type"] == "m1.small"
    assert cpu.resource_metadata["host"] == "cmp1"
    assert got["disk.device.read.bytes"][0].resource_metadata["disk_name"] in ("vda", "vdb")


def test_inactive_reading_has_no_counter_samples():
    got = by_name(samples.build_samples(make_info(), make_reading(active=False), host="h",
                                        capture_id="delete"))
    assert "cpu" not in got
    assert not any(n.startswith(("disk.", "network.")) for n in got)
    assert {"vcpus", "memory", "instance", "instance:m1.small"} <= set(got)


def test_no_disks_means_no_disk_total():
    got = by_name(samples.build_samples(make_info(), make_reading(disks=()), host="h",
                                        capture_id="delete"))
    assert "disk.read.bytes" not in got and "cpu" in got


def test_message_ids_are_deterministic_and_distinct():
    first = samples.build_samples(make_info(), make_reading(), host="h", capture_id="delete")
    again = samples.build_samples(make_info(), make_reading(), host="h", capture_id="delete")
    other = samples.build_samples(make_info(), make_reading(), host="h", capture_id="poll:1")
    ids = [s.message_id for s in first]
    assert ids == [s.message_id for s in again]
    assert len(set(ids)) == len(ids)
    assert not set(ids) & {s.message_id for s in other}
