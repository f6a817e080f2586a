"""Domain definitions shaped the way nova's libvirt driver writes them.

Used by the embedded demo, the tests and the benchmarks to create nova-owned domains (with
nova's <metadata>) on libvirt's test driver or on a real QEMU daemon. The metadata follows
nova/virt/libvirt/config.py (LibvirtConfigGuestMetaNovaInstance).
"""
from __future__ import annotations

import dataclasses
import uuid as uuidlib
from xml.sax.saxutils import escape, quoteattr

NOVA_NS_1_1 = "http://openstack.org/xmlns/libvirt/nova/1.1"
NOVA_NS_1_0 = "http://openstack.org/xmlns/libvirt/nova/1.0"


@dataclasses.dataclass
class NovaGuest:
    instance_id: str = dataclasses.field(default_factory=lambda: str(uuidlib.uuid4()))
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


def domain_xml(guest: NovaGuest, hypervisor: str = "qemu", metadata: str | None = "nova") -> str:
    """A whole <domain>. hypervisor is "qemu" (real daemon, TCG) or "test" (test:///default).

    metadata: "nova" for nova's block, None for a domain nova does not own, or any raw XML
    string to put inside <metadata> (hostile or malformed input in tests).
    """
    if metadata == "nova":
        metadata = nova_metadata_xml(guest)
    meta = f"<metadata>{metadata}</metadata>" if metadata else ""
    devices = []
    if hypervisor == "qemu":
        devices.append("<emulator>/usr/bin/qemu-system-x86_64</emulator>")
        for dev, path in zip(guest.disks, guest.disk_paths, strict=True):
            devices.append(
                "<disk type='file' device='disk'><driver name='qemu' type='qcow2'/>"
                f"<source file={quoteattr(path)}/><target dev={quoteattr(dev)} bus='virtio'/>"
                "</disk>"
            )
        for tap in guest.vnics:
            devices.append(
                f"<interface type='ethernet'><target dev={quoteattr(tap)} managed='yes'/>"
                "<model type='virtio'/></interface>"
            )
        os_xml = "<os><type arch='x86_64' machine='pc'>hvm</type><boot dev='hd'/></os>"
    else:
        for dev in guest.disks:
            devices.append(
                "<disk type='file' device='disk'>"
                f"<source file='/var/lib/test/{escape(guest.instance_id)}-{dev}.img'/>"
                f"<target dev={quoteattr(dev)} bus='virtio'/></disk>"
            )
        for tap in guest.vnics:
            devices.append(
                "<interface type='network'><source network='default'/>"
                f"<target dev={quoteattr(tap)}/></interface>"
            )
        os_xml = "<os><type>hvm</type></os>"
    return (
        f"<domain type={quoteattr(hypervisor)}>"
        f"<name>{escape(guest.domain_name)}</name><uuid>{guest.instance_id}</uuid>"
        f"{meta}"
        f"<memory unit='MiB'>{guest.memory_mb}</memory><vcpu>{guest.vcpus}</vcpu>"
        f"{os_xml}<devices>{''.join(devices)}</devices></domain>"
    )
