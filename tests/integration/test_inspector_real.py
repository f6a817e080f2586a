"""Inspector and Hypervisor against the real libvirtd + QEMU (qemu:///system).

Guests come from the shared guest_factory (tests/integration/conftest.py): nova-like, paused,
a unique tap; the main one's disk is a qcow2 overlay on a backing image, so the backing chain
is real. A missing daemon fails these tests in CI (tests/conftest.py).
"""
from __future__ import annotations

import os
import re
import subprocess
import time

import libvirt
import pytest

from lifecycle_stats.exceptions import DomainGone
from lifecycle_stats.reading.hypervisor import Hypervisor
from lifecycle_stats.reading.inspector import Inspector
from tests.support.reference_parse import disks_from_stats

pytestmark = pytest.mark.integration


@pytest.fixture
def running(guest_factory):
    """A paused guest on a qcow2 overlay with a backing image, that ran for a moment so its
    cpu counter has grown."""
    workdir = guest_factory.workdir
    base, top = os.path.join(workdir, "base.qcow2"), os.path.join(workdir, "top.qcow2")
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", base, "16M"], check=True)
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-b", base, "-F", "qcow2", top],
                   check=True)
    guest, dom = guest_factory.create(disk_paths=(top,))
    dom.resume()
    time.sleep(0.3)
    dom.suspend()
    return guest, dom


def test_bulk_poll_and_single_read_agree(libvirt_uri, running):
    guest, dom = running
    inspector = Inspector(Hypervisor(libvirt_uri))
    bulk = inspector.poll()[guest.instance_id]
    single = inspector.read(guest.instance_id)

    assert (bulk.path, single.path) == ("bulk", "single")
    assert bulk.state == single.state == "paused" and bulk.active and single.active
    assert 0 < bulk.cpu_time_ns <= single.cpu_time_ns
    assert [d.device for d in bulk.disks] == [d.device for d in single.disks] == ["vda"]
    assert [n.device for n in bulk.vnics] == [n.device for n in single.vnics] == list(guest.vnics)
    # sizes are gauges, and a single read takes them from blockInfo (Ceilometer's call)
    sizes = {"device", "capacity", "allocation", "physical"}
    for before, after in zip(bulk.disks + bulk.vnics, single.disks + single.vnics):
        counters = [f for f in vars(before) if f not in sizes]
        assert all(getattr(before, f) <= getattr(after, f) for f in counters), (before, after)
    assert bulk.disks[0].read_requests > 0  # the firmware read the boot disk
    # the file's sizes come from the record and a stat(): the figures blockInfo gives
    [disk] = single.disks
    assert (disk.capacity, disk.allocation, disk.physical) == tuple(dom.blockInfo("vda", 0))
    assert single.memory_kib == guest.memory_mb * 1024 and single.vcpus == guest.vcpus


def test_backing_chain_entries_are_not_disks(guest_factory, running):
    _, dom = running
    flags = (libvirt.VIR_CONNECT_GET_ALL_DOMAINS_STATS_BACKING
             | libvirt.VIR_CONNECT_GET_ALL_DOMAINS_STATS_ACTIVE)
    ((_, record),) = guest_factory.conn.domainListGetStats(
        [dom], libvirt.VIR_DOMAIN_STATS_BLOCK, flags)
    names = [record[f"block.{i}.name"] for i in range(record["block.count"])]
    assert names == ["vda", "vda"]  # the overlay and its backing image
    (disk,) = disks_from_stats(record)
    assert disk.read_requests == record["block.0.rd.reqs"]


def test_shut_off_domain_is_not_polled_and_reads_as_inactive(libvirt_uri, guest_factory):
    guest, _ = guest_factory.create()
    guest_factory.destroy(guest, undefine=False)  # defined, shut off
    inspector = Inspector(Hypervisor(libvirt_uri))
    assert guest.instance_id not in inspector.poll()
    reading = inspector.read(guest.instance_id)
    assert (reading.state, reading.active, reading.cpu_time_ns) == ("shutoff", False, None)
    assert reading.disks == () and reading.vnics == ()


def test_read_of_destroyed_transient_domain_raises_domain_gone(libvirt_uri, guest_factory):
    guest, dom = guest_factory.create(persistent=False)
    inspector = Inspector(Hypervisor(libvirt_uri))
    assert inspector.read(guest.instance_id).active
    dom.destroy()
    with pytest.raises(DomainGone) as info:
        inspector.read(guest.instance_id)
    assert info.value.instance_id == guest.instance_id
    assert guest.instance_id not in inspector.poll()


def _client_ids_of_this_process():
    listing = subprocess.run(["virt-admin", "srv-clients-list", "libvirtd"], check=True,
                             capture_output=True, text=True).stdout
    mine = set()
    for client in re.findall(r"^\s*(\d+)\s", listing, re.M):
        info = subprocess.run(["virt-admin", "client-info", "libvirtd", client],
                              capture_output=True, text=True).stdout
        if re.search(rf"unix_process_id\s*:\s*{os.getpid()}\b", info):
            mine.add(client)
    return mine


def _open_new_client(hypervisor):
    before = _client_ids_of_this_process()
    hypervisor.connection()
    (client,) = _client_ids_of_this_process() - before
    return client


def test_poll_survives_libvirtd_dropping_the_connection(libvirt_uri, running):
    guest, _ = running
    sleeps = []
    poller = Hypervisor(libvirt_uri, sleep=sleeps.append)
    flusher = Hypervisor(libvirt_uri)  # the flush path's own connection
    poller_client = _open_new_client(poller)
    flusher_client = _open_new_client(flusher)
    assert poller_client != flusher_client
    subprocess.run(["virt-admin", "client-disconnect", "libvirtd", poller_client],
                   check=True, capture_output=True)
    time.sleep(0.2)

    readings = Inspector(poller).poll()  # the first call meets the dead socket
    assert guest.instance_id in readings
    assert sleeps == [0.1]
    assert poller_client not in _client_ids_of_this_process()
    assert flusher.is_alive() and Inspector(flusher).read(guest.instance_id).active
    poller.close()
    flusher.close()


def test_a_kept_handle_reads_the_domains_new_process_and_its_end(libvirt_uri, guest_factory):
    """learn_domains() spares a delete's read the lookup; a handle kept across a restart of
    the QEMU process reads the new process (its id from libvirt now, not the handle's), and a
    domain undefined since reads as gone."""
    guest, dom = guest_factory.create()
    inspector = Inspector(Hypervisor(libvirt_uri))
    assert inspector.learn_domains() >= 1
    first = inspector.read(guest.instance_id)
    dom.destroy()
    dom.create()  # the same domain, a new QEMU process
    again = inspector.read(guest.instance_id)
    assert again.active and again.process_id == dom.ID() != first.process_id
    guest_factory.destroy(guest)  # destroyed and undefined
    with pytest.raises(DomainGone):
        inspector.read(guest.instance_id)
