import dataclasses
import datetime
import hashlib
import uuid

import hypothesis
import pytest
from hypothesis import strategies as st

from lifecycle_stats.publishing import meters, samples
from lifecycle_stats.records import Flavor
from tests.support.fakes import AT, UUID, make_info, make_reading

def by_name(result):
    out = {}
    for s in result:
        out.setdefault(s.name, []).append(s)
    return out


def test_every_catalogue_meter_and_flavor_meter_for_an_active_instance():
    got = by_name(samples.build_samples(make_info(), make_reading(), host="cmp1",
                                        capture_id="delete"))
    assert set(got) - meters.OPTIONAL == meters.REQUIRED_FOR_ACTIVE | {"instance:m1.small"}


@pytest.mark.parametrize("name,resource_id,volume", [
    ("cpu", UUID, 5_000_000),
    ("vcpus", UUID, 2),
    ("memory", UUID, 2048.0),
    ("power.state", UUID, 1),
    ("disk.root.size", UUID, 20),
    ("disk.ephemeral.size", UUID, 0),
    ("disk.device.read.latency", f"{UUID}-vda", 700),
    ("disk.device.write.latency", f"{UUID}-vda", 900),
    ("disk.device.capacity", f"{UUID}-vda", 1 << 30),
    ("disk.device.allocation", f"{UUID}-vda", 1 << 20),
    ("disk.device.usage", f"{UUID}-vda", 1 << 21),
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
    assert (got["memory"][0].type, got["memory"][0].unit) == ("gauge", "MiB")
    assert (got["power.state"][0].type, got["power.state"][0].unit) == ("gauge", "")
    assert got["network.incoming.bytes"][0].unit == "B"
    assert cpu.user_id == "u1" and cpu.project_id == "p1"
    assert cpu.timestamp == "2026-11-21T12:00:00.123456+00:00"
    assert cpu.resource_metadata["instance_type"] == "m1.small"
    # nova's hostId: sha224(project_id + host), the hypervisor only in instance_host
    assert cpu.resource_metadata["host"] == hashlib.sha224(b"p1cmp1").hexdigest()
    assert cpu.resource_metadata["instance_host"] == "cmp1"
    assert cpu.resource_metadata["cpu_number"] == 2
    assert got["disk.device.read.bytes"][0].resource_metadata["disk_name"] in ("vda", "vdb")


def test_inactive_reading_has_no_counter_samples():
    got = by_name(samples.build_samples(make_info(), make_reading(active=False), host="h",
                                        capture_id="delete"))
    assert "cpu" not in got
    assert not any(n.startswith(("disk.device.", "network.", "memory.", "perf."))
                   for n in got)
    assert "disk.read.bytes" not in got
    assert {"vcpus", "memory", "instance", "instance:m1.small", "power.state",
            "disk.root.size"} <= set(got)
    assert got["power.state"][0].volume == 5


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


def test_disk_without_extra_stats_has_only_its_io_meters():
    got = by_name(samples.build_samples(make_info(), make_reading(), host="h",
                                        capture_id="delete"))
    assert {s.resource_id for s in got["disk.device.capacity"]} == {f"{UUID}-vda"}
    assert {s.resource_id for s in got["disk.device.read.bytes"]} == {f"{UUID}-vda",
                                                                       f"{UUID}-vdb"}


def test_memory_meters_from_the_balloon_in_mib_as_ceilometer_derives_them():
    stats = {"actual": 2097152, "available": 2000000, "usable": 1500000, "unused": 1,
             "rss": 300000, "swap_in": 2048, "swap_out": 1024}
    got = by_name(samples.build_samples(make_info(), make_reading(memory_stats=stats),
                                        host="h", capture_id="delete"))
    volume = {name: got[name][0].volume for name in got if name.startswith("memory")}
    assert volume == {"memory": 2048.0, "memory.available": 2000000 / 1024,
                      "memory.usage": 500000 / 1024, "memory.resident": 300000 / 1024,
                      "memory.swap.in": 2.0, "memory.swap.out": 1.0}
    assert got["memory.swap.in"][0].type == "cumulative"


def test_memory_usage_falls_back_to_unused_and_swap_needs_both():
    stats = {"available": 1024, "unused": 512, "swap_in": 2048}
    got = by_name(samples.build_samples(make_info(), make_reading(memory_stats=stats),
                                        host="h", capture_id="delete"))
    assert got["memory.usage"][0].volume == 0.5
    assert "memory.swap.in" not in got and "memory.resident" not in got


def test_perf_meters_only_where_the_host_reports_them():
    plain = by_name(samples.build_samples(make_info(), make_reading(), host="h",
                                          capture_id="delete"))
    assert not any(n.startswith("perf.") for n in plain)
    got = by_name(samples.build_samples(
        make_info(), make_reading(perf={"cpu_cycles": 9, "instructions": 8,
                                        "cache_references": 7, "cache_misses": 6}),
        host="h", capture_id="delete"))
    assert {n: got[n][0].volume for n in got if n.startswith("perf.")} == {
        "perf.cpu.cycles": 9, "perf.instructions": 8, "perf.cache.references": 7,
        "perf.cache.misses": 6}


def test_legacy_meters_can_be_switched_off():
    got = by_name(samples.build_samples(make_info(), make_reading(), host="h",
                                        capture_id="delete", legacy=False))
    assert not {"instance", "instance:m1.small", "disk.read.bytes", "disk.write.requests"} & set(got)
    assert set(got) - meters.OPTIONAL == (
        meters.REQUIRED_FOR_ACTIVE - {m.name for m in meters.CATALOGUE if m.legacy})
    assert "disk.device.read.bytes" in got


def test_metadata_is_ceilometers_with_flavor_id_image_and_state():
    flavor = Flavor("m1.big", memory_mb=4096, root_gb=40, swap_mb=512, ephemeral_gb=10,
                    vcpus=4, id="f-42")
    sample = samples.build_samples(make_info(flavor=flavor), make_reading(), host="cmp1",
                                   capture_id="delete")[0]
    meta = sample.resource_metadata
    assert meta["flavor"] == {"id": "f-42", "name": "m1.big", "vcpus": 4, "ram": 4096,
                              "disk": 40, "ephemeral": 10, "swap": 512}
    assert meta["image"] == {"id": "img-1"} and meta["image_ref"] == "img-1"
    assert (meta["status"], meta["state"]) == ("active", "running")
    # Ceilometer's root_gb is the flavor's disk minus its ephemeral disk
    assert (meta["disk_gb"], meta["root_gb"], meta["ephemeral_gb"]) == (40, 30, 10)
    no_id = samples.build_samples(make_info(), make_reading(), host="cmp1",
                                  capture_id="delete")[0]
    # nova < 2025.2 writes no flavor id: Ceilometer asks nova's API, we never do, so no id
    # (it used to be the name, which Gnocchi then stored as the instance's flavor_id)
    assert "id" not in no_id.resource_metadata["flavor"]
    assert no_id.resource_metadata["flavor"]["name"] == "m1.small"


def test_vnic_metadata_names_the_tap_as_ceilometer_does():
    got = by_name(samples.build_samples(make_info(), make_reading(), host="h",
                                        capture_id="delete"))
    meta = got["network.incoming.bytes"][0].resource_metadata
    assert (meta["name"], meta["vnic_name"], meta["instance_id"]) == ("tap1", "tap1", UUID)
    assert "instance_name" not in meta  # not in Ceilometer 27's vNIC metadata


def test_vnic_metadata_and_resource_id_follow_the_domain_xml_as_ceilometer_does():
    """mac, filterref and parameters as Ceilometer's inspect_vnics reads them; a filterref
    is also the resource id and vnic_name (NetworkPollster)."""
    facts = {"tap1": {"mac": "52:54:00:aa:bb:cc", "fref": "nova-instance-1-52540aabbcc",
                      "parameters": {"ip": "10.0.0.5", "interfaceid": None, "bridge": "br0"}}}
    info = dataclasses.replace(make_info(), vnic_facts=facts, architecture="x86_64",
                               os_type="hvm")
    got = by_name(samples.build_samples(info, make_reading(), host="h", capture_id="delete"))
    [sample] = got["network.incoming.bytes"]
    meta = sample.resource_metadata
    assert sample.resource_id == meta["vnic_name"] == meta["fref"] == "nova-instance-1-52540aabbcc"
    assert (meta["mac"], meta["parameters"]) == ("52:54:00:aa:bb:cc", facts["tap1"]["parameters"])
    assert (meta["architecture"], meta["os_type"]) == ("x86_64", "hvm")
    plain = by_name(samples.build_samples(make_info(), make_reading(), host="h",
                                          capture_id="delete"))["network.incoming.bytes"][0]
    assert plain.resource_metadata["fref"] is None and plain.resource_id.endswith("-tap1")
    assert "architecture" not in plain.resource_metadata  # never read: left out, not None


def test_cpu_is_the_vcpus_time_and_wait_when_libvirt_has_them():
    """Ceilometer 27's cpu; libvirt's cpu.time (QEMU's own threads too) only as its fallback."""
    vcpu = dataclasses.replace(make_reading(), vcpu_time_ns=4_000_000)
    assert by_name(samples.build_samples(make_info(), vcpu, host="h", capture_id="d")
                   )["cpu"][0].volume == 4_000_000
    assert by_name(samples.build_samples(make_info(), make_reading(), host="h", capture_id="d")
                   )["cpu"][0].volume == 5_000_000


def test_timestamp_override():
    earlier = AT - datetime.timedelta(milliseconds=5)
    got = samples.build_samples(make_info(), make_reading(), host="h", capture_id="delete",
                                timestamp=earlier)
    assert {s.timestamp for s in got} == {"2026-11-21T12:00:00.118456+00:00"}


def test_host_id_matches_nova():
    # nova.utils.generate_hostid("cmp1", "p1"); "" without a host
    assert samples.host_id("p1", "cmp1") == hashlib.sha224(b"p1cmp1").hexdigest()
    assert samples.host_id("p1", "") == ""


def test_samples_of_one_resource_share_its_metadata_and_signatures_are_unchanged():
    """One metadata mapping per resource (instance, cpu, each disk, each vNIC), shared by its
    samples: the payload's copy keeps the sharing, and each signature equals the signature
    of that sample alone."""
    from lifecycle_stats.publishing import signing
    from lifecycle_stats.records import sample_dicts

    built = samples.build_samples(make_info(), make_reading(), host="cmp1", capture_id="c")
    by_resource = {}
    for sample in built:
        key = (sample.resource_id, "cpu_number" in sample.resource_metadata)
        by_resource.setdefault(key, set()).add(id(sample.resource_metadata))
    assert all(len(ids) == 1 for ids in by_resource.values())
    assert len({id(s.resource_metadata) for s in built}) == len(by_resource) < len(built)
    rows = sample_dicts(built)
    assert rows == [s.as_dict() for s in built]
    assert len({id(r["resource_metadata"]) for r in rows}) == len(by_resource)
    assert not {id(r["resource_metadata"]) for r in rows} & {id(s.resource_metadata)
                                                            for s in built}
    signed = signing.signed_all(rows, "secret")
    assert [s["message_signature"] for s in signed] == [
        signing.signature(s.as_dict(), "secret") for s in built]


@hypothesis.given(st.lists(st.text(max_size=60), min_size=1, max_size=5))
def test_deterministic_id_is_uuid5_of_the_joined_parts(parts):
    expected = uuid.uuid5(samples.MESSAGE_ID_NAMESPACE, "|".join(parts))
    assert samples.deterministic_id(*parts) == str(expected)
