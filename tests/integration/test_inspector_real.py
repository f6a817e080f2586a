"""Inspector and Hypervisor against the real libvirtd + QEMU (qemu:///system).

Guests are nova-like (novalike.domain_xml(..., "qemu")) with a qcow2 overlay on a backing
image, so the backing chain is real, and a unique tap. A missing daemon fails these tests.
"""
from __future__ import annotations

import os
import re
import subprocess
import time
import uuid

import libvirt
import pytest

from lifecycle_stats import novalike
from lifecycle_stats.exceptions import DomainGone
from lifecycle_stats.hypervisor import Hypervisor
from lifecycle_stats.inspector import Inspector, disks_from_stats

pytestmark = pytest.mark.integration

URI = "qemu:///system"


class Guests:
    """Creates nova-like guests on the real daemon and removes every one of them."""

    def __init__(self, conn, workdir):
        self.conn = conn
        self.workdir = workdir
        self.made = []  # (instance_id, image paths)

    def guest(self):
        tag = uuid.uuid4().hex[:10]
        base = os.path.join(self.workdir, f"{tag}-base.qcow2")
        top = os.path.join(self.workdir, f"{tag}.qcow2")
        subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", base, "16M"], check=True)
        subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-b", base, "-F", "qcow2",
                        top], check=True)
        guest = novalike.NovaGuest(domain_name=f"lsi-{tag}", display_name=f"lsi-{tag}",
                                   disk_paths=(top,), vnics=(f"lsi{tag}",))
        self.made.append((guest.instance_id, (top, base)))
        return guest, novalike.domain_xml(guest, "qemu")

    def start_paused(self):
        guest, xml = self.guest()
        return guest, self.conn.createXML(xml, libvirt.VIR_DOMAIN_START_PAUSED)

    def define(self):
        guest, xml = self.guest()
        return guest, self.conn.defineXML(xml)

    def remove_all(self):
        for instance_id, images in self.made:
            _remove_domain(self.conn, instance_id)
            for path in images:
                if os.path.exists(path):
                    os.unlink(path)


def _remove_domain(conn, instance_id):
    try:
        dom = conn.lookupByUUIDString(instance_id)
    except libvirt.libvirtError:
        return
    persistent = dom.isPersistent()
    if dom.isActive():
        dom.destroy()
    if persistent:
        dom.undefine()


@pytest.fixture(scope="module")
def conn():
    connection = libvirt.open(URI)  # no daemon: this errors, loudly
    yield connection
    connection.close()


@pytest.fixture(scope="module")
def guests(conn, tmp_path_factory):
    made = Guests(conn, str(tmp_path_factory.mktemp("guests")))
    try:
        yield made
    finally:
        made.remove_all()


@pytest.fixture(scope="module")
def running(guests):
    """A paused guest that ran for a moment, so its cpu counter has grown."""
    guest, dom = guests.start_paused()
    dom.resume()
    time.sleep(0.3)
    dom.suspend()
    return guest, dom


def test_bulk_poll_and_single_read_agree(running):
    guest, _ = running
    inspector = Inspector(Hypervisor(URI))
    bulk = inspector.poll()[guest.instance_id]
    single = inspector.read(guest.instance_id)

    assert (bulk.path, single.path) == ("bulk", "single")
    assert bulk.state == single.state == "paused" and bulk.active and single.active
    assert 0 < bulk.cpu_time_ns <= single.cpu_time_ns
    assert [d.device for d in bulk.disks] == [d.device for d in single.disks] == ["vda"]
    assert [n.device for n in bulk.vnics] == [n.device for n in single.vnics] == list(guest.vnics)
    for before, after in zip(bulk.disks + bulk.vnics, single.disks + single.vnics):
        counters = [f for f in vars(before) if f != "device"]
        assert all(getattr(before, f) <= getattr(after, f) for f in counters), (before, after)
    assert bulk.disks[0].read_requests > 0  # the firmware read the boot disk
    assert single.memory_kib == guest.memory_mb * 1024 and single.vcpus == guest.vcpus


def test_backing_chain_entries_are_not_disks(conn, running):
    guest, dom = running
    flags = (libvirt.VIR_CONNECT_GET_ALL_DOMAINS_STATS_BACKING
             | libvirt.VIR_CONNECT_GET_ALL_DOMAINS_STATS_ACTIVE)
    ((_, record),) = conn.domainListGetStats([dom], libvirt.VIR_DOMAIN_STATS_BLOCK, flags)
    names = [record[f"block.{i}.name"] for i in range(record["block.count"])]
    assert names == ["vda", "vda"]  # the overlay and its backing image
    (disk,) = disks_from_stats(record)
    assert disk.read_requests == record["block.0.rd.reqs"]


def test_shut_off_domain_is_not_polled_and_reads_as_inactive(guests):
    guest, _ = guests.define()
    inspector = Inspector(Hypervisor(URI))
    assert guest.instance_id not in inspector.poll()
    reading = inspector.read(guest.instance_id)
    assert (reading.state, reading.active, reading.cpu_time_ns) == ("shutoff", False, None)
    assert reading.disks == () and reading.vnics == ()


def test_read_of_destroyed_transient_domain_raises_domain_gone(guests):
    guest, dom = guests.start_paused()
    inspector = Inspector(Hypervisor(URI))
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


def test_poll_survives_libvirtd_dropping_the_connection(running):
    guest, _ = running
    sleeps = []
    poller = Hypervisor(URI, sleep=sleeps.append)
    flusher = Hypervisor(URI)  # the flush path's own connection
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
