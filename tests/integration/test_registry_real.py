"""DomainRegistry against the real libvirtd (qemu:///system) with paused QEMU guests.

Other tests may have guests on the same daemon at the same time, so assertions are about the
guests made here only.
"""
from __future__ import annotations

import pytest

from tests.support import guests as novalike
from lifecycle_stats.counters import Counters
from lifecycle_stats.records import Flavor
from lifecycle_stats.reading.hypervisor import Hypervisor
from lifecycle_stats.reading.registry import DomainRegistry

pytestmark = pytest.mark.integration


def test_sync_reports_the_nova_guest_only_and_forgets_it_when_gone(guest_factory):
    nova, _ = guest_factory.create(
        flavor_name="m1.tiny", memory_mb=48, root_gb=1, ephemeral_gb=2, swap_mb=16,
        user_id="a1" * 16, user_name="alice", project_id="b2" * 16, project_name="acme",
    )
    legacy, _ = guest_factory.create(namespace=novalike.NOVA_NS_1_0, flavor_name="m1.old")
    plain, _ = guest_factory.create(metadata=None)
    registry = DomainRegistry(Hypervisor("qemu:///system", open_fn=lambda _uri: guest_factory.conn),
                              Counters())

    registry.sync()

    mine = {nova.instance_id, legacy.instance_id, plain.instance_id}
    assert set(registry.instances()) & mine == {nova.instance_id, legacy.instance_id}
    info = registry.get(nova.instance_id)
    assert info.flavor == Flavor("m1.tiny", 48, 1, 16, 2, 1)
    assert (info.user_id, info.user_name) == ("a1" * 16, "alice")
    assert (info.project_id, info.project_name) == ("b2" * 16, "acme")
    assert (info.domain_name, info.display_name) == (nova.domain_name, nova.display_name)
    assert (info.root_type, info.image_ref) == ("image", nova.image_ref)
    assert info.metadata_version == "1.1"
    assert registry.get(legacy.instance_id).metadata_version == "1.0"
    assert registry.get(plain.instance_id) is None and registry.is_known(plain.instance_id)

    guest_factory.destroy(nova)  # destroy + undefine, as nova's delete does
    registry.sync()
    assert not registry.is_known(nova.instance_id)
    assert registry.get(legacy.instance_id) is not None
