"""ConnectionPool (reading/connection_pool.py): concurrent calls each get a connection of
their own, up to the pool's size; a lost connection is reopened by its Hypervisor."""
import threading

import pytest
from oslo_config import cfg

from lifecycle_stats.reading.connection_pool import ConnectionPool
from lifecycle_stats.reading.hypervisor import Hypervisor
from tests.unit.test_hypervisor import BROKEN_PIPE, FakeConn, FakeOpen, lverror


def pool_of(*names, failures=()):
    opener = FakeOpen([FakeConn(name, list(failures)) for name in names])
    return ConnectionPool([Hypervisor("qemu:///system", open_fn=opener, sleep=lambda _s: None)
                           for _ in names]), opener


def test_a_quiet_pool_opens_one_connection():
    pool, opener = pool_of("a", "b", "c")
    assert [pool.call(lambda conn: conn.name) for _ in range(5)] == ["a"] * 5
    assert opener.uris == ["qemu:///system"]


def test_calls_at_once_use_separate_connections_and_wait_when_all_are_busy():
    pool, _ = pool_of("a", "b")
    inside, release = threading.Barrier(3), threading.Event()
    used, third = [], []

    def hold(conn):
        used.append(conn.name)
        inside.wait(10)  # both callers hold a connection at the same time
        release.wait(10)
        return conn.name

    callers = [threading.Thread(target=pool.call, args=(hold,)) for _ in range(2)]
    for caller in callers:
        caller.start()
    inside.wait(10)
    late = threading.Thread(target=lambda: third.append(pool.call(lambda conn: conn.name)))
    late.start()
    assert third == []  # no connection free until one is given back
    release.set()
    for thread in (*callers, late):
        thread.join(10)
    assert sorted(used) == ["a", "b"] and third[0] in ("a", "b")


def test_a_lost_connection_is_reopened_by_its_hypervisor():
    opener = FakeOpen([FakeConn("a", [lverror(*BROKEN_PIPE)]), FakeConn("a2")])
    pool = ConnectionPool([Hypervisor("qemu:///system", open_fn=opener,
                                      sleep=lambda _s: None)])
    assert pool.call(lambda conn: conn.run()) == ("a2", "ok")


def test_is_alive_and_close():
    pool, _ = pool_of("a", "b")
    assert not pool.is_alive()  # nothing opened yet
    pool.call(lambda conn: conn.name)
    assert pool.is_alive()
    pool.close()
    assert not pool.is_alive()


def test_from_conf_builds_read_connections_hypervisors():
    conf = cfg.ConfigOpts()
    conf([], project="lifecycle-stats-test")
    conf.register_opts([], group="libvirt")
    pool = ConnectionPool.from_conf(conf)
    assert len(pool) == conf.libvirt.read_connections == 4
    assert pool.uri == "qemu:///system"


def test_bad_pools_fail_in_constructor():
    with pytest.raises(ValueError, match="at least one"):
        ConnectionPool([])
    with pytest.raises(ValueError, match="one URI"):
        ConnectionPool([Hypervisor("qemu:///system"), Hypervisor("test:///default")])
