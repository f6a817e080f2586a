"""DomainRegistry against libvirt's in-process test:///default driver.

The driver's state is shared by every connection in this process, so every domain here gets a
unique name and uuid and is undefined in teardown.
"""
from __future__ import annotations

import datetime
import logging
import uuid as uuidlib

import libvirt
import pytest

from lifecycle_stats.capture.pipeline import Pipeline, Readers, Settings
from lifecycle_stats.interfaces import Outcome
from lifecycle_stats.usage import periods
from lifecycle_stats.usage.ledger import UsageLedger
from lifecycle_stats.publishing import payloads, spool
from lifecycle_stats.reading.hypervisor import Hypervisor
from lifecycle_stats.reading.inspector import Inspector
from lifecycle_stats.records import StopAnnouncement
from tests.support import guests as novalike
from lifecycle_stats.counters import Counters
from lifecycle_stats.exceptions import ConnectionLost, HypervisorError
from lifecycle_stats.records import Flavor
from lifecycle_stats.reading.registry import DomainRegistry

pytestmark = pytest.mark.libvirt_test_driver


@pytest.fixture
def conn():
    connection = libvirt.open("test:///default")
    yield connection
    connection.close()


@pytest.fixture
def define(conn):
    """define(metadata="nova", **guest_fields) -> (virDomain, NovaGuest); undefined afterwards."""
    made = []

    def _define(metadata="nova", **fields):
        fields.setdefault("domain_name", f"ls-reg-{uuidlib.uuid4().hex[:10]}")
        guest = novalike.NovaGuest(**fields)
        if callable(metadata):
            metadata = metadata(guest)
        dom = conn.defineXML(novalike.domain_xml(guest, "test", metadata=metadata))
        made.append(guest.instance_id)
        return dom, guest

    yield _define
    for instance_id in made:
        try:
            conn.lookupByUUIDString(instance_id).undefine()
        except libvirt.libvirtError as exc:
            if exc.get_error_code() != libvirt.VIR_ERR_NO_DOMAIN:
                raise


@pytest.fixture
def counters():
    return Counters()


def registry_on(conn, counters):
    """A registry whose metadata connection is conn (a real or a wrapped libvirt connection)."""
    return DomainRegistry(Hypervisor("test:///default", open_fn=lambda _uri: conn,
                                     retry_attempts=1), counters)


@pytest.fixture
def registry(conn, counters):
    return registry_on(conn, counters)


def _malformed(guest):
    return novalike.nova_metadata_xml(guest).replace(
        f"<nova:memory>{guest.memory_mb}</nova:memory>", "<nova:memory>lots</nova:memory>"
    )


def _oversize(guest):
    guest.display_name = "x" * 70_000
    return novalike.nova_metadata_xml(guest)


def _set_nova_metadata(dom, guest):
    """Replace nova's block via virDomainSetMetadata (prefix 'nova').

    setMetadata wants the element without a namespace declaration (libvirt adds one from
    key/uri; with nova's own xmlns:nova it fails: "failed to create a new XML namespace").
    """
    xml = novalike.nova_metadata_xml(guest)
    xml = xml.replace(f' xmlns:nova="{guest.namespace}"', "").replace("nova:", "")
    dom.setMetadata(
        libvirt.VIR_DOMAIN_METADATA_ELEMENT,
        xml,
        "nova",
        guest.namespace,
        libvirt.VIR_DOMAIN_AFFECT_CONFIG,
    )


def test_sync_reports_only_nova_domains(conn, define, registry, counters):
    _, new = define(flavor_name="m1.new", memory_mb=64, vcpus=2, user_name="alice")
    _, old = define(flavor_name="m1.old", namespace=novalike.NOVA_NS_1_0)
    _, plain = define(metadata=None)
    _, broken = define(metadata=_malformed)

    registry.sync()

    mine = {new.instance_id, old.instance_id, plain.instance_id, broken.instance_id}
    assert set(registry.instances()) & mine == {new.instance_id, old.instance_id}
    info = registry.get(new.instance_id)
    assert info.flavor == Flavor("m1.new", 64, 1, 0, 0, 2)
    assert (info.user_id, info.user_name) == (new.user_id, "alice")
    assert (info.project_id, info.domain_name) == (new.project_id, new.domain_name)
    assert info.metadata_version == "1.1"
    assert registry.get(old.instance_id).metadata_version == "1.0"
    assert registry.get(old.instance_id).flavor.name == "m1.old"
    for unreported in (plain, broken):
        assert registry.get(unreported.instance_id) is None
        assert registry.is_known(unreported.instance_id)
    predefined = conn.lookupByName("test").UUIDString()  # the driver's own, not nova's
    assert registry.is_known(predefined) and registry.get(predefined) is None
    assert predefined not in registry.instances()
    assert counters.get("metadata.malformed") == 1


def test_newest_namespace_wins_when_both_are_present(define, registry):
    def both(guest):
        old = novalike.NovaGuest(**{**vars(guest), "namespace": novalike.NOVA_NS_1_0})
        old.flavor_name = "m1.stale"
        return novalike.nova_metadata_xml(old) + novalike.nova_metadata_xml(guest)

    dom, guest = define(metadata=both, flavor_name="m1.current")
    info = registry.observe(dom)
    assert (info.metadata_version, info.flavor.name) == ("1.1", "m1.current")


def test_malformed_is_counted_once_per_refresh_and_logged(define, registry, counters, caplog):
    dom, guest = define(metadata=_malformed)
    caplog.set_level(logging.WARNING, logger="lifecycle_stats.reading.registry")

    assert registry.observe(dom) is None
    assert registry.observe(dom) is None  # cached as unusable: not re-read, not re-counted
    assert counters.get("metadata.malformed") == 1
    assert registry.refresh(dom) is None
    assert counters.get("metadata.malformed") == 2

    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 2
    assert guest.instance_id in warnings[0].getMessage()
    assert "flavor/memory is 'lots'" in warnings[0].getMessage()


def test_oversize_metadata_is_rejected(define, registry, counters, caplog):
    dom, guest = define(metadata=_oversize)
    caplog.set_level(logging.WARNING, logger="lifecycle_stats.reading.registry")
    assert registry.observe(dom) is None
    assert registry.is_known(guest.instance_id)
    assert counters.snapshot().get("metadata.rejected") == 1
    assert "metadata.malformed" not in counters.snapshot()
    assert guest.instance_id in caplog.records[-1].getMessage()


def test_non_nova_domain_is_negatively_cached(define, registry):
    dom, guest = define(metadata=None)
    assert registry.observe(dom) is None
    _set_nova_metadata(dom, guest)  # nova adopts it later
    assert registry.observe(dom) is None  # the cached "not nova's" answer; no re-read
    assert registry.refresh(dom).flavor.name == guest.flavor_name
    assert registry.get(guest.instance_id) is not None


def test_refresh_sees_metadata_changed_by_setmetadata(define, registry):
    dom, guest = define(flavor_name="m1.small", memory_mb=64)
    assert registry.observe(dom).flavor.name == "m1.small"

    guest.flavor_name, guest.memory_mb, guest.vcpus = "m1.large", 128, 4  # a resize
    _set_nova_metadata(dom, guest)

    assert registry.observe(dom).flavor.name == "m1.small"  # cached until refreshed
    assert registry.refresh(dom).flavor == Flavor("m1.large", 128, 1, 0, 0, 4)
    assert registry.get(guest.instance_id).flavor.name == "m1.large"


def test_undefined_domain_is_forgotten_by_sync(conn, define, registry):
    dom, guest = define()
    registry.sync()
    assert registry.get(guest.instance_id) is not None
    dom.undefine()
    registry.sync()
    assert registry.get(guest.instance_id) is None
    assert not registry.is_known(guest.instance_id)
    assert guest.instance_id not in registry.instances()


def test_refresh_of_a_vanished_domain_forgets_it(define, registry):
    dom, guest = define()
    assert registry.observe(dom) is not None
    dom.undefine()  # the virDomain object outlives the domain
    assert registry.refresh(dom) is None
    assert not registry.is_known(guest.instance_id)


def test_forget_then_observe_reads_again(define, registry):
    dom, guest = define(flavor_name="m1.a")
    registry.observe(dom)
    guest.flavor_name = "m1.b"
    _set_nova_metadata(dom, guest)
    registry.forget(guest.instance_id)
    assert registry.get(guest.instance_id) is None
    assert not registry.is_known(guest.instance_id)
    assert registry.observe(dom).flavor.name == "m1.b"
    registry.forget("no-such-uuid")  # forgetting the unknown is harmless


class _ForgetDuringRead:
    """A real domain whose metadata read is overtaken by forget() (an undefine event)."""

    def __init__(self, dom, registry):
        self._dom, self._registry = dom, registry

    def __getattr__(self, name):
        return getattr(self._dom, name)

    def metadata(self, *args):
        self._registry.forget(self._dom.UUIDString())
        return self._dom.metadata(*args)


def test_a_read_overtaken_by_forget_is_not_cached(define, registry):
    dom, guest = define()
    info = registry.refresh(_ForgetDuringRead(dom, registry))
    assert info is not None and info.instance_id == guest.instance_id  # what was read
    assert not registry.is_known(guest.instance_id)  # but not resurrected in the cache
    assert registry.get(guest.instance_id) is None


def test_sync_on_a_closed_connection_raises_connection_lost(counters):
    closed = libvirt.open("test:///default")
    closed.close()
    with pytest.raises(ConnectionLost, match="invalid connection"):
        registry_on(closed, counters).sync()


class _Unreadable:
    """A real domain whose metadata read libvirt refuses (a genuine VIR_ERR_INVALID_ARG)."""

    def __init__(self, dom):
        self._dom = dom

    def __getattr__(self, name):
        return getattr(self._dom, name)

    def metadata(self, _type, uri):
        return self._dom.metadata(99, uri)


class _Listing:
    def __init__(self, domains):
        self._domains = domains

    def listAllDomains(self, flags):
        return self._domains


def test_one_unreadable_domain_does_not_stop_sync(define, counters, caplog):
    bad_dom, bad = define()
    good_dom, good = define()
    caplog.set_level(logging.WARNING, logger="lifecycle_stats.reading.registry")

    registry = registry_on(_Listing([_Unreadable(bad_dom), good_dom]), counters)
    registry.sync()

    assert registry.get(good.instance_id) is not None
    assert not registry.is_known(bad.instance_id)  # not cached: the next sync retries it
    assert counters.get("metadata.read_errors") == 1
    assert bad.instance_id in caplog.records[-1].getMessage()
    with pytest.raises(HypervisorError, match="unknown metadata type") as got:
        registry.refresh(_Unreadable(bad_dom))  # refresh itself reports, translated
    assert not isinstance(got.value, ConnectionLost)
    assert got.value.__cause__.get_error_code() == libvirt.VIR_ERR_INVALID_ARG


def test_identify_reads_a_domain_it_has_never_seen_and_then_uses_the_cache(define, registry):
    from lifecycle_stats.exceptions import DomainGone

    dom, guest = define(flavor_name="m1.identify")
    foreign, other = define(metadata=None)
    assert registry.identify(guest.instance_id).flavor.name == "m1.identify"
    assert registry.identify(other.instance_id) is None  # read once: not nova's
    dom.undefine()  # from now on only the cache can answer
    assert registry.identify(guest.instance_id).flavor.name == "m1.identify"
    registry.forget(guest.instance_id)
    with pytest.raises(DomainGone):
        registry.identify(guest.instance_id)


def test_unusable_says_why_only_for_broken_nova_metadata(define, registry):
    broken, _ = define(metadata=_malformed)
    hostile, _ = define(metadata=_oversize)
    plain, _ = define(metadata=None)
    good, _ = define()
    for dom in (broken, hostile, plain, good):
        registry.observe(dom)
    assert registry.unusable(broken.UUIDString()) == "metadata.malformed"
    assert registry.unusable(hostile.UUIDString()) == "metadata.rejected"
    assert registry.unusable(plain.UUIDString()) is None
    assert registry.unusable(good.UUIDString()) is None


def test_a_delete_of_a_domain_with_broken_metadata_is_reported_not_silenced(
        conn, define, registry, tmp_path):
    """nova's delete.start wins over a broken <nova:instance>: `unavailable` with the
    trigger's identity (was: treated as not nova's and never reported)."""
    dom, guest = define(metadata=_malformed)
    dom.create()
    registry.sync()
    store = spool.Spool(str(tmp_path / "spool.sqlite"), conduits=["test"])
    try:
        inspector = Inspector(Hypervisor("test:///default", open_fn=lambda _uri: conn,
                                         retry_attempts=1), counters=Counters())
        ledger = UsageLedger(str(tmp_path / "usage.sqlite"), periods.parse("hour"))
        core = Pipeline(readers=Readers.one(inspector), registry=registry, spool=store,
                        ledger=ledger, settings=Settings.for_host("cmp1"))
        trigger = StopAnnouncement(instance_id=guest.instance_id,
                                event_type="compute.instance.delete.start", host="cmp1",
                                received_at=datetime.datetime.now(datetime.timezone.utc),
                                identity={"tenant_id": guest.project_id,
                                          "display_name": guest.display_name})
        assert core.announced(trigger) is Outcome.UNAVAILABLE
        core.publication.build_waiting()  # the publication thread's work, synchronously
        [(_, note)] = store.pending("test", 10)
        payloads.validate(note)
        assert note.payload["instance_id"] == guest.instance_id
        assert note.payload["tenant_id"] == guest.project_id
        assert note.payload["display_name"] == guest.display_name
    finally:
        store.close()
        ledger.close()
        dom.destroy()
