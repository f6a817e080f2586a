"""bulk_parse (one pass over a stats record) gives exactly what the reference definitions
give: reference_parse.disks_from_stats / vnics_from_stats and processes.counted_devices /
uncounted_devices, and the bulk poll's readings equal the single read's Inspector._reading,
on every record shape the inspector tests know and on generated ones."""
import datetime
import random

import pytest

from lifecycle_stats.exceptions import DomainGone
from lifecycle_stats.reading import bulk_parse, device_reuse, inspector, processes, qemu_process
from tests.support import reference_parse
from tests.support.stats_records import (
    COMPLETE, TORN, WITH_VHOSTUSER, StatsConnection, without,
)

LOCAL = "qemu:///system"  # so the inspector reads the QEMU process's start (faked below)

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
    for key in ("vcpu.current", "balloon.current", "balloon.maximum", "balloon.rss",
                "balloon.usable", "perf.cpu_cycles", "perf.cache_misses"):
        if rng.random() < 0.6:
            record[key] = rng.randrange(1, 4)
    vcpus = record.get("vcpu.current", 0) + rng.randrange(2)  # maximum >= current, or none
    if vcpus:
        record["vcpu.maximum"] = vcpus
    for n in range(vcpus):
        for key in ("time", "wait"):
            if rng.random() < 0.9:
                record[f"vcpu.{n}.{key}"] = rng.randrange(1000)
    return record


def full(seed):
    """A record as QEMU's are: every device with every key (bulk_parse.DeviceReuse's fast
    path), repeated names (backing chains) and sizes either way round."""
    rng = random.Random(seed)
    record = {"state.state": rng.choice([1, 3]), "cpu.time": rng.randrange(10**9),
              "vcpu.current": 1, "vcpu.maximum": 1, "vcpu.0.time": 5, "vcpu.0.wait": 1,
              "balloon.current": 32768, "balloon.maximum": 32768, "balloon.rss": 38040}
    disks, vnics = rng.randrange(4), rng.randrange(4)
    record["block.count"], record["net.count"] = disks, vnics
    for i in range(disks):
        record[f"block.{i}.name"] = rng.choice(["vda", "vdb", "sda"])
        record[f"block.{i}.path"] = f"/img/{i}"
        for key in ("rd.reqs", "rd.bytes", "wr.reqs", "wr.bytes", "rd.times", "wr.times",
                    "capacity", "allocation", "physical"):
            record[f"block.{i}.{key}"] = rng.randrange(1000)
    for i in range(vnics):
        record[f"net.{i}.name"] = rng.choice(["tap1", "tap2", "tap3"])
        for key in bulk_parse._VNIC_KEYS:
            record[f"net.{i}.{key}"] = rng.randrange(1000)
    return record


# One record of a paused guest on this host's QEMU 7.2 (libvirt 9.0), every key as read.
QEMU_PAUSED = {
    "state.state": 3, "state.reason": 1, "cpu.time": 1150000000, "cpu.user": 320000000,
    "cpu.system": 830000000, "cpu.cache.monitor.count": 0, "cpu.haltpoll.success.time": 0,
    "cpu.haltpoll.fail.time": 0, "balloon.current": 32768, "balloon.maximum": 32768,
    "balloon.last-update": 0, "balloon.rss": 38040, "vcpu.current": 1, "vcpu.maximum": 1,
    "vcpu.0.state": 1, "vcpu.0.time": 0, "vcpu.0.wait": 0, "vcpu.0.delay": 6692616,
    "net.count": 1, "net.0.name": "b2989x23", "net.0.rx.bytes": 86, "net.0.rx.pkts": 1,
    "net.0.rx.errs": 0, "net.0.rx.drop": 1, "net.0.tx.bytes": 0, "net.0.tx.pkts": 0,
    "net.0.tx.errs": 0, "net.0.tx.drop": 0, "block.count": 1, "block.0.name": "vda",
    "block.0.path": "/tmp/bench/23.qcow2", "block.0.backingIndex": 1, "block.0.rd.reqs": 0,
    "block.0.rd.bytes": 0, "block.0.rd.times": 0, "block.0.wr.reqs": 0, "block.0.wr.bytes": 0,
    "block.0.wr.times": 0, "block.0.fl.reqs": 0, "block.0.fl.times": 0,
    "block.0.allocation": 0, "block.0.capacity": 16777216, "block.0.physical": 204800}

EXTRAS = {"vcpu.current": 2, "vcpu.maximum": 2, "vcpu.0.time": 100, "vcpu.0.wait": 5,
          "vcpu.1.time": 200, "vcpu.1.wait": 7, "balloon.current": 2048,
          "balloon.maximum": 4096, "balloon.rss": 512, "perf.instructions": 8}
RECORDS = [COMPLETE, TORN, WITH_VHOSTUSER, {**COMPLETE, **SIZES}, {**COMPLETE, **CDROM},
           without(COMPLETE, "block.0.rd", "block.0.wr"), without(COMPLETE, "net.0.rx"),
           {"state.state": 1}, {**COMPLETE, **SIZES, **EXTRAS},
           {**COMPLETE, "state.state": 3}, {**COMPLETE, "state.state": 5},  # paused, shut off
           {"state.state": 1, "cpu.time": 5, "block.count": 0},
           *(generated(seed) for seed in range(300)),
           QEMU_PAUSED, *(full(seed) for seed in range(100))]


@pytest.mark.parametrize("record", RECORDS)
def test_one_pass_equals_the_reference_definitions(record):
    parsed = bulk_parse.devices(record)
    assert parsed.disks == reference_parse.disks_from_stats(record)
    assert parsed.vnics == reference_parse.vnics_from_stats(record)
    assert parsed.counted == processes.counted_devices(record)
    assert parsed.uncounted == processes.uncounted_devices(record)
    for earlier in (None, frozenset(), processes.counted_devices(COMPLETE)):
        assert processes.torn_devices(parsed.counted, parsed.uncounted, earlier) == \
            processes.is_torn(record, earlier)


@pytest.mark.parametrize("record", RECORDS)
def test_the_polls_reuse_equals_one_pass(record):
    """DeviceReuse (the poll's) gives device_tuple()'s answer on a domain's first poll, on a
    poll with the same values (its last answer again) and after any one value changed."""
    reuse = device_reuse.DeviceReuse()
    changed = {key: (value + 1 if isinstance(value, int) else value + "x")
               for key, value in record.items() if key.startswith(("block.", "net."))
               and not key.endswith(".count")}
    for values in (record, dict(record), *({**record, key: value}
                                          for key, value in changed.items()), record):
        reuse.begin_poll()
        assert reuse.device_tuple("u", values) == bulk_parse.device_tuple(values)
        reuse.end_poll()


def test_the_polls_reuse_gives_the_same_records_for_the_same_values():
    reuse = device_reuse.DeviceReuse()
    first = reuse.device_tuple("u", QEMU_PAUSED)
    reuse.end_poll()
    assert all(a is b for a, b in zip(reuse.device_tuple("u", dict(QEMU_PAUSED)), first))
    reuse.end_poll()
    moved = reuse.device_tuple("u", {**QEMU_PAUSED, "block.0.rd.bytes": 512})
    assert moved[0][0].read_bytes == 512 and moved[1] == first[1]
    reuse.end_poll()
    reuse.end_poll()  # a poll that did not see "u": forgotten
    assert reuse.device_tuple("u", QEMU_PAUSED)[0][0] is not moved[0][0]


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


class Domain:
    def __init__(self, uuid, process_id):
        self.uuid, self.process_id, self.names = uuid, process_id, 0

    def UUIDString(self):
        return self.uuid

    def ID(self):
        return self.process_id

    def name(self):
        self.names += 1
        return "instance-1"


READ_AT = datetime.datetime(2026, 12, 4, tzinfo=datetime.timezone.utc)


def outcome(read):
    try:
        return read()
    except DomainGone:
        return DomainGone


@pytest.mark.parametrize("record", [r for r in RECORDS if not inspector._lacks_groups(r)])
def test_the_polls_reading_equals_the_single_reads(record, monkeypatch):
    """Inspector.poll builds its readings without _reading (bulk_parse.active_reading, the
    name and start kept per process): field for field the same reading, or the same torn
    read, on the first poll of a process and on a later one."""
    monkeypatch.setattr(qemu_process, "started_at", lambda name: 1234.5)
    dom = Domain("u", 7)
    reference, polled = (inspector.Inspector(StatsConnection(dom, record, uri=LOCAL),
                                             clock=lambda: READ_AT) for _ in range(2))
    for _ in range(2):
        expected = outcome(lambda: reference._reading(None, dom, record, "bulk", READ_AT, "u"))
        got = outcome(polled.poll)
        if expected is DomainGone or not expected.active:
            assert got in (DomainGone, {})  # torn, or a shut-off domain: left out of a poll
        else:
            assert got == {"u": expected}
            assert got["u"].process_started_at == 1234.5
            assert vars(got["u"]) == vars(expected)  # every field there, none extra


def test_the_poll_reads_a_process_name_and_start_once():
    reads = []
    dom = Domain("u", 7)
    conn = StatsConnection(dom, {**COMPLETE, **EXTRAS}, uri=LOCAL)
    polled = inspector.Inspector(conn)
    polled._processes = type(polled._processes)(lambda name: reads.append(name) or 99.0)
    for cpu in (5, 6, 6):  # a paused domain's cpu stays; a running one's grows
        conn.record = {**conn.record, "cpu.time": cpu}
        assert polled.poll()["u"].process_started_at == 99.0
    assert (reads, dom.names) == (["instance-1"], 1)
