"""The integration environment itself: real QEMU guests from the factory, and RabbitMQ."""
from __future__ import annotations

import os
import subprocess
import time
import uuid

import pytest

from tests.support import guests as novalike

pytestmark = pytest.mark.integration

QCOW2_MAGIC = b"QFI\xfb"


def _stats(conn, dom, groups):
    [(_, stats)] = conn.domainListGetStats([dom], groups)
    return stats


def _wait_for(predicate, timeout=15.0, step=0.1):
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(step)
    return True


def test_factory_guest_is_paused_persistent_with_qcow2_disk_and_tap(guest_factory):
    import libvirt

    guest, dom = guest_factory.create()
    assert dom.state()[0] == libvirt.VIR_DOMAIN_PAUSED
    assert dom.isPersistent()
    assert dom.name() == guest.domain_name
    assert dom.UUIDString() == guest.instance_id
    [path] = guest.disk_paths
    with open(path, "rb") as image:
        assert image.read(4) == QCOW2_MAGIC
    block = _stats(guest_factory.conn, dom, libvirt.VIR_DOMAIN_STATS_BLOCK)
    assert block["block.0.path"] == path
    [tap] = guest.vnics
    assert len(tap) <= 15
    assert os.path.isdir(f"/sys/class/net/{tap}")
    meta = dom.metadata(libvirt.VIR_DOMAIN_METADATA_ELEMENT, novalike.NOVA_NS_1_1)
    assert guest.display_name in meta


def test_cpu_time_grows_after_resume(guest_factory):
    import libvirt

    _, dom = guest_factory.create()
    cpu = libvirt.VIR_DOMAIN_STATS_CPU_TOTAL
    before = _stats(guest_factory.conn, dom, cpu)["cpu.time"]
    dom.resume()
    assert dom.state()[0] == libvirt.VIR_DOMAIN_RUNNING
    assert _wait_for(lambda: _stats(guest_factory.conn, dom, cpu)["cpu.time"] > before)


def test_guests_get_unique_names_and_taps(guest_factory):
    made = guest_factory.create_many(3, persistent=False)
    assert len({g.domain_name for g, _ in made}) == 3
    assert len({g.vnics[0] for g, _ in made}) == 3
    assert all(not dom.isPersistent() for _, dom in made)


def test_cleanup_removes_domains_images_and_taps_even_if_already_gone(guest_factory):
    import libvirt

    made = [guest_factory.create(), guest_factory.create(persistent=False, paused=False)]
    made[0][1].destroy()  # gone behind the factory's back: still defined, no longer running
    made[1][1].destroy()  # transient: gone entirely
    guest_factory.cleanup()
    for guest, _ in made:
        with pytest.raises(libvirt.libvirtError) as err:
            guest_factory.conn.lookupByUUIDString(guest.instance_id)
        assert err.value.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN
        assert not any(os.path.exists(p) for p in guest.disk_paths)
        assert not os.path.exists(f"/sys/class/net/{guest.vnics[0]}")
    guest_factory.cleanup()  # idempotent


def test_destroy_without_undefine_keeps_definition_and_image(guest_factory):
    import libvirt

    guest, dom = guest_factory.create()
    guest_factory.destroy(guest, undefine=False)
    assert dom.state()[0] == libvirt.VIR_DOMAIN_SHUTOFF
    assert os.path.exists(guest.disk_paths[0])


def test_sweep_leftovers_removes_only_domains_of_dead_runs(guest_factory):
    gone = subprocess.Popen(["true"])
    gone.wait()  # its pid now names a dead "earlier run"
    conn = guest_factory.conn
    dead = novalike.NovaGuest(domain_name=f"lstsw-{gone.pid}-1", disk_paths=("/nonexistent",))
    live = novalike.NovaGuest(domain_name=f"lstsw-{os.getpid()}-1", disk_paths=("/nonexistent",))
    live_dom = conn.defineXML(novalike.domain_xml(live, "qemu"))
    try:
        conn.defineXML(novalike.domain_xml(dead, "qemu"))
        assert novalike.sweep_leftovers(conn, "lstsw") == [dead.domain_name]
        names = {d.name() for d in conn.listAllDomains(0)}
        assert dead.domain_name not in names and live.domain_name in names
    finally:
        live_dom.undefine()


def test_rabbitmq_publish_consume_round_trip(rabbit_url):
    import kombu

    body = {"probe": str(uuid.uuid4())}
    name = f"lst-env-{uuid.uuid4().hex}"
    kombu_url = "amqp://" + rabbit_url.split("://", 1)[1]  # oslo.messaging rabbit:// -> kombu
    with kombu.Connection(kombu_url, connect_timeout=5) as conn:
        queue = kombu.Queue(name, routing_key=name, auto_delete=True, durable=False)
        bound = queue(conn.default_channel)
        bound.declare()
        try:
            conn.Producer().publish(body, routing_key=name, serializer="json")
            messages = []
            assert _wait_for(lambda: messages.append(bound.get(no_ack=True)) or messages[-1])
            assert messages[-1].payload == body
        finally:
            bound.delete()
