"""Turning libvirt stats records into readings: devices, backing chains, torn reads."""
import pytest

from lifecycle_stats.reading import inspector, processes
from lifecycle_stats.reading.known_processes import KnownProcesses
from tests.support import reference_parse
from tests.support.stats_records import (
    COMPLETE, TORN, WITH_VHOSTUSER, Domain, StatsConnection, without,
)


def later(record, cpu=50):
    return {**record, "cpu.time": cpu}


def test_complete_record_keeps_top_level_devices_only():
    assert [d.device for d in reference_parse.disks_from_stats(COMPLETE)] == ["vda"]
    assert reference_parse.disks_from_stats(COMPLETE)[0].read_bytes == 2
    assert reference_parse.vnics_from_stats(COMPLETE)[0].tx_bytes == 20
    assert not processes.is_torn(COMPLETE, None)


@pytest.mark.parametrize("record", [
    TORN,
    without(COMPLETE, "block.0.rd", "block.0.wr"),
    without(COMPLETE, "net.0.rx", "net.0.tx"),
])
def test_devices_that_had_counters_in_this_process_mark_a_torn_read(record):
    memory = processes.DeviceMemory()
    assert not memory.judge("u", 7, COMPLETE)
    assert memory.judge("u", 7, later(record))


def test_a_port_without_counters_does_not_hide_the_instance():
    memory = processes.DeviceMemory()
    for cpu in (5, 6, 7):  # first read, later polls, the final read
        assert not memory.judge("u", 7, later(WITH_VHOSTUSER, cpu))
    assert [v.device for v in reference_parse.vnics_from_stats(WITH_VHOSTUSER)] == ["tap1"]
    # the destroy race still shows: the devices that had counters lose them
    assert memory.judge("u", 7, later({**TORN, "net.count": 2, "net.1.name": "vhu1a2b3c4d-5e"}))


def test_a_new_qemu_process_starts_a_new_memory():
    memory = processes.DeviceMemory()
    assert not memory.judge("u", 7, COMPLETE)
    # the device that had counters in process 7 has none in process 8 (never had): not torn
    # on its second read, since the first one remembered process 8
    no_net = without(COMPLETE, "net.0.rx", "net.0.tx")
    assert not memory.judge("u", 8, no_net)
    assert not memory.judge("u", 8, later(no_net))
    # same domain id, cpu time went down: a new process (daemon restarted, ids reused)
    assert not memory.judge("u", 8, later(COMPLETE, cpu=100))
    assert not memory.judge("u", 8, later(no_net, cpu=1))


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


# measured racing a destroy: the disk has lost its counters, the vNIC not yet
DISK_TORN_FIRST = {**TORN, "net.0.rx.bytes": 10, "net.0.rx.pkts": 1, "net.0.rx.errs": 0,
                   "net.0.rx.drop": 0, "net.0.tx.bytes": 20, "net.0.tx.pkts": 2,
                   "net.0.tx.errs": 0, "net.0.tx.drop": 0}


def test_without_memory_the_measured_torn_shapes_are_torn():
    memory = processes.DeviceMemory()
    assert memory.judge("a", 1, TORN)  # names, not one counter: the destroy race
    assert memory.judge("c", 1, DISK_TORN_FIRST)  # a disk with its file and no counters
    assert not memory.judge("b", 1, WITH_VHOSTUSER)  # some counters: a vNIC that has none


@pytest.mark.parametrize("record", [TORN, DISK_TORN_FIRST])
def test_a_second_torn_read_of_the_process_is_torn_too(record):
    """Regression (CI, Δ = 0): two reads raced one destroy; the first had no memory of the
    process and was remembered as "no device has counters", so the second was believed and a
    `final` went out without one disk or network meter."""
    clock = Clock()
    memory = processes.DeviceMemory(clock)
    assert memory.judge("a", 1, record)
    clock.now += 2.0  # a destroy's length
    assert memory.judge("a", 1, later(record))


def test_a_torn_looking_shape_kept_for_steady_seconds_is_believed():
    """A domain whose devices never have counters (vhost-user alone) is read once one QEMU
    process has shown the shape for STEADY seconds; a new process starts over."""
    clock = Clock()
    memory = processes.DeviceMemory(clock)
    assert memory.judge("a", 1, TORN)
    clock.now += processes.STEADY - 0.5
    assert memory.judge("a", 1, later(TORN, cpu=40))
    clock.now += 0.5
    assert not memory.judge("a", 1, later(TORN, cpu=45))
    assert not memory.judge("a", 1, later(TORN, cpu=50))
    assert memory.judge("a", 2, later(TORN, cpu=1))  # a new process: judged afresh


def test_devices_gone_from_the_record_mark_a_torn_read_an_unplugged_one_does_not():
    memory = processes.DeviceMemory()
    assert not memory.judge("u", 7, COMPLETE)
    assert memory.judge("u", 7, {"state.state": 1, "cpu.time": 50})  # no device at all
    unplugged = {**without(COMPLETE, "net."), "net.count": 0, "cpu.time": 60}
    assert not memory.judge("u", 7, unplugged)  # the disk still counts: a vNIC was detached


def test_the_flush_does_not_believe_a_second_torn_read():
    conn = StatsConnection(Domain("u", 7), TORN)
    memory = processes.DeviceMemory()
    poller = inspector.Inspector(conn, memory=memory)
    flusher = inspector.Inspector(conn, memory=memory)
    assert poller.poll() == {}  # torn: left out of the poll
    conn.record = later(TORN)
    with pytest.raises(inspector.DomainGone):
        flusher.read("u")


def test_memory_keeps_only_the_domains_it_is_told():
    memory = processes.DeviceMemory()
    memory.judge("a", 1, COMPLETE)
    memory.judge("b", 1, COMPLETE)
    memory.keep_only(["b"])
    no_net = later(without(COMPLETE, "net.0.rx", "net.0.tx"))
    assert memory.judge("b", 1, no_net)
    assert not memory.judge("a", 1, no_net)  # forgotten: judged as a first read


def test_an_empty_cdrom_is_not_a_torn_read():
    record = {**COMPLETE, "block.count": 3, "block.2.name": "hdc"}  # no path, no counters
    assert not processes.is_torn(record, None)
    assert not processes.is_torn(record, processes.counted_devices(COMPLETE))
    assert [d.device for d in reference_parse.disks_from_stats(record)] == ["vda"]


EXTRAS = {**COMPLETE, "block.0.rd.times": 700, "block.0.wr.times": 900,
          "block.0.capacity": 4096, "block.0.allocation": 1024, "block.0.physical": 8192,
          "balloon.current": 2048, "balloon.rss": 512, "balloon.usable": 100,
          "perf.cpu_cycles": 7, "perf.instructions": 8}


def test_latency_and_sizes_come_with_the_disk_capacity_as_ceilometer_reports_it():
    [disk] = reference_parse.disks_from_stats(EXTRAS)
    assert (disk.read_time_ns, disk.write_time_ns) == (700, 900)
    # a cdrom's capacity is 4 KiB-aligned and may be below the file: max(capacity, physical)
    assert (disk.capacity, disk.allocation, disk.physical) == (8192, 1024, 8192)
    [plain] = reference_parse.disks_from_stats(COMPLETE)
    assert (plain.read_time_ns, plain.capacity) == (None, None)


def test_balloon_and_perf_groups_keep_libvirts_names_and_only_what_is_there():
    assert inspector.memory_from_stats(EXTRAS) == {"actual": 2048, "rss": 512, "usable": 100}
    assert inspector.perf_from_stats(EXTRAS) == {"cpu_cycles": 7, "instructions": 8}
    assert inspector.perf_from_stats(COMPLETE) == {}


def test_an_instance_with_a_vhostuser_port_is_polled_and_read_with_its_other_devices():
    conn = StatsConnection(Domain("u", 7), WITH_VHOSTUSER)
    memory = processes.DeviceMemory()
    poller = inspector.Inspector(conn, memory=memory)
    flusher = inspector.Inspector(conn, memory=memory)
    polled = poller.poll()["u"]
    conn.record = later(WITH_VHOSTUSER)
    final = flusher.read("u")
    for reading in (polled, final):
        assert [v.device for v in reading.vnics] == ["tap1"]
        assert [d.device for d in reading.disks] == ["vda"]
        assert reading.process_id == 7
    # the flush's read is judged against what the poller saw: a torn read is still caught
    conn.record = later({**TORN, "net.count": 2, "net.1.name": "vhu1a2b3c4d-5e"}, cpu=60)
    with pytest.raises(inspector.DomainGone):
        flusher.read("u")


class SlowConnection(StatsConnection):
    """Each libvirt call takes a second of the test's clock."""

    def __init__(self, dom, record, clock):
        super().__init__(dom, record)
        self.clock = clock

    def getAllDomainStats(self, groups, flags):
        self.clock.tick()
        return super().getAllDomainStats(groups, flags)

    def domainListGetStats(self, doms, groups):
        self.clock.tick()
        return super().domainListGetStats(doms, groups)


class TickingClock:
    def __init__(self):
        import datetime
        self.now = datetime.datetime(2026, 11, 22, tzinfo=datetime.timezone.utc)
        self.step = datetime.timedelta(seconds=1)

    def __call__(self):
        return self.now

    def tick(self):
        self.now += self.step


def test_readings_are_stamped_when_the_read_was_requested():
    clock = TickingClock()
    requested = clock.now
    conn = SlowConnection(Domain("u", 7), COMPLETE, clock)
    reader = inspector.Inspector(conn, clock=clock)
    assert reader.poll()["u"].read_at == requested
    assert reader.read("u").read_at == requested + clock.step


def test_cpu_is_ceilometers_sum_of_vcpu_time_and_wait():
    """Ceilometer 27's `cpu` (LibvirtInspector.inspect_instance); the interop tier compares
    with its pollster on a real guest."""
    two = {"vcpu.current": 2, "vcpu.maximum": 2, "cpu.time": 900,
           "vcpu.0.time": 100, "vcpu.0.wait": 5, "vcpu.1.time": 200, "vcpu.1.wait": 7}
    assert inspector.vcpu_time_from_stats(two) == 312
    # a hole (vcpu.1 lacks wait) or no per-vCPU group: None, Ceilometer falls back to cpu.time
    assert inspector.vcpu_time_from_stats({**two, "vcpu.1.wait": None}) is None
    assert inspector.vcpu_time_from_stats({"vcpu.current": 1, "cpu.time": 900}) is None
    # hot-unplugged vCPU: maximum 3, current 2, the present ones counted
    assert inspector.vcpu_time_from_stats({**two, "vcpu.maximum": 3}) == 312


class CountingDomain(Domain):
    def __init__(self, uuid, process_id):
        super().__init__(uuid, process_id)
        self.block_info_calls = 0

    def blockInfo(self, dev, flags=0):
        self.block_info_calls += 1
        return super().blockInfo(dev, flags)


def test_a_single_read_takes_disk_sizes_from_block_info_as_ceilometer_does():
    dom = CountingDomain("u", 7)
    conn = StatsConnection(dom, WITH_VHOSTUSER)  # its disk's file is not on this machine
    polled = inspector.Inspector(conn).poll()["u"]
    final = inspector.Inspector(conn).read("u")
    [disk] = final.disks
    assert (disk.capacity, disk.allocation, disk.physical) == (16 << 20, 200 << 10, 192 << 10)
    assert dom.block_info_calls == 1
    assert polled.disks[0].read_bytes == disk.read_bytes  # the counters are the bulk record's


def test_a_disk_file_this_process_can_stat_needs_no_block_info_call(tmp_path):
    image = tmp_path / "disk"
    image.write_bytes(b"q" * 196616)
    sized = {**COMPLETE, "block.0.path": str(image), "block.0.capacity": 16 << 20,
             "block.0.allocation": 0, "block.0.physical": 204800}
    dom = CountingDomain("u", 7)
    [disk] = inspector.Inspector(StatsConnection(dom, sized)).read("u").disks
    # blockInfo's figures: the record's capacity, QEMU's actual size, the file's size
    assert (disk.capacity, disk.allocation, disk.physical) == (16 << 20, 204800, 196616)
    assert dom.block_info_calls == 0
    # a cdrom's capacity is aligned below its file: max(capacity, physical) of blockInfo's
    cdrom = {**sized, "block.0.capacity": 196608}
    [disk] = inspector.Inspector(StatsConnection(dom, cdrom)).read("u").disks
    assert disk.capacity == 196616 and dom.block_info_calls == 0


def test_a_disk_that_is_no_regular_file_asks_block_info():
    record = {**COMPLETE, "block.0.path": "/dev/null", "block.0.capacity": 1,
              "block.0.physical": 2}
    dom = CountingDomain("u", 7)
    [disk] = inspector.Inspector(StatsConnection(dom, record)).read("u").disks
    assert dom.block_info_calls == 1
    assert (disk.capacity, disk.allocation, disk.physical) == (16 << 20, 200 << 10, 192 << 10)


def test_a_single_read_takes_the_process_start_the_poll_learned():
    """Nova's wait reads no pid file for a QEMU process the poll knows (the agent's
    inspectors share these facts)."""
    starts = []

    def read_start(name):
        starts.append(name)
        return 1234.5

    facts = KnownProcesses(read_start)
    conn = StatsConnection(Domain("u", 7), COMPLETE)
    inspector.Inspector(conn, processes=facts).poll()
    reading = inspector.Inspector(conn, processes=facts).read("u")
    assert (reading.process_started_at, reading.domain_name) == (1234.5, "instance-1")
    assert starts == ["instance-1"]  # the poll's read only
    # another QEMU process under the same uuid is not the poll's: read afresh (here, where
    # no process start is visible, None)
    conn.dom = Domain("u", 8)
    assert inspector.Inspector(conn, processes=facts).read("u").process_started_at is None
