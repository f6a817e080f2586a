"""Nova-owned guests for the tests, benchmarks and tools: on libvirt's test driver or on a
real QEMU daemon, with nova's <metadata> (the demo's shapes, lifecycle_stats/cmd/demo_nova.py).

Test scaffolding: sweep_leftovers destroys domains by name, so none of this ships in the wheel.
"""
from __future__ import annotations

import itertools
import os
import subprocess
from concurrent.futures import ThreadPoolExecutor
from xml.sax.saxutils import quoteattr

from lifecycle_stats.cmd import demo_nova
from lifecycle_stats.cmd.demo_nova import (  # noqa: F401  (re-exported for the tests)
    NOVA_NS_1_0, NOVA_NS_1_1, NovaGuest, nova_metadata_xml,
)


def domain_xml(guest: NovaGuest, hypervisor: str = "qemu", metadata: str | None = "nova") -> str:
    """A whole <domain>. hypervisor is "qemu" (real daemon, TCG) or "test" (test:///default).

    metadata: "nova" for nova's block, None for a domain nova does not own, or any raw XML
    string to put inside <metadata> (hostile or malformed input in tests).
    """
    if hypervisor != "qemu":
        return demo_nova.domain_xml(guest, hypervisor, metadata)
    devices = ["<emulator>/usr/bin/qemu-system-x86_64</emulator>"]
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
    return demo_nova.domain_xml(
        guest, hypervisor, metadata, devices="".join(devices),
        os_xml="<os><type arch='x86_64' machine='pc'>hvm</type><boot dev='hd'/></os>")


# --------------------------------------------------------------------------------------------
# Real (or test-driver) guests for tests, demos and benchmarks.

_NO_DOMAIN = 42  # libvirt.VIR_ERR_NO_DOMAIN; kept here so this module imports without libvirt


def _gone(exc: Exception) -> bool:
    """True when a libvirtError only says the domain no longer exists."""
    get_code = getattr(exc, "get_error_code", None)
    return get_code is not None and get_code() == _NO_DOMAIN


def _stop_and_undefine(dom, undefine: bool = True) -> None:
    """Destroy an active domain and undefine a persistent one; a vanished domain is fine."""
    import libvirt

    try:
        persistent = dom.isPersistent()  # asked first: a destroyed transient domain is gone
        if dom.isActive():
            try:
                dom.destroy()
            except libvirt.libvirtError as exc:  # someone else stopped it in between
                if exc.get_error_code() != libvirt.VIR_ERR_OPERATION_INVALID:
                    raise
        if undefine and persistent:
            dom.undefine()
    except libvirt.libvirtError as exc:
        if not _gone(exc):
            raise


def _owner_alive(name: str, prefix: str) -> bool:
    """Whether the process whose pid is embedded in "{prefix}-{pid}-{n}" still runs."""
    pid = name[len(prefix) + 1:].split("-", 1)[0]
    return pid.isdigit() and os.path.exists(f"/proc/{pid}")


def sweep_leftovers(conn, prefix: str) -> list[str]:
    """Destroy/undefine domains named "{prefix}-{pid}-..." whose creating process is dead.

    Cleans up after a killed earlier run; domains of a run still alive (another pytest on the
    same daemon) are left alone. Returns the names removed.
    """
    swept = []
    for dom in conn.listAllDomains(0):
        name = dom.name()
        if name.startswith(prefix + "-") and not _owner_alive(name, prefix):
            _stop_and_undefine(dom)
            swept.append(name)
    return swept


class GuestFactory:
    """Creates nova-like guests on `conn` and removes every one of them on cleanup().

    hypervisor "qemu": one 16 MiB qcow2 per disk in `workdir` and unique host tap names;
    hypervisor "test": libvirt's test driver, no images. Guests start paused by default.
    Names and taps are unique per process across all factories (shared serial numbers).
    """

    _serial = itertools.count(1)  # process-wide, so two factories never reuse a name or tap

    def __init__(self, conn, workdir: str, hypervisor: str = "qemu", prefix: str = "lst"):
        if hypervisor not in ("qemu", "test"):
            raise ValueError(f"hypervisor must be 'qemu' or 'test', not {hypervisor!r}")
        self.conn = conn
        self.workdir = workdir
        self.hypervisor = hypervisor
        self.prefix = prefix
        self._pid = os.getpid()
        self._guests: list[NovaGuest] = []

    def unique_tap(self) -> str:
        """A host tap name no other guest of this process uses (at most 15 characters)."""
        return f"t{self._pid % 10000}x{next(self._serial)}"

    def create(
        self, *, paused: bool = True, persistent: bool = True,
        metadata: str | None = "nova", **guest_fields,
    ) -> tuple[NovaGuest, "libvirt.virDomain"]:
        """Define and start one guest; NovaGuest fields may be overridden by keyword."""
        n = next(self._serial)
        guest_fields.setdefault("domain_name", f"{self.prefix}-{self._pid}-{n}")
        guest_fields.setdefault("display_name", f"guest-{n}")
        if "vnics" not in guest_fields:
            guest_fields["vnics"] = (self.unique_tap(),)
        guest = NovaGuest(**guest_fields)
        own_images = self.hypervisor == "qemu" and not guest.disk_paths
        if own_images:
            guest.disk_paths = tuple(self._image_path(guest, dev) for dev in guest.disks)
        self._guests.append(guest)
        try:
            for path in guest.disk_paths if own_images else ():
                subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", path, "16M"],
                               check=True, capture_output=True, text=True)
            dom = self._start(domain_xml(guest, self.hypervisor, metadata), paused, persistent)
        except Exception:
            self.destroy(guest)
            raise
        return guest, dom

    def create_many(self, n: int, **kw) -> list[tuple[NovaGuest, "libvirt.virDomain"]]:
        return [self.create(**kw) for _ in range(n)]

    def destroy(self, guest: NovaGuest, undefine: bool = True) -> None:
        """Hard-stop the guest (and undefine it and delete its images); tolerates gone ones."""
        self._destroy(guest, self._domains_by_uuid(), undefine)

    def cleanup(self) -> None:
        """Remove every domain and image this factory made, in parallel (a destroy takes ~1.5 s
        on QEMU); tolerates already-gone guests; raises the first other failure at the end."""
        guests, self._guests = self._guests, []
        live = self._domains_by_uuid()
        with ThreadPoolExecutor(max_workers=8) as pool:
            futures = [pool.submit(self._destroy, guest, live) for guest in guests]
        errors = [f.exception() for f in futures if f.exception() is not None]
        if errors:
            raise errors[0]

    def _domains_by_uuid(self) -> dict:
        # Listing instead of lookupByUUIDString: libvirt prints every failed lookup to stderr.
        return {dom.UUIDString(): dom for dom in self.conn.listAllDomains(0)}

    def _destroy(self, guest: NovaGuest, live: dict, undefine: bool = True) -> None:
        dom = live.get(guest.instance_id)
        if dom is not None:
            _stop_and_undefine(dom, undefine)
        if undefine:
            self._remove_images(guest)

    def _start(self, xml: str, paused: bool, persistent: bool):
        import libvirt

        # The test driver rejects START_PAUSED: start it running, then suspend.
        native = paused and self.hypervisor == "qemu"
        flags = libvirt.VIR_DOMAIN_START_PAUSED if native else 0
        if persistent:
            dom = self.conn.defineXML(xml)
            dom.createWithFlags(flags)
        else:
            dom = self.conn.createXML(xml, flags)
        if paused and not native:
            dom.suspend()
        return dom

    def _image_path(self, guest: NovaGuest, dev: str) -> str:
        return os.path.join(self.workdir, f"{guest.domain_name}-{dev}.qcow2")

    def _remove_images(self, guest: NovaGuest) -> None:
        for path in guest.disk_paths:
            if path.startswith(self.workdir + os.sep) and os.path.exists(path):
                os.unlink(path)
