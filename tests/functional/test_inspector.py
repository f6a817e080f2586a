"""Inspector against libvirt's in-process test:///default driver (the fallback path).

That driver's bulk stats carry only state.*, so every active reading comes from dom.info(),
blockStats and interfaceStats, whose synthetic values grow with the wall clock: a reading is
checked to lie between two direct reads taken just before and just after it.
"""
from __future__ import annotations

import datetime
import libvirt
import pytest

from tests.support import guests as novalike
from lifecycle_stats.counters import Counters
from lifecycle_stats.exceptions import DomainGone
from lifecycle_stats.reading.hypervisor import Hypervisor
from lifecycle_stats.reading.inspector import VANISHED, Inspector

pytestmark = pytest.mark.libvirt_test_driver

URI = "test:///default"
FIXED = datetime.datetime(2026, 11, 21, 9, 0, tzinfo=datetime.timezone.utc)


class RecordingConn:
    """Wraps a real connection: records getAllDomainStats flags, runs a hook after it."""

    def __init__(self, conn, log, after_bulk=None):
        self._conn = conn
        self._log = log
        self._after_bulk = after_bulk

    def getAllDomainStats(self, stats, flags=0):
        self._log.append(("getAllDomainStats", stats, flags))
        result = self._conn.getAllDomainStats(stats, flags)
        if self._after_bulk:
            self._after_bulk()
        return result

    def __getattr__(self, name):
        return getattr(self._conn, name)


@pytest.fixture
def conn():
    connection = libvirt.open(URI)
    yield connection
    connection.close()


@pytest.fixture
def factory(conn, tmp_path):
    guests = novalike.GuestFactory(conn, str(tmp_path), hypervisor="test", prefix="lsf")
    yield guests
    guests.cleanup()


@pytest.fixture
def make_domain(factory):
    """make(running=True, persistent=False): a test-driver nova guest with disks vda, vdb."""
    def make(running=True, persistent=False):
        guest, dom = factory.create(paused=False, persistent=persistent or not running,
                                    disks=("vda", "vdb"))
        if not running:
            factory.destroy(guest, undefine=False)  # defined, shut off
        return guest, dom
    return make


def inspector(counters=None, log=None, after_bulk=None, clock=lambda: FIXED):
    def open_fn(uri):
        return RecordingConn(libvirt.open(uri), log if log is not None else [], after_bulk)
    return Inspector(Hypervisor(URI, open_fn=open_fn), clock=clock, counters=counters)


def assert_bracketed(before, got, after):
    assert all(b <= g <= a for b, g, a in zip(before, got, after, strict=True)), (
        before, got, after)


def test_poll_reads_running_domains_through_the_fallback(make_domain):
    guest, dom = make_domain()
    disk_before = dom.blockStats("vdb")
    nic_before = dom.interfaceStats(guest.vnics[0])
    cpu_before = dom.info()[4]
    readings = inspector().poll()
    disk_after, nic_after = dom.blockStats("vdb"), dom.interfaceStats(guest.vnics[0])
    cpu_after = dom.info()[4]

    reading = readings[guest.instance_id]
    assert (reading.domain_name, reading.state, reading.active, reading.path) == (
        guest.domain_name, "running", True, "fallback")
    assert cpu_before <= reading.cpu_time_ns <= cpu_after
    assert [d.device for d in reading.disks] == ["vda", "vdb"]
    vdb = reading.disks[1]
    assert_bracketed(disk_before[:4], (vdb.read_requests, vdb.read_bytes, vdb.write_requests,
                                       vdb.write_bytes), disk_after[:4])
    (nic,) = reading.vnics
    assert nic.device == guest.vnics[0]
    assert_bracketed(nic_before, (nic.rx_bytes, nic.rx_packets, nic.rx_errors, nic.rx_drops,
                                  nic.tx_bytes, nic.tx_packets, nic.tx_errors, nic.tx_drops),
                     nic_after)
    assert reading.vcpus == guest.vcpus
    assert reading.memory_max_kib == guest.memory_mb * 1024
    assert reading.read_at == FIXED


def test_poll_leaves_out_shut_off_domains(make_domain):
    running, _ = make_domain()
    stopped, _ = make_domain(running=False)
    readings = inspector().poll()
    assert running.instance_id in readings
    assert stopped.instance_id not in readings
    assert all(r.active and r.cpu_time_ns is not None for r in readings.values())


def test_read_of_shut_off_domain_has_no_cpu_and_no_devices(make_domain):
    guest, _ = make_domain(running=False)
    reading = inspector().read(guest.instance_id)
    assert (reading.state, reading.active, reading.cpu_time_ns) == ("shutoff", False, None)
    assert reading.disks == () and reading.vnics == ()
    assert reading.path == "single"


def test_read_of_paused_domain(make_domain):
    guest, dom = make_domain()
    dom.suspend()
    reading = inspector().read(guest.instance_id)
    assert (reading.state, reading.active, reading.path) == ("paused", True, "fallback")
    assert reading.cpu_time_ns > 0
    assert [d.device for d in reading.disks] == ["vda", "vdb"]


def test_read_of_unknown_or_destroyed_domain_raises_domain_gone(make_domain):
    guest, dom = make_domain()
    dom.destroy()  # transient: destroy removes it
    with pytest.raises(DomainGone) as info:
        inspector().read(guest.instance_id)
    assert info.value.instance_id == guest.instance_id


def test_connection_remembers_missing_bulk_groups(make_domain):
    guest, _ = make_domain()
    log = []
    insp = inspector(log=log)
    first, second = insp.poll(), insp.poll()
    assert first[guest.instance_id].disks and second[guest.instance_id].disks
    groups = [stats for _, stats, _ in log]
    assert groups[0] & libvirt.VIR_DOMAIN_STATS_BLOCK
    assert groups[1] == libvirt.VIR_DOMAIN_STATS_STATE  # straight to the fallback
    assert all(flags == libvirt.VIR_CONNECT_GET_ALL_DOMAINS_STATS_ACTIVE for *_, flags in log)


def test_a_new_connection_probes_bulk_groups_again(make_domain):
    make_domain()
    log = []
    insp = inspector(log=log)
    insp.poll()
    insp._hv.close()
    insp.poll()
    assert [stats & libvirt.VIR_DOMAIN_STATS_CPU_TOTAL for _, stats, _ in log] == [
        libvirt.VIR_DOMAIN_STATS_CPU_TOTAL, libvirt.VIR_DOMAIN_STATS_CPU_TOTAL]


def test_domain_vanishing_mid_poll_is_dropped_and_counted(conn, make_domain):
    staying, _ = make_domain()
    leaving, leaving_dom = make_domain()
    counters = Counters()
    insp = inspector(counters=counters, after_bulk=leaving_dom.destroy)
    readings = insp.poll()
    assert leaving.instance_id not in readings
    assert staying.instance_id in readings
    assert counters.get(VANISHED) == 1


def test_domain_stopping_mid_poll_is_left_out(make_domain):
    staying, _ = make_domain()
    stopping, stopping_dom = make_domain(persistent=True)
    readings = inspector(after_bulk=stopping_dom.destroy).poll()
    assert stopping.instance_id not in readings
    assert staying.instance_id in readings


def test_memory_is_the_balloon_size(conn):
    dom = conn.lookupByName("test")  # the driver's own domain reports memoryStats "actual"
    actual = dom.memoryStats()["actual"]
    reading = inspector().read(dom.UUIDString())
    assert reading.memory_kib == actual


def test_read_at_is_stamped_after_the_counters_were_read(make_domain):
    guest, _ = make_domain()
    stamps = []

    def clock():
        stamps.append(FIXED + datetime.timedelta(seconds=len(stamps)))
        return stamps[-1]
    reading = inspector(clock=clock).read(guest.instance_id)
    assert reading.read_at == stamps[-1]
