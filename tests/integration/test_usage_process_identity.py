"""The QEMU process fact the usage ledger identifies processes by, on real guests
(qemu:///system): libvirt's pid file and /proc give each process's start time, a non-root
agent can read both, and a destroy + start gives a new process (new id, later start) that
the ledger tells from the old one and counts from zero."""
from __future__ import annotations

import datetime
import os
import stat
import time

import pytest

from lifecycle_stats.reading import qemu_process
from lifecycle_stats.reading.hypervisor import Hypervisor
from lifecycle_stats.reading.inspector import Inspector
from lifecycle_stats.usage import identity

pytestmark = pytest.mark.integration


def test_each_qemu_process_has_its_own_start_and_a_restart_is_newer(libvirt_uri,
                                                                     guest_factory):
    guest, dom = guest_factory.create()
    inspector = Inspector(Hypervisor(libvirt_uri))
    first = inspector.read(guest.instance_id)
    pidfile = os.path.join(qemu_process.QEMU_RUN_DIR, f"{guest.domain_name}.pid")
    assert first.process_started_at is not None
    # libvirt writes the pid file once QEMU is up: measured 0.8 s after its start here
    assert -0.05 <= os.stat(pidfile).st_mtime - first.process_started_at < 10  # 10 ms ticks
    assert abs(first.process_started_at - time.time()) < 60
    # readable by any user: the agent need not run as root
    assert os.stat(pidfile).st_mode & stat.S_IROTH
    assert os.stat(qemu_process.QEMU_RUN_DIR).st_mode & stat.S_IXOTH
    with open(pidfile, encoding="ascii") as pid:
        assert os.stat(f"/proc/{pid.read().strip()}/stat").st_mode & stat.S_IROTH

    again = inspector.read(guest.instance_id)
    assert abs(again.process_started_at - first.process_started_at) < 0.1  # /proc/uptime: 10 ms
    assert identity.relation(first.process_id, first.process_started_at, first.cpu_time_ns,
                             again) is identity.Relation.SAME

    dom.destroy()
    time.sleep(1.1)  # beyond identity.SAME_START_SECONDS, as any real restart is
    dom.create()
    second = inspector.read(guest.instance_id)
    assert second.process_id != first.process_id
    assert second.process_started_at > first.process_started_at
    assert identity.relation(first.process_id, first.process_started_at, first.cpu_time_ns,
                             second) is identity.Relation.NEWER
    assert identity.relation(second.process_id, second.process_started_at,
                             second.cpu_time_ns, first) is identity.Relation.OLDER
    started = datetime.datetime.fromtimestamp(second.process_started_at, datetime.timezone.utc)
    assert started <= second.read_at
