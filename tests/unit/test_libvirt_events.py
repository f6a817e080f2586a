"""Unit tests for listeners.libvirt_events: translation tables, worker, reconnect, stop.

A FakeConnection stands in for libvirtd: it records what the listener registers and lets the
test fire lifecycle/metadata/close callbacks from its own thread, as libvirt's event loop would.
"""
from __future__ import annotations

import datetime
import logging
import threading
import time

import libvirt
import pytest
from oslo_config import cfg

from lifecycle_stats import exceptions
from lifecycle_stats.counters import Counters
from lifecycle_stats.listeners import libvirt_events as le
from lifecycle_stats.reading import hypervisor

T0 = datetime.datetime(2026, 11, 21, 9, 0, tzinfo=datetime.timezone.utc)
EVENT_NAMES = ("DEFINED", "UNDEFINED", "STARTED", "SUSPENDED", "RESUMED", "STOPPED",
               "SHUTDOWN", "PMSUSPENDED", "CRASHED")


def _detail_constants():
    """Every VIR_DOMAIN_EVENT_<EVENT>_<DETAIL> constant of the installed libvirt."""
    cases = []
    for event in EVENT_NAMES:
        prefix = f"VIR_DOMAIN_EVENT_{event}_"
        for attr in dir(libvirt):
            if attr.startswith(prefix) and not attr.endswith("_LAST"):
                detail = attr[len(prefix):]
                cases.append(pytest.param(event, detail, id=f"{event}_{detail}".lower()))
    return cases


DETAIL_CASES = _detail_constants()


def test_every_libvirt_detail_constant_is_covered_and_nothing_else():
    """The parametrization below is not vacuous, and the table invents no names."""
    from_libvirt = {(p.values[0].lower(), p.values[1].lower()) for p in DETAIL_CASES}
    in_table = set()
    for event in EVENT_NAMES:
        code = getattr(libvirt, f"VIR_DOMAIN_EVENT_{event}")
        for detail in range(20):
            name = le.translate_lifecycle(code, detail)
            if not name[1].startswith("unknown-"):
                in_table.add(name)
    assert len(from_libvirt) >= 39
    assert in_table == from_libvirt


@pytest.mark.parametrize("event,detail", DETAIL_CASES)
def test_translate_lifecycle_matches_every_libvirt_constant(event, detail):
    code = getattr(libvirt, f"VIR_DOMAIN_EVENT_{event}")
    detail_code = getattr(libvirt, f"VIR_DOMAIN_EVENT_{event}_{detail}")
    assert le.translate_lifecycle(code, detail_code) == (event.lower(), detail.lower())


@pytest.mark.parametrize("event,detail,expected", [
    (libvirt.VIR_DOMAIN_EVENT_STOPPED, libvirt.VIR_DOMAIN_EVENT_STOPPED_DESTROYED,
     ("stopped", "destroyed")),
    (libvirt.VIR_DOMAIN_EVENT_STOPPED, libvirt.VIR_DOMAIN_EVENT_STOPPED_MIGRATED,
     ("stopped", "migrated")),
    (libvirt.VIR_DOMAIN_EVENT_STOPPED, libvirt.VIR_DOMAIN_EVENT_STOPPED_SHUTDOWN,
     ("stopped", "shutdown")),
    (libvirt.VIR_DOMAIN_EVENT_SHUTDOWN, libvirt.VIR_DOMAIN_EVENT_SHUTDOWN_FINISHED,
     ("shutdown", "finished")),
    (libvirt.VIR_DOMAIN_EVENT_SHUTDOWN, libvirt.VIR_DOMAIN_EVENT_SHUTDOWN_HOST,
     ("shutdown", "host")),
    (libvirt.VIR_DOMAIN_EVENT_STARTED, libvirt.VIR_DOMAIN_EVENT_STARTED_BOOTED,
     ("started", "booted")),
    (libvirt.VIR_DOMAIN_EVENT_UNDEFINED, libvirt.VIR_DOMAIN_EVENT_UNDEFINED_REMOVED,
     ("undefined", "removed")),
    (libvirt.VIR_DOMAIN_EVENT_SUSPENDED, libvirt.VIR_DOMAIN_EVENT_SUSPENDED_API_ERROR,
     ("suspended", "api_error")),
    (libvirt.VIR_DOMAIN_EVENT_STOPPED, 99, ("stopped", "unknown-99")),
    (libvirt.VIR_DOMAIN_EVENT_STOPPED, -1, ("stopped", "unknown--1")),
    (42, 0, ("unknown-42", "unknown-0")),
])
def test_translate_lifecycle_named_and_unknown_codes(event, detail, expected):
    assert le.translate_lifecycle(event, detail) == expected


@pytest.mark.parametrize("mtype,detail", [
    (libvirt.VIR_DOMAIN_METADATA_DESCRIPTION, "description"),
    (libvirt.VIR_DOMAIN_METADATA_TITLE, "title"),
    (libvirt.VIR_DOMAIN_METADATA_ELEMENT, "element"),
    (7, "unknown-7"),
])
def test_translate_metadata(mtype, detail):
    assert le.translate_metadata(mtype) == ("metadata_changed", detail)


# ---------------------------------------------------------------------------- fakes
class FakeDomain:
    def __init__(self, uuid="11111111-2222-3333-4444-555555555555", name="instance-0000002a"):
        self._uuid, self._name = uuid, name

    def UUIDString(self):
        return self._uuid

    def name(self):
        return self._name


class FakeConnection:
    def __init__(self):
        self.keepalive = None
        self.close_cb = None
        self.events = {}  # callback id -> (event id, callback)
        self.deregistered = []
        self.close_unregistered = False
        self.closed = False
        self._ids = iter(range(1, 1000))

    def setKeepAlive(self, interval, count):
        self.keepalive = (interval, count)

    def registerCloseCallback(self, cb, opaque):
        self.close_cb = (cb, opaque)

    def unregisterCloseCallback(self):
        self.close_unregistered = True

    def domainEventRegisterAny(self, dom, event_id, cb, opaque):
        cid = next(self._ids)
        self.events[cid] = (event_id, cb, opaque)
        return cid

    def domainEventDeregisterAny(self, cid):
        self.deregistered.append(cid)

    def close(self):
        self.closed = True

    # driven by the test, as libvirt's event loop would
    def fire_lifecycle(self, event, detail, dom=None):
        for event_id, cb, opaque in list(self.events.values()):
            if event_id == libvirt.VIR_DOMAIN_EVENT_ID_LIFECYCLE:
                cb(self, dom or FakeDomain(), event, detail, opaque)

    def fire_metadata(self, mtype, dom=None):
        for event_id, cb, opaque in list(self.events.values()):
            if event_id == libvirt.VIR_DOMAIN_EVENT_ID_METADATA_CHANGE:
                cb(self, dom or FakeDomain(), mtype, "http://x/", opaque)

    def fire_close(self, reason=libvirt.VIR_CONNECT_CLOSE_REASON_EOF):
        cb, opaque = self.close_cb
        cb(self, reason, opaque)


def daemon_down_error():
    """What libvirt.open raises while libvirtd is down (measured: SYSTEM_ERROR from RPC)."""
    libvirt.virResetLastError()
    exc = libvirt.libvirtError("Failed to connect socket")
    exc.err = (libvirt.VIR_ERR_SYSTEM_ERROR, libvirt.VIR_FROM_RPC, str(exc),
               libvirt.VIR_ERR_ERROR, None, None, None, -1, -1)
    return exc


class Opener:
    """open_connection fake: fails `failures` times, then hands out FakeConnections."""

    def __init__(self, failures=0):
        self.failures = failures
        self.uris = []
        self.conns = []

    def __call__(self, uri):
        self.uris.append(uri)
        if self.failures:
            self.failures -= 1
            raise daemon_down_error()
        self.conns.append(FakeConnection())
        return self.conns[-1]


class Collector:
    def __init__(self, fail_on=()):
        self.events = []
        self.threads = set()
        self.fail_on = set(fail_on)
        self.done = threading.Condition()

    def __call__(self, event):
        self.threads.add(threading.current_thread().name)
        with self.done:
            self.events.append(event)
            self.done.notify_all()
        if len(self.events) in self.fail_on:
            raise RuntimeError(f"handler broke on event {len(self.events)}")

    def wait_for(self, n, timeout=5.0):
        with self.done:
            assert self.done.wait_for(lambda: len(self.events) >= n, timeout), self.events
        return self.events


def wait_until(predicate, timeout=5.0):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.01)


@pytest.fixture
def make_listener():
    made = []

    def make(on_event=None, opener=None, **kw):
        listener = le.LifecycleListener(
            "qemu:///fake", on_event or Collector(), clock=lambda: T0,
            open_connection=opener or Opener(), **kw)
        made.append(listener)
        return listener

    yield make
    for listener in made:
        listener.stop()


def listener_threads(listener):
    suffix = f"{id(listener):x}"
    return [t for t in threading.enumerate() if t.name.endswith(suffix)]


# ---------------------------------------------------------------------------- listener
def test_start_registers_keepalive_close_and_both_event_ids(make_listener):
    opener = Opener()
    listener = make_listener(opener=opener, keepalive_interval=7, keepalive_count=2)
    listener.start()
    conn = opener.conns[0]
    assert opener.uris == ["qemu:///fake"]
    assert conn.keepalive == (7, 2)
    assert conn.close_cb is not None
    assert sorted(e for e, _, _ in conn.events.values()) == sorted(
        [libvirt.VIR_DOMAIN_EVENT_ID_LIFECYCLE, libvirt.VIR_DOMAIN_EVENT_ID_METADATA_CHANGE])
    assert listener.is_connected


def test_events_translated_and_delivered_in_order_on_one_worker(make_listener):
    collector = Collector()
    opener = Opener()
    make_listener(on_event=collector, opener=opener).start()
    conn = opener.conns[0]
    conn.fire_lifecycle(libvirt.VIR_DOMAIN_EVENT_STARTED, libvirt.VIR_DOMAIN_EVENT_STARTED_BOOTED)
    conn.fire_lifecycle(libvirt.VIR_DOMAIN_EVENT_SHUTDOWN, libvirt.VIR_DOMAIN_EVENT_SHUTDOWN_HOST)
    conn.fire_lifecycle(libvirt.VIR_DOMAIN_EVENT_STOPPED,
                        libvirt.VIR_DOMAIN_EVENT_STOPPED_DESTROYED, FakeDomain(name="other"))
    conn.fire_metadata(libvirt.VIR_DOMAIN_METADATA_ELEMENT)
    events = collector.wait_for(4)
    assert [(e.event, e.detail) for e in events] == [
        ("started", "booted"), ("shutdown", "host"), ("stopped", "destroyed"),
        ("metadata_changed", "element")]
    assert events[0].instance_id == "11111111-2222-3333-4444-555555555555"
    assert [e.domain_name for e in events] == [
        "instance-0000002a", "instance-0000002a", "other", "instance-0000002a"]
    assert all(e.received_at == T0 for e in events)
    assert len(collector.threads) == 1
    assert collector.threads.pop().startswith("libvirt-events-worker-")


@pytest.mark.allow_error_logs
def test_failing_handler_is_logged_counted_and_later_events_still_arrive(make_listener, caplog):
    collector = Collector(fail_on={1, 3})
    opener = Opener()
    listener = make_listener(on_event=collector, opener=opener)
    listener.start()
    for _ in range(5):
        opener.conns[0].fire_lifecycle(libvirt.VIR_DOMAIN_EVENT_DEFINED, 0)
    assert len(collector.wait_for(5)) == 5
    listener.stop()  # drains the queue: every handler call has returned
    assert listener.counters.get("events.handler_errors") == 2
    errors = [r for r in caplog.records
              if r.name == "lifecycle_stats.listeners.libvirt_events" and r.levelno == logging.ERROR]
    assert len(errors) == 2
    assert all(r.exc_info and isinstance(r.exc_info[1], RuntimeError) for r in errors)


def test_stop_deregisters_closes_and_joins_every_thread(make_listener):
    before = set(threading.enumerate())
    opener = Opener()
    listener = make_listener(opener=opener)
    listener.start()
    assert len(listener_threads(listener)) == 2
    listener.stop()
    conn = opener.conns[0]
    assert sorted(conn.deregistered) == sorted(conn.events)
    assert conn.close_unregistered and conn.closed
    assert not listener.is_connected
    assert listener_threads(listener) == []
    assert set(threading.enumerate()) <= before


def test_stop_delivers_events_queued_before_it(make_listener):
    release = threading.Event()
    seen = []

    def slow(event):
        release.wait(5)
        seen.append(event.event)

    opener = Opener()
    listener = make_listener(on_event=slow, opener=opener)
    listener.start()
    for code in (libvirt.VIR_DOMAIN_EVENT_STARTED, libvirt.VIR_DOMAIN_EVENT_STOPPED):
        opener.conns[0].fire_lifecycle(code, 0)
    threading.Timer(0.1, release.set).start()
    listener.stop()
    assert seen == ["started", "stopped"]


def test_start_fails_with_connection_lost_and_leaves_no_threads(make_listener):
    listener = make_listener(opener=Opener(failures=1))
    with pytest.raises(exceptions.ConnectionLost, match="qemu:///fake"):
        listener.start()
    assert listener_threads(listener) == []


def test_close_callback_reconnects_with_backoff_and_resyncs_once(make_listener):
    sleeps = []
    resyncs = []
    opener = Opener()
    collector = Collector()
    listener = make_listener(
        on_event=collector, opener=opener, sleep=sleeps.append, reconnect_max_wait=0.5,
        on_reconnect=lambda: resyncs.append(threading.current_thread().name))
    listener.start()
    old = opener.conns[0]
    opener.failures = 4
    old.fire_close()
    wait_until(lambda: resyncs)
    assert listener.is_connected
    assert sleeps == [0.1, 0.2, 0.4, 0.5]  # exponential, capped at reconnect_max_wait
    assert len(opener.conns) == 2
    assert old.closed and old.close_unregistered and sorted(old.deregistered) == [1, 2]
    assert listener.counters.snapshot() == {"libvirt.disconnects": 1, "libvirt.reconnects": 1}
    assert resyncs[0].startswith("libvirt-events-worker-")
    opener.conns[1].fire_lifecycle(libvirt.VIR_DOMAIN_EVENT_STARTED, 0)
    assert collector.wait_for(1)[0].event == "started"
    old.fire_close()  # a late notice from the replaced connection changes nothing
    time.sleep(0.1)
    assert listener.is_connected and len(resyncs) == 1 and len(opener.conns) == 2


def test_is_connected_false_while_daemon_unreachable(make_listener):
    gate = threading.Event()
    opener = Opener()
    listener = make_listener(opener=opener, sleep=lambda s: gate.wait(5))
    listener.start()
    opener.failures = 1
    opener.conns[0].fire_close(libvirt.VIR_CONNECT_CLOSE_REASON_KEEPALIVE)
    assert not listener.is_connected
    wait_until(lambda: len(opener.uris) == 2)  # first retry failed, now in backoff
    assert not listener.is_connected
    gate.set()
    wait_until(lambda: listener.is_connected)
    assert len(opener.conns) == 2


def test_stop_interrupts_reconnect_backoff(make_listener):
    opener = Opener()
    listener = make_listener(opener=opener, reconnect_max_wait=60)
    listener.start()
    opener.failures = 10**6
    opener.conns[0].fire_close()
    wait_until(lambda: len(opener.uris) >= 3)
    started = time.monotonic()
    listener.stop()
    assert time.monotonic() - started < 2.0
    assert listener_threads(listener) == []
    assert not listener.is_connected


@pytest.mark.allow_error_logs
def test_failing_on_reconnect_is_counted_and_worker_survives(make_listener, caplog):
    def broken():
        raise RuntimeError("resync broke")

    collector = Collector()
    opener = Opener()
    listener = make_listener(on_event=collector, opener=opener, on_reconnect=broken,
                             sleep=lambda s: None)
    listener.start()
    opener.conns[0].fire_close()
    wait_until(lambda: listener.counters.get("libvirt.resync_errors") == 1)
    opener.conns[1].fire_lifecycle(libvirt.VIR_DOMAIN_EVENT_UNDEFINED, 0)
    assert collector.wait_for(1)[0].event == "undefined"
    assert any("resync broke" in str(r.exc_info[1]) for r in caplog.records if r.exc_info)


def _no_support_error():
    exc = libvirt.libvirtError("this function is not supported by the connection driver")
    exc.err = (libvirt.VIR_ERR_NO_SUPPORT, 0, str(exc), 2, None, None, None, 0, 0)
    return exc


def test_keepalive_unsupported_by_local_driver_is_tolerated(make_listener):
    class NoKeepalive(FakeConnection):
        def setKeepAlive(self, interval, count):
            raise _no_support_error()

    listener = make_listener(opener=lambda uri: NoKeepalive())
    listener.start()
    assert listener.is_connected


def test_other_registration_failure_closes_connection_and_raises(make_listener):
    class Refusing(FakeConnection):
        def domainEventRegisterAny(self, *args):
            raise libvirt.libvirtError("refused")

    conns = []
    listener = make_listener(opener=lambda uri: conns.append(Refusing()) or conns[-1])
    with pytest.raises(exceptions.HypervisorError, match="refused"):
        listener.start()
    assert conns[0].closed and conns[0].close_unregistered


@pytest.mark.parametrize("kw", [
    {"keepalive_interval": 0}, {"keepalive_count": 0}, {"reconnect_max_wait": 0},
])
def test_bad_settings_fail_in_constructor(kw):
    with pytest.raises(ValueError, match=next(iter(kw))):
        le.LifecycleListener("qemu:///system", print, **kw)


def test_from_conf_reads_libvirt_group():
    conf = cfg.ConfigOpts()
    conf([], project="lifecycle-stats-test", default_config_files=[])
    conf.register_opts(hypervisor.OPTS, group=hypervisor.GROUP)  # the reading room's group
    conf.set_override("uri", "test:///default", group="libvirt")
    conf.set_override("keepalive_interval", 11, group="libvirt")
    conf.set_override("keepalive_count", 4, group="libvirt")
    conf.set_override("reconnect_max_wait", 2.5, group="libvirt")
    counters = Counters()
    opener = Opener()
    listener = le.LifecycleListener.from_conf(conf, print, None, counters,
                                              open_connection=opener)
    listener.start()
    try:
        assert opener.uris == ["test:///default"]
        assert opener.conns[0].keepalive == (11, 4)
        assert listener.counters is counters
        assert listener._max_wait == 2.5
    finally:
        listener.stop()


def test_the_event_connections_options_are_the_libvirt_groups():
    names = {opt.name: opt.default for opt in hypervisor.OPTS}
    assert {key: names[key] for key in ("keepalive_interval", "keepalive_count",
                                        "reconnect_max_wait")} == {
        "keepalive_interval": 5, "keepalive_count": 3, "reconnect_max_wait": 10.0}


def test_ensure_event_loop_is_idempotent():
    le.ensure_event_loop()
    le.ensure_event_loop()
    loops = [t for t in threading.enumerate() if t.name == "libvirt-event-loop"]
    assert len(loops) == 1 and loops[0].daemon


class BuggyOpener(Opener):
    """Its first reconnect fails with what no libvirt call raises: a bug, not an outage."""

    def __call__(self, uri):
        if len(self.uris) == 1:
            self.uris.append(uri)
            raise AttributeError("virConnect has no attribute 'oops'")
        return super().__call__(uri)


@pytest.mark.allow_error_logs
def test_the_reconnect_thread_survives_an_unexpected_exception(make_listener, caplog):
    opener = BuggyOpener()
    listener = make_listener(opener=opener, sleep=lambda s: None, reconnect_max_wait=0.1)
    listener.start()
    opener.conns[0].fire_close()
    wait_until(lambda: listener.is_connected and len(opener.conns) == 2)
    assert listener.counters.get("libvirt.reconnect_errors") == 1
    assert listener.thread_states() == {"libvirt-events-worker": "alive",
                                        "libvirt-reconnect": "alive"}
    assert "reconnect to qemu:///fake failed unexpectedly" in caplog.text
