"""bulk_parse.devices (one pass over a stats record) gives exactly what the reference
definitions give: inspector.disks_from_stats / vnics_from_stats and processes.counted_devices /
uncounted_devices, on every record shape the inspector tests know and on generated ones."""
import random

import pytest

from lifecycle_stats.reading import bulk_parse, inspector, processes
from tests.support.stats_records import COMPLETE, TORN, WITH_VHOSTUSER, without

SIZES = {"block.0.capacity": 100, "block.0.allocation": 50, "block.0.physical": 120,
         "block.0.rd.times": 7, "block.0.wr.times": 8}
CDROM = {"block.count": 3, "block.2.name": "hdc"}  # an empty cdrom: named, no path, no counters


def generated(seed):
    """A record with random devices: some counted, some named only, some repeated names."""
    rng = random.Random(seed)
    record = {"state.state": 1, "cpu.time": rng.randrange(10**9)}
    disks, vnics = rng.randrange(6), rng.randrange(6)
    record["block.count"], record["net.count"] = disks, vnics
    for i in range(disks):
        name = rng.choice(["vda", "vdb", "sda", None])
        if name is not None:
            record[f"block.{i}.name"] = name
        if rng.random() < 0.8:
            record[f"block.{i}.path"] = f"/img/{i}"
        if rng.random() < 0.7:
            for key in ("rd.reqs", "rd.bytes", "wr.reqs", "wr.bytes"):
                record[f"block.{i}.{key}"] = rng.randrange(1000)
            for key in ("rd.times", "wr.times", "capacity", "allocation", "physical"):
                if rng.random() < 0.5:
                    record[f"block.{i}.{key}"] = rng.randrange(1000)
    for i in range(vnics):
        name = rng.choice(["tap1", "tap2", "vhu1", None])
        if name is not None:
            record[f"net.{i}.name"] = name
        if rng.random() < 0.7:
            for key in bulk_parse._VNIC_KEYS:
                record[f"net.{i}.{key}"] = rng.randrange(1000)
    return record


RECORDS = [COMPLETE, TORN, WITH_VHOSTUSER, {**COMPLETE, **SIZES}, {**COMPLETE, **CDROM},
           without(COMPLETE, "block.0.rd", "block.0.wr"), without(COMPLETE, "net.0.rx"),
           {"state.state": 1}, *(generated(seed) for seed in range(300))]


@pytest.mark.parametrize("record", RECORDS)
def test_one_pass_equals_the_reference_definitions(record):
    parsed = bulk_parse.devices(record)
    assert parsed.disks == inspector.disks_from_stats(record)
    assert parsed.vnics == inspector.vnics_from_stats(record)
    assert parsed.counted == processes.counted_devices(record)
    assert parsed.uncounted == processes.uncounted_devices(record)
    for earlier in (None, frozenset(), processes.counted_devices(COMPLETE)):
        assert processes.torn_devices(parsed.counted, parsed.uncounted, earlier) == \
            processes.is_torn(record, earlier)


def test_capacity_is_the_larger_of_capacity_and_physical():
    (disk,) = bulk_parse.devices({**COMPLETE, **SIZES}).disks
    assert (disk.capacity, disk.allocation, disk.physical) == (120, 50, 120)
    assert (disk.read_time_ns, disk.write_time_ns) == (7, 8)


def test_the_ledger_encodes_a_reading_exactly_as_asdict_would():
    import dataclasses
    import datetime

    import msgpack

    from lifecycle_stats.records import DomainReading
    from lifecycle_stats.usage import codec

    parsed = bulk_parse.devices({**COMPLETE, **SIZES})
    reading = DomainReading(
        instance_id="u", domain_name="instance-1", state="running", active=True,
        cpu_time_ns=5, vcpus=1, memory_kib=512, memory_max_kib=1024, disks=parsed.disks,
        vnics=parsed.vnics, read_at=datetime.datetime(2026, 12, 4, tzinfo=datetime.timezone.utc),
        path="bulk", state_code=1, memory_stats={"actual": 512}, perf={"instructions": 3},
        process_id=7)
    expected = dataclasses.asdict(reading)
    expected["read_at"] = reading.read_at.timestamp()
    expected["v"] = codec.VERSION  # ledger rows carry their version
    assert codec.encode_reading(reading) == msgpack.packb(expected, use_bin_type=True)
    assert codec.decode_reading(codec.encode_reading(reading)) == reading


def test_the_ledger_encodes_an_identity_exactly_as_asdict_would():
    import dataclasses

    import msgpack

    from lifecycle_stats.records import Flavor, InstanceInfo
    from lifecycle_stats.usage import codec

    info = InstanceInfo("u", "instance-1", "vm", Flavor("m1.small", 512, 1, 0, 0, 1, "42"),
                        "user", "alice", "project", "demo", "image", "image",
                        "2026-12-04 00:00:00", "1.1")
    expected = {**dataclasses.asdict(info), "v": codec.VERSION}  # rows carry their version
    assert codec.encode_info(info) == msgpack.packb(expected, use_bin_type=True)
    assert codec.decode_info(codec.encode_info(info)) == info
