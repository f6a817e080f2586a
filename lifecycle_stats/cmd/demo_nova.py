"""The demo's nova: instances shaped as nova's libvirt driver defines them, on libvirt's
in-process test:///default driver, and nova's announcements on the demo's in-memory bus.

Installed for lifecycle-stats-demo alone. It never touches a real daemon: DemoDomains opens
its own test:///default connection, which lives and dies with the demo's process. The shapes
follow nova/virt/libvirt/config.py (LibvirtConfigGuestMetaNovaInstance) and nova's
notification samples; only what a consumer of these events uses is filled in. The tests'
guest factory (QEMU guests too) builds on the same shapes (tests/support/).
"""
from __future__ import annotations

import dataclasses
import uuid
from xml.sax.saxutils import escape, quoteattr

from lifecycle_stats.listeners.nova_notifications import (
    LEGACY_PROCESS_ENDING, VERSIONED_PROCESS_ENDING,
)
from lifecycle_stats.reading.nova_metadata import NOVA_NS_1_0, NOVA_NS_1_1  # noqa: F401
from lifecycle_stats.records import utcnow

TEST_DRIVER = "test:///default"


@dataclasses.dataclass
class NovaGuest:
    instance_id: str = dataclasses.field(default_factory=lambda: str(uuid.uuid4()))
    domain_name: str = "instance-00000001"
    display_name: str = "guest"
    flavor_name: str = "m1.nano"
    memory_mb: int = 32
    root_gb: int = 1
    swap_mb: int = 0
    ephemeral_gb: int = 0
    vcpus: int = 1
    user_id: str = "0d3c5e4f9a8b4c1d8e7f6a5b4c3d2e1f"
    user_name: str = "demo"
    project_id: str = "6f70656e737461636b20697320636f6f"
    project_name: str = "demo"
    image_ref: str = "155d900f-4e14-4e4c-a73d-069cbf4541e6"
    namespace: str = NOVA_NS_1_1
    disks: tuple[str, ...] = ("vda",)  # target devs; for QEMU each needs an image path
    disk_paths: tuple[str, ...] = ()
    vnics: tuple[str, ...] = ("tap0",)  # host-side tap names


def nova_metadata_xml(guest: NovaGuest) -> str:
    return (
        f'<nova:instance xmlns:nova="{guest.namespace}">'
        '<nova:package version="27.1.0"/>'
        f"<nova:name>{escape(guest.display_name)}</nova:name>"
        "<nova:creationTime>2026-11-21 09:00:00</nova:creationTime>"
        f"<nova:flavor name={quoteattr(guest.flavor_name)}>"
        f"<nova:memory>{guest.memory_mb}</nova:memory>"
        f"<nova:disk>{guest.root_gb}</nova:disk>"
        f"<nova:swap>{guest.swap_mb}</nova:swap>"
        f"<nova:ephemeral>{guest.ephemeral_gb}</nova:ephemeral>"
        f"<nova:vcpus>{guest.vcpus}</nova:vcpus>"
        "</nova:flavor>"
        "<nova:owner>"
        f"<nova:user uuid={quoteattr(guest.user_id)}>{escape(guest.user_name)}</nova:user>"
        f"<nova:project uuid={quoteattr(guest.project_id)}>{escape(guest.project_name)}"
        "</nova:project>"
        "</nova:owner>"
        f'<nova:root type="image" uuid={quoteattr(guest.image_ref)}/>'
        "</nova:instance>"
    )


def domain_xml(guest: NovaGuest, hypervisor: str = "test", metadata: str | None = "nova",
               devices: str = "", os_xml: str = "<os><type>hvm</type></os>") -> str:
    """A whole <domain>; without devices, the test driver's disks and interfaces.

    metadata: "nova" for nova's block, None for a domain nova does not own, or any raw XML
    string to put inside <metadata>.
    """
    if metadata == "nova":
        metadata = nova_metadata_xml(guest)
    meta = f"<metadata>{metadata}</metadata>" if metadata else ""
    if not devices:
        devices = "".join(
            [f"<disk type='file' device='disk'><source file='/var/lib/test/"
             f"{escape(guest.instance_id)}-{dev}.img'/><target dev={quoteattr(dev)} "
             "bus='virtio'/></disk>" for dev in guest.disks]
            + [f"<interface type='network'><source network='default'/><target "
               f"dev={quoteattr(tap)}/></interface>" for tap in guest.vnics])
    return (
        f"<domain type={quoteattr(hypervisor)}>"
        f"<name>{escape(guest.domain_name)}</name><uuid>{guest.instance_id}</uuid>"
        f"{meta}"
        f"<memory unit='MiB'>{guest.memory_mb}</memory><vcpu>{guest.vcpus}</vcpu>"
        f"{os_xml}<devices>{devices}</devices></domain>"
    )


class DemoDomains:
    """Running domains on a private test:///default connection; removes its own at cleanup."""

    def __init__(self, prefix: str = "demo") -> None:
        import libvirt

        self.conn = libvirt.open(TEST_DRIVER)
        self._prefix = prefix
        self._made: list[NovaGuest] = []

    def create(self, *, metadata: str | None = "nova", **guest_fields) -> NovaGuest:
        n = len(self._made) + 1
        guest_fields.setdefault("domain_name", f"{self._prefix}-{n}")
        guest_fields.setdefault("vnics", (f"tap{n}",))
        guest = NovaGuest(**guest_fields)
        self.conn.defineXML(domain_xml(guest, metadata=metadata)).create()
        self._made.append(guest)
        return guest

    def destroy(self, guest: NovaGuest) -> None:
        """As nova's driver.destroy: stop and undefine the instance's domain (by uuid)."""
        for dom in self.conn.listAllDomains(0):
            if dom.UUIDString() == guest.instance_id:
                if dom.isActive():
                    dom.destroy()
                dom.undefine()

    def cleanup(self) -> None:
        for guest in self._made:
            self.destroy(guest)
        self._made = []


def request_id(guest: NovaGuest) -> str:
    """The request id of "the" delete of guest: nova puts the delete API request's id in the
    context of both announcements (and in the versioned payload). A retried delete is a new
    request: pass another id to publish_start."""
    return "req-" + str(uuid.uuid5(uuid.NAMESPACE_URL, guest.instance_id))


def legacy_payload(guest: NovaGuest, host: str | None) -> dict:
    return {
        "instance_id": guest.instance_id, "tenant_id": guest.project_id,
        "user_id": guest.user_id, "display_name": guest.display_name, "host": host,
        "node": host, "hostname": guest.display_name, "instance_type": guest.flavor_name,
        "memory_mb": guest.memory_mb, "vcpus": guest.vcpus, "root_gb": guest.root_gb,
        "ephemeral_gb": guest.ephemeral_gb, "disk_gb": guest.root_gb + guest.ephemeral_gb,
        "state": "active", "state_description": "deleting", "image_ref_url": guest.image_ref,
        "created_at": "2026-11-21 09:00:00+00:00", "launched_at": "2026-11-21T09:00:05.000000",
        "deleted_at": "", "metadata": {}, "availability_zone": "nova",
    }


def versioned_payload(guest: NovaGuest, host: str | None, request: str | None = None) -> dict:
    flavor = {
        "nova_object.name": "FlavorPayload", "nova_object.namespace": "nova",
        "nova_object.version": "1.4",
        "nova_object.data": {"name": guest.flavor_name, "memory_mb": guest.memory_mb,
                             "vcpus": guest.vcpus, "root_gb": guest.root_gb,
                             "ephemeral_gb": guest.ephemeral_gb, "swap": guest.swap_mb},
    }
    return {
        "nova_object.name": "InstanceActionPayload", "nova_object.namespace": "nova",
        "nova_object.version": "1.8",
        "nova_object.data": {
            "uuid": guest.instance_id, "host": host, "node": host,
            "tenant_id": guest.project_id, "user_id": guest.user_id,
            "display_name": guest.display_name, "flavor": flavor, "state": "active",
            "task_state": "deleting", "power_state": "running", "image_uuid": guest.image_ref,
            "request_id": request or request_id(guest),
        },
    }


def event_type_of(action: str, versioned: bool) -> str:
    """nova's .start event type of a process-ending action (delete, power_off, reboot, ...)."""
    table = VERSIONED_PROCESS_ENDING if versioned else LEGACY_PROCESS_ENDING
    return next(event for event, name in table.items() if name == action)


def publish_start(transport, guest: NovaGuest, host: str | None, *, versioned: bool = False,
                  exchange: str = "nova", topic: str | None = None,
                  request: str | None = None, action: str = "delete"):
    """Send one delete.start (or another process-ending action's .start) for guest on host,
    as nova-compute on that host would (host None: as nova-api does for an instance no host
    holds). topic defaults to nova's (notifications / versioned_notifications); request is the
    request's id. Returns the envelope timestamp (aware UTC), which oslo.messaging writes as
    str(utcnow()): naive, with a space."""
    if versioned:
        default_topic, publisher = "versioned_notifications", f"nova-compute:{host}"
        payload = versioned_payload(guest, host, request)
    else:
        default_topic, publisher = "notifications", f"compute.{host}"
        payload = legacy_payload(guest, host)
    return send(transport, exchange, topic or default_topic, publisher,
                event_type_of(action, versioned), payload,
                {"request_id": request or request_id(guest)})


def send(transport, exchange: str, topic: str, publisher: str, event_type: str,
         payload: dict, context: dict):
    """One INFO notification as nova's Notifier sends it (oslo.messaging 2.0 envelope)."""
    import oslo_messaging

    sent_at = utcnow()
    message = {"message_id": str(uuid.uuid4()), "publisher_id": publisher,
               "event_type": event_type, "priority": "INFO", "payload": payload,
               "timestamp": str(sent_at.replace(tzinfo=None))}
    target = oslo_messaging.Target(exchange=exchange, topic=f"{topic}.info")
    transport._send_notification(target, context, message, version=2.0, retry=3)
    return sent_at
