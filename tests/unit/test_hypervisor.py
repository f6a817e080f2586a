"""translate() and Hypervisor's reconnect/retry, with fake connections and recorded sleeps."""
from __future__ import annotations

import libvirt
import pytest
from oslo_config import cfg

from lifecycle_stats.reading import hypervisor
from lifecycle_stats.exceptions import ConnectionLost, DomainGone, HypervisorError
from lifecycle_stats.reading.hypervisor import Hypervisor, translate


def lverror(code, domain, message="boom"):
    libvirt.virResetLastError()  # libvirtError() reads the thread's last error; start clean
    exc = libvirt.libvirtError(message)
    exc.err = (code, domain, message, libvirt.VIR_ERR_ERROR, message, None, None, -1, -1)
    return exc


# Tuples measured on libvirt 9.0 (see doc/architecture.md §2) plus libvirt-python's documented codes.
BROKEN_PIPE = (libvirt.VIR_ERR_SYSTEM_ERROR, libvirt.VIR_FROM_RPC,
               "Cannot write data: Broken pipe")
SOCKET_CLOSED = (libvirt.VIR_ERR_INTERNAL_ERROR, libvirt.VIR_FROM_RPC,
                 "internal error: client socket is closed")
NO_DOMAIN = (libvirt.VIR_ERR_NO_DOMAIN, libvirt.VIR_FROM_QEMU,
             "Domain not found: no domain with matching uuid")


@pytest.mark.parametrize("code, domain, message, expected", [
    (*NO_DOMAIN, DomainGone),
    (*BROKEN_PIPE, ConnectionLost),
    (*SOCKET_CLOSED, ConnectionLost),
    (libvirt.VIR_ERR_SYSTEM_ERROR, libvirt.VIR_FROM_REMOTE, "Cannot recv data", ConnectionLost),
    (libvirt.VIR_ERR_INTERNAL_ERROR, libvirt.VIR_FROM_REMOTE, "x", ConnectionLost),
    (libvirt.VIR_ERR_NO_CONNECT, libvirt.VIR_FROM_NONE, "no connection", ConnectionLost),
    (libvirt.VIR_ERR_INVALID_CONN, libvirt.VIR_FROM_NONE, "invalid connection", ConnectionLost),
    (libvirt.VIR_ERR_INTERNAL_ERROR, libvirt.VIR_FROM_QEMU,
     "internal error: client socket is closed", ConnectionLost),
    (libvirt.VIR_ERR_INTERNAL_ERROR, libvirt.VIR_FROM_QEMU, "monitor failed", HypervisorError),
    (libvirt.VIR_ERR_SYSTEM_ERROR, libvirt.VIR_FROM_QEMU, "cannot read /proc", HypervisorError),
    (libvirt.VIR_ERR_OPERATION_INVALID, libvirt.VIR_FROM_QEMU, "domain is not running",
     HypervisorError),
])
def test_translate_classifies(code, domain, message, expected):
    original = lverror(code, domain, message)
    error = translate(original, "uuid-1")
    assert type(error) is expected
    assert error.__cause__ is original


def test_translate_domain_gone_names_the_instance():
    error = translate(lverror(*NO_DOMAIN), "8d1c7c3e-0000-4000-8000-000000000001")
    assert error.instance_id == "8d1c7c3e-0000-4000-8000-000000000001"


def test_translate_keeps_libvirt_message():
    error = translate(lverror(libvirt.VIR_ERR_OPERATION_FAILED, libvirt.VIR_FROM_QEMU,
                              "operation failed: job busy"))
    assert str(error) == "operation failed: job busy"


def test_translate_error_without_err_tuple_uses_exception_text():
    libvirt.virResetLastError()
    original = libvirt.libvirtError("virDomainGetInfo() failed")
    error = translate(original)
    assert type(error) is HypervisorError
    assert "virDomainGetInfo() failed" in str(error)


class FakeConn:
    """Returns results or raises libvirtErrors from a script, one entry per call."""

    def __init__(self, name, script=()):
        self.name = name
        self.script = list(script)
        self.closed = False
        self.alive = 1

    def run(self):
        step = self.script.pop(0) if self.script else "ok"
        if isinstance(step, BaseException):
            raise step
        return (self.name, step)

    def isAlive(self):
        if self.closed:
            raise lverror(libvirt.VIR_ERR_INVALID_CONN, libvirt.VIR_FROM_NONE)
        return self.alive

    def close(self):
        self.closed = True
        return 0


class FakeOpen:
    """open_fn: raises the queued failures first, then hands out the queued connections."""

    def __init__(self, conns, failures=()):
        self.conns = list(conns)
        self.failures = list(failures)
        self.uris = []

    def __call__(self, uri):
        self.uris.append(uri)
        if self.failures:
            raise self.failures.pop(0)
        return self.conns.pop(0)


def make(opener, attempts=4, max_wait=1.0):
    sleeps = []
    hv = Hypervisor("qemu:///system", open_fn=opener, retry_attempts=attempts,
                    retry_max_wait=max_wait, sleep=sleeps.append)
    return hv, sleeps


def test_connection_is_opened_lazily_once():
    opener = FakeOpen([FakeConn("a")])
    hv, _ = make(opener)
    assert opener.uris == []
    assert hv.connection() is hv.connection()
    assert opener.uris == ["qemu:///system"]


def test_call_passes_connection_and_returns_result():
    hv, sleeps = make(FakeOpen([FakeConn("a", ["x"])]))
    assert hv.call(lambda conn: conn.run()) == ("a", "x")
    assert sleeps == []


def test_connection_lost_reconnects_and_retries_with_backoff():
    first = FakeConn("a", [lverror(*BROKEN_PIPE)])
    second = FakeConn("b", [lverror(*SOCKET_CLOSED)])
    third = FakeConn("c", ["x"])
    opener = FakeOpen([first, second, third])
    hv, sleeps = make(opener)
    assert hv.call(lambda conn: conn.run()) == ("c", "x")
    assert first.closed and second.closed and not third.closed
    assert len(opener.uris) == 3
    assert sleeps == [0.1, 0.2]
    assert hv.connection() is third


def test_backoff_is_capped_and_attempts_bounded():
    conns = [FakeConn(str(i), [lverror(*BROKEN_PIPE)]) for i in range(6)]
    hv, sleeps = make(FakeOpen(conns), attempts=6, max_wait=0.3)
    with pytest.raises(ConnectionLost) as info:
        hv.call(lambda conn: conn.run())
    assert sleeps == [0.1, 0.2, 0.3, 0.3, 0.3]
    assert isinstance(info.value.__cause__, libvirt.libvirtError)
    assert all(conn.closed for conn in conns)


def test_open_failures_are_retried():
    refused = lverror(libvirt.VIR_ERR_SYSTEM_ERROR, libvirt.VIR_FROM_RPC,
                      "Failed to connect socket to '/run/libvirt/libvirt-sock'")
    opener = FakeOpen([FakeConn("a", ["x"])], failures=[refused, refused])
    hv, sleeps = make(opener)
    assert hv.call(lambda conn: conn.run()) == ("a", "x")
    assert len(opener.uris) == 3 and len(sleeps) == 2


def test_open_with_unusable_uri_is_not_retried():
    no_driver = lverror(libvirt.VIR_ERR_NO_CONNECT, libvirt.VIR_FROM_NONE,
                        "no connection driver available for bogus:///x")
    opener = FakeOpen([], failures=[no_driver])
    hv, sleeps = make(opener)
    with pytest.raises(HypervisorError) as info:
        hv.connection()
    assert not isinstance(info.value, ConnectionLost)
    assert "bogus:///x" in str(info.value)
    assert sleeps == [] and len(opener.uris) == 1


@pytest.mark.parametrize("step, expected", [
    (lverror(*NO_DOMAIN), DomainGone),
    (lverror(libvirt.VIR_ERR_OPERATION_INVALID, libvirt.VIR_FROM_QEMU, "not running"),
     HypervisorError),
])
def test_other_errors_are_not_retried_and_keep_the_connection(step, expected):
    conn = FakeConn("a", [step])
    hv, sleeps = make(FakeOpen([conn]))
    with pytest.raises(expected) as info:
        hv.call(lambda c: c.run(), "uuid-1")
    assert type(info.value) is expected
    assert info.value.__cause__ is step
    assert sleeps == [] and not conn.closed and hv.connection() is conn


def test_domain_gone_carries_the_instance_id_given_to_call():
    hv, _ = make(FakeOpen([FakeConn("a", [lverror(*NO_DOMAIN)])]))
    with pytest.raises(DomainGone) as info:
        hv.call(lambda c: c.run(), "8d1c7c3e-0000-4000-8000-000000000002")
    assert info.value.instance_id == "8d1c7c3e-0000-4000-8000-000000000002"


def test_connection_lost_raised_by_fn_itself_also_reconnects():
    def fn(conn):
        if conn.name == "a":
            raise ConnectionLost("seen by a helper that translated already")
        return conn.name
    first = FakeConn("a")
    hv, sleeps = make(FakeOpen([first, FakeConn("b")]))
    assert hv.call(fn) == "b"
    assert first.closed and sleeps == [0.1]


def test_is_alive_and_close():
    conn = FakeConn("a")
    hv, _ = make(FakeOpen([conn, FakeConn("b")]))
    assert not hv.is_alive()  # nothing opened yet, and is_alive does not open
    hv.connection()
    assert hv.is_alive()
    conn.alive = 0
    assert not hv.is_alive()
    hv.close()
    assert conn.closed and not hv.is_alive()
    assert hv.connection().name == "b"


def test_close_tolerates_a_broken_connection():
    class Broken(FakeConn):
        def close(self):
            raise lverror(*SOCKET_CLOSED)
    hv, _ = make(FakeOpen([Broken("a"), FakeConn("b")]))
    hv.connection()
    hv.close()
    assert hv.connection().name == "b"


@pytest.mark.parametrize("kwargs, needle", [
    ({"retry_attempts": 0}, "retry_attempts"),
    ({"retry_max_wait": -1}, "retry_max_wait"),
])
def test_bad_settings_fail_in_constructor(kwargs, needle):
    with pytest.raises(ValueError, match=needle):
        Hypervisor("qemu:///system", **kwargs)


def test_opts_defaults_and_from_conf():
    conf = cfg.ConfigOpts()
    conf([], project="lifecycle-stats-test")
    hv = Hypervisor.from_conf(conf, open_fn=FakeOpen([FakeConn("a")]))
    assert conf.libvirt.uri == "qemu:///system"
    assert hv.uri == "qemu:///system"
    conf.set_override("uri", "test:///default", group="libvirt")
    conf.set_override("connection_retry_attempts", 2, group="libvirt")
    conns = [FakeConn(str(i), [lverror(*BROKEN_PIPE)]) for i in range(2)]
    sleeps = []
    hv = Hypervisor.from_conf(conf, open_fn=FakeOpen(conns), sleep=sleeps.append)
    assert hv.uri == "test:///default"
    with pytest.raises(ConnectionLost):
        hv.call(lambda c: c.run())
    assert len(sleeps) == 1


def test_opts_are_not_registered_globally_at_import():
    assert "libvirt" not in cfg.CONF
    assert {opt.name for opt in hypervisor.OPTS} == {
        "uri", "connection_retry_attempts", "connection_retry_max_wait",
        "keepalive_interval", "keepalive_count", "reconnect_max_wait", "read_connections"}
