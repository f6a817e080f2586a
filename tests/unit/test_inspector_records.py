"""Turning libvirt stats records into readings: devices, backing chains, torn reads."""
import pytest

from lifecycle_stats.reading import inspector

COMPLETE = {
    "state.state": 1, "cpu.time": 5, "block.count": 2,
    "block.0.name": "vda", "block.0.path": "/img/a.qcow2", "block.0.rd.reqs": 1,
    "block.0.rd.bytes": 2, "block.0.wr.reqs": 3, "block.0.wr.bytes": 4,
    "block.1.name": "vda", "block.1.path": "/img/base.qcow2", "block.1.backingIndex": 1,
    "block.1.rd.reqs": 9, "block.1.rd.bytes": 9, "block.1.wr.reqs": 9, "block.1.wr.bytes": 9,
    "net.count": 1, "net.0.name": "tap1", "net.0.rx.bytes": 10, "net.0.rx.pkts": 1,
    "net.0.rx.errs": 0, "net.0.rx.drop": 0, "net.0.tx.bytes": 20, "net.0.tx.pkts": 2,
    "net.0.tx.errs": 0, "net.0.tx.drop": 0,
}

# What a read that raced virDomainDestroy returned on this machine: names, no counters.
TORN = {"state.state": 1, "cpu.time": 5, "block.count": 1, "block.0.name": "vda",
        "block.0.path": "/img/a.qcow2", "net.count": 1, "net.0.name": "tap1"}


def without(record, *prefixes):
    return {k: v for k, v in record.items() if not k.startswith(prefixes)}


def test_complete_record_keeps_top_level_devices_only():
    assert [d.device for d in inspector.disks_from_stats(COMPLETE)] == ["vda"]
    assert inspector.disks_from_stats(COMPLETE)[0].read_bytes == 2
    assert inspector.vnics_from_stats(COMPLETE)[0].tx_bytes == 20
    assert not inspector.is_torn(COMPLETE)


@pytest.mark.parametrize("record", [
    TORN,
    without(COMPLETE, "block.0.rd", "block.0.wr"),
    without(COMPLETE, "net.0.rx", "net.0.tx"),
])
def test_devices_without_counters_mark_a_torn_read(record):
    assert inspector.is_torn(record)


def test_an_empty_cdrom_is_not_a_torn_read():
    record = {**COMPLETE, "block.count": 3, "block.2.name": "hdc"}  # no path, no counters
    assert not inspector.is_torn(record)
    assert [d.device for d in inspector.disks_from_stats(record)] == ["vda"]


EXTRAS = {**COMPLETE, "block.0.rd.times": 700, "block.0.wr.times": 900,
          "block.0.capacity": 4096, "block.0.allocation": 1024, "block.0.physical": 8192,
          "balloon.current": 2048, "balloon.rss": 512, "balloon.usable": 100,
          "perf.cpu_cycles": 7, "perf.instructions": 8}


def test_latency_and_sizes_come_with_the_disk_capacity_as_ceilometer_reports_it():
    [disk] = inspector.disks_from_stats(EXTRAS)
    assert (disk.read_time_ns, disk.write_time_ns) == (700, 900)
    # a cdrom's capacity is 4 KiB-aligned and may be below the file: max(capacity, physical)
    assert (disk.capacity, disk.allocation, disk.physical) == (8192, 1024, 8192)
    [plain] = inspector.disks_from_stats(COMPLETE)
    assert (plain.read_time_ns, plain.capacity) == (None, None)


def test_balloon_and_perf_groups_keep_libvirts_names_and_only_what_is_there():
    assert inspector.memory_from_stats(EXTRAS) == {"actual": 2048, "rss": 512, "usable": 100}
    assert inspector.perf_from_stats(EXTRAS) == {"cpu_cycles": 7, "instructions": 8}
    assert inspector.perf_from_stats(COMPLETE) == {}
