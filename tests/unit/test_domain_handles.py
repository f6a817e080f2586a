"""A delete's read on a kept handle: one libvirt call, the process id libvirt gives now."""
from __future__ import annotations

import pytest

from lifecycle_stats.exceptions import DomainGone, HypervisorError
from lifecycle_stats.capture.pipeline import Readers
from lifecycle_stats.reading import inspector
from tests.support.stats_records import COMPLETE, Domain, StatsConnection


class CountingConnection(StatsConnection):
    """Counts lookups; stats come back on `self.dom` (libvirt's domain as it is now), whatever
    handle the read passed; `gone` empties the stats list, as for a domain destroyed since."""

    def __init__(self, dom, record):
        super().__init__(dom, record)
        self.lookups, self.handles_passed, self.gone = 0, [], False

    def lookupByUUIDString(self, uuid):
        self.lookups += 1
        return Domain(uuid, self.dom.process_id)

    def listAllDomains(self, flags=0):
        return [Domain(self.dom.uuid, self.dom.process_id)]

    def domainListGetStats(self, doms, groups):
        self.handles_passed.extend(doms)
        return [] if self.gone else super().domainListGetStats(doms, groups)


def test_after_learning_the_domains_a_read_makes_no_lookup():
    conn = CountingConnection(Domain("u", 7), COMPLETE)
    reader = inspector.Inspector(conn)
    assert reader.learn_domains() == 1
    assert reader.read("u").process_id == 7
    assert conn.lookups == 0


def test_an_unknown_domain_is_looked_up_once_then_kept():
    conn = CountingConnection(Domain("u", 7), COMPLETE)
    reader = inspector.Inspector(conn)
    reader.read("u")
    reader.read("u")
    assert conn.lookups == 1
    assert conn.handles_passed[0] is conn.handles_passed[1]


def test_the_process_id_is_libvirts_now_not_the_kept_handles():
    conn = CountingConnection(Domain("u", 7), COMPLETE)
    reader = inspector.Inspector(conn)
    reader.learn_domains()
    conn.dom = Domain("u", 8)  # restarted since: a new QEMU process
    assert reader.read("u").process_id == 8


def test_a_domain_gone_since_is_gone_and_its_handle_dropped():
    conn = CountingConnection(Domain("u", 7), COMPLETE)
    reader = inspector.Inspector(conn)
    reader.learn_domains()
    conn.gone = True
    with pytest.raises(DomainGone):
        reader.read("u")
    conn.gone = False  # defined again under the same uuid: looked up afresh
    reader.read("u")
    assert conn.lookups == 1


def test_a_new_connection_drops_the_old_ones_handles():
    first = CountingConnection(Domain("u", 7), COMPLETE)
    reader = inspector.Inspector(first)
    reader.learn_domains()
    second = CountingConnection(Domain("u", 7), COMPLETE)
    reader._hv = second  # what a reconnect does: the same reader, another connection
    reader.read("u")
    assert second.lookups == 1 and second.handles_passed[0] not in first.handles_passed


def test_a_read_on_the_lost_connection_racing_the_reconnect_keeps_the_new_handles():
    first = CountingConnection(Domain("u", 7), COMPLETE)
    reader = inspector.Inspector(first)
    reader.learn_domains()
    second = CountingConnection(Domain("u", 7), COMPLETE)
    reader._hv = second  # reconnected, and the new connection's handles learned
    reader.learn_domains()
    first.alive = False
    assert reader._handles.get(first, "u") is not None  # a read begun before the reconnect
    reader.read("u")
    assert second.lookups == 0  # its handles were kept, not reset to the lost connection's
    second.alive = False
    third = CountingConnection(Domain("u", 7), COMPLETE)
    reader._hv = third  # lost again: the next read's connection takes over the handles
    reader.read("u")
    reader.read("u")
    assert third.lookups == 1


class FailingLister:
    def learn_domains(self):
        raise HypervisorError("libvirtd went away")


def test_readers_learn_on_the_announced_reader_and_a_failure_costs_nothing_else(caplog):
    learned = []

    class Learner:
        def learn_domains(self):
            learned.append(True)

    Readers(announced=Learner(), poll=object(), events=object()).learn_domains()
    assert learned == [True]
    Readers(announced=FailingLister(), poll=object(), events=object()).learn_domains()
    assert "could not list domains" in caplog.text
    Readers.one(object()).learn_domains()  # a reader without handles: nothing to learn
