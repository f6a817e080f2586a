"""LifecycleListener on libvirt's in-process test:///default driver: real libvirt events.

The test driver has no keepalive (the listener tolerates that) and cannot lose its
connection, so reconnects are covered by the unit and integration tiers.
"""
from __future__ import annotations

import threading
import time
import uuid

import libvirt
import pytest

from tests.support import guests as novalike
from lifecycle_stats.listeners import libvirt_events as le

pytestmark = pytest.mark.libvirt_test_driver

# Before this process opens its first libvirt connection (collection runs before any test).
le.ensure_event_loop()

URI = "test:///default"


class Collector:
    def __init__(self, instance_id):
        self.instance_id = instance_id
        self.events = []
        self.cond = threading.Condition()

    def __call__(self, event):
        if event.instance_id == self.instance_id:
            with self.cond:
                self.events.append(event)
                self.cond.notify_all()

    def wait_for(self, pair, timeout=5.0):
        with self.cond:
            ok = self.cond.wait_for(
                lambda: pair in [(e.event, e.detail) for e in self.events], timeout)
        assert ok, f"no {pair} among {self.pairs()}"

    def pairs(self):
        with self.cond:
            return [(e.event, e.detail) for e in self.events]


@pytest.fixture
def conn():
    c = libvirt.open(URI)
    yield c
    c.close()


def test_full_lifecycle_of_a_test_driver_domain(conn):
    guest = novalike.NovaGuest(domain_name=f"lst-fn-{uuid.uuid4().hex[:8]}")
    collector = Collector(guest.instance_id)
    before = set(threading.enumerate())
    listener = le.LifecycleListener(URI, collector)
    listener.start()
    try:
        assert listener.is_connected
        dom = conn.defineXML(novalike.domain_xml(guest, "test"))
        dom.create()
        dom.suspend()
        dom.resume()
        dom.setMetadata(libvirt.VIR_DOMAIN_METADATA_ELEMENT, "<x:k>v</x:k>", "x",
                        "http://example.org/lst", libvirt.VIR_DOMAIN_AFFECT_LIVE)
        dom.destroy()
        dom.undefine()
        collector.wait_for(("undefined", "removed"))
    finally:
        listener.stop()
    assert collector.pairs() == [
        ("defined", "added"), ("started", "booted"), ("suspended", "paused"),
        ("resumed", "unpaused"), ("metadata_changed", "element"), ("stopped", "destroyed"),
        ("undefined", "removed")]
    assert {e.domain_name for e in collector.events} == {guest.domain_name}
    deadline = time.monotonic() + 5
    while set(threading.enumerate()) - before and time.monotonic() < deadline:
        time.sleep(0.01)
    assert set(threading.enumerate()) - before == set()


def test_no_events_after_stop(conn):
    guest = novalike.NovaGuest(domain_name=f"lst-fn-{uuid.uuid4().hex[:8]}")
    collector = Collector(guest.instance_id)
    listener = le.LifecycleListener(URI, collector)
    listener.start()
    listener.stop()
    dom = conn.defineXML(novalike.domain_xml(guest, "test"))
    try:
        time.sleep(0.3)
        assert collector.pairs() == []
    finally:
        dom.undefine()
