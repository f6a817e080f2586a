"""LifecycleListener against the real libvirtd (qemu:///system) and QEMU guests.

test_reconnect_across_libvirtd_restart restarts the shared daemon (briefly disturbing other
integration runs on this host); it is the only test here that does, and it always leaves
libvirtd running.
"""
from __future__ import annotations

import os
import signal
import subprocess
import threading
import time

import libvirt
import pytest

from tests.support import guests as novalike
from lifecycle_stats.listeners import libvirt_events as le

pytestmark = pytest.mark.integration

# Keepalive and close callbacks only work on connections opened after this; collection
# runs before any fixture opens one.
le.ensure_event_loop()

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PIDFILE = "/run/libvirtd.pid"


class Collector:
    """Keeps the events of the instances it was told about (the daemon is shared)."""

    def __init__(self):
        self.wanted: set[str] = set()
        self.events = []
        self.cond = threading.Condition()

    def __call__(self, event):
        with self.cond:
            if event.instance_id in self.wanted:
                self.events.append(event)
                self.cond.notify_all()

    def watch(self, instance_id):
        with self.cond:
            self.wanted.add(instance_id)

    def of(self, instance_id):
        with self.cond:
            return [e for e in self.events if e.instance_id == instance_id]

    def wait_for(self, instance_id, event, detail=None, timeout=15.0):
        def found():
            return [e for e in self.events if e.instance_id == instance_id
                    and e.event == event and detail in (None, e.detail)]
        with self.cond:
            ok = self.cond.wait_for(found, timeout)
        assert ok, f"no {event}/{detail} for {instance_id}: {self.pairs(instance_id)}"
        return found()[0]

    def pairs(self, instance_id):
        return [(e.event, e.detail) for e in self.of(instance_id)]


def wait_until(predicate, timeout, what):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def test_real_guest_lifecycle_events(libvirt_uri, guest_factory):
    collector = Collector()
    uid = novalike.NovaGuest().instance_id
    collector.watch(uid)
    listener = le.LifecycleListener(libvirt_uri, collector)
    listener.start()
    try:
        guest, dom = guest_factory.create(paused=True, persistent=True, instance_id=uid)
        collector.wait_for(uid, "started", "booted")
        dom.setMetadata(libvirt.VIR_DOMAIN_METADATA_ELEMENT, "<x:k>v</x:k>", "x",
                        "http://example.org/lst", libvirt.VIR_DOMAIN_AFFECT_LIVE)
        collector.wait_for(uid, "metadata_changed", "element")
        dom.destroy()
        shutdown = collector.wait_for(uid, "shutdown")
        stopped = collector.wait_for(uid, "stopped", "destroyed")
        dom.undefine()
        collector.wait_for(uid, "undefined", "removed")
    finally:
        listener.stop()
    gap_ms = (stopped.received_at - shutdown.received_at).total_seconds() * 1000
    pairs = collector.pairs(uid)
    print(f"\nSHUTDOWN({shutdown.detail}) -> STOPPED(destroyed) gap: {gap_ms:.1f} ms; "
          f"events: {pairs}")
    assert pairs[:3] == [("defined", "added"), ("started", "booted"), ("suspended", "paused")]
    assert shutdown.detail in ("finished", "host")
    assert 0 <= gap_ms < 5000
    assert pairs.index(("shutdown", shutdown.detail)) < pairs.index(("stopped", "destroyed"))
    assert pairs.index(("stopped", "destroyed")) < pairs.index(("undefined", "removed"))
    assert pairs[-1] == ("undefined", "removed")
    assert {e.domain_name for e in collector.of(uid)} == {guest.domain_name}
    assert listener.counters.get("events.handler_errors") == 0


# ------------------------------------------------------------------------------ restart
def _daemon_answers() -> bool:
    return subprocess.run(["virsh", "-c", "qemu:///system", "version"],
                          capture_output=True).returncode == 0


def _libvirtd_pid() -> int:
    with open(PIDFILE) as f:
        return int(f.read().strip())


def _stop_libvirtd() -> None:
    """SIGTERM the daemon by its pid (guests keep running) and wait until it is gone."""
    pid = _libvirtd_pid()
    os.kill(pid, signal.SIGTERM)
    wait_until(lambda: not os.path.exists(f"/proc/{pid}"), 30, f"libvirtd {pid} to exit")


def _start_libvirtd() -> None:
    subprocess.run(["libvirtd", "-d"], check=True, capture_output=True)
    wait_until(_daemon_answers, 30, "libvirtd to answer")


def _ensure_libvirtd() -> None:
    if not _daemon_answers():
        subprocess.run(["bash", os.path.join(ROOT, "tools", "setup_hypervisor.sh")],
                       check=True, capture_output=True)


def _restart_libvirtd(listener) -> None:
    """Stop the daemon, see the listener notice, start it again; libvirtd runs afterwards."""
    try:
        _stop_libvirtd()
        wait_until(lambda: not listener.is_connected, 15, "listener to notice the loss")
        _start_libvirtd()
    finally:
        _ensure_libvirtd()


def test_reconnect_across_libvirtd_restart(libvirt_uri, tmp_path):
    baseline = set(threading.enumerate())
    collector = Collector()
    resyncs = []
    listener = le.LifecycleListener(libvirt_uri, collector, reconnect_max_wait=1.0,
                                    keepalive_interval=1, keepalive_count=2,
                                    on_reconnect=lambda: resyncs.append(time.monotonic()))
    conn = factory = None
    listener.start()
    try:
        assert listener.is_connected
        _restart_libvirtd(listener)
        wait_until(lambda: listener.is_connected, 30, "listener to reconnect")
        wait_until(lambda: resyncs, 10, "on_reconnect")
        conn = libvirt.open(libvirt_uri)
        factory = novalike.GuestFactory(conn, str(tmp_path), hypervisor="qemu", prefix="lst")
        guest = novalike.NovaGuest()
        collector.watch(guest.instance_id)
        factory.create(paused=True, persistent=True, instance_id=guest.instance_id)
        collector.wait_for(guest.instance_id, "started", "booted")
    finally:
        try:
            if factory is not None:
                factory.cleanup()
        finally:
            if conn is not None:
                conn.close()
            listener.stop()
    assert len(resyncs) == 1
    assert listener.counters.get("libvirt.disconnects") == 1
    assert listener.counters.get("libvirt.reconnects") == 1
    wait_until(lambda: set(threading.enumerate()) <= baseline, 5, "listener threads to end")
