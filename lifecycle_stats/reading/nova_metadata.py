"""Read what nova wrote into a libvirt domain: the <nova:instance> metadata and device names.

Everything read here comes from a domain definition, which a guest owner can influence (e.g.
the display name), so every document goes through defusedxml with DTDs, entities and external
references forbidden, and through a size cap, before a single element is looked at.

libvirt hands back the metadata element *without* its namespace
(``dom.metadata(VIR_DOMAIN_METADATA_ELEMENT, ns)`` -> ``<instance><name>..``); nova writes it
namespaced (``<nova:instance xmlns:nova="...">``). Both forms are accepted.
"""
from __future__ import annotations

import xml.etree.ElementTree as ET

import defusedxml
import defusedxml.ElementTree as SafeET

from lifecycle_stats.exceptions import MetadataMalformed, MetadataRejected
from lifecycle_stats.records import Flavor, InstanceInfo

# The namespaces nova's libvirt driver writes <nova:instance> in (nova/virt/libvirt/config.py).
NOVA_NS_1_1 = "http://openstack.org/xmlns/libvirt/nova/1.1"
NOVA_NS_1_0 = "http://openstack.org/xmlns/libvirt/nova/1.0"  # hosts before nova 2014.2
# namespace -> metadata version, newest first (the order the registry asks libvirt in)
NAMESPACES: dict[str, str] = {NOVA_NS_1_1: "1.1", NOVA_NS_1_0: "1.0"}
MAX_METADATA_BYTES = 64 * 1024
MAX_DOMAIN_XML_BYTES = 1024 * 1024

_FLAVOR_NUMBERS = (  # (element, Flavor field)
    ("memory", "memory_mb"),
    ("disk", "root_gb"),
    ("swap", "swap_mb"),
    ("ephemeral", "ephemeral_gb"),
    ("vcpus", "vcpus"),
)


def parse(
    xml: str, domain_name: str, instance_id: str, namespace: str | None = None
) -> InstanceInfo:
    """Turn one <instance> metadata element into an InstanceInfo.

    namespace: the namespace the caller asked libvirt for. It decides the version of an
    unprefixed document (libvirt's form); a namespaced document carries its own.
    Raises MetadataRejected (hostile or oversized) or MetadataMalformed (unusable).
    """
    root = _safe_root(xml, MAX_METADATA_BYTES, "nova metadata")
    ns, version = _namespace_of(root, namespace)
    find = _Finder(ns)
    flavor_el = find.required(root, "flavor")
    owner_el = find.required(root, "owner")
    user_el = find.required(owner_el, "user")
    project_el = find.required(owner_el, "project")
    root_type, image_ref = _root_disk(find, root)
    return InstanceInfo(
        instance_id=instance_id,
        domain_name=domain_name,
        display_name=_text(find.required(root, "name")),
        flavor=_flavor(find, flavor_el),
        user_id=_required_attr(user_el, "uuid", "owner/user"),
        user_name=_text(user_el),
        project_id=_required_attr(project_el, "uuid", "owner/project"),
        project_name=_text(project_el),
        image_ref=image_ref,
        root_type=root_type,
        creation_time=_optional_text(find.optional(root, "creationTime")),
        metadata_version=version,
    )


def device_names(domain_xml: str) -> tuple[list[str], list[str]]:
    """(disk target devs, vNIC target devs) of a full domain XMLDesc.

    Only device='disk' disks count (cdroms and floppies carry no billable I/O); interfaces
    without a <target dev> (an inactive domain's) are skipped.
    """
    root = _safe_root(domain_xml, MAX_DOMAIN_XML_BYTES, "domain XML")
    if root.tag != "domain":
        raise MetadataMalformed(f"domain XML: root element is <{root.tag}>, expected <domain>")
    disks = [
        target.get("dev")
        for disk in root.iterfind("devices/disk")
        if disk.get("device", "disk") == "disk"
        for target in disk.iterfind("target")
        if target.get("dev")
    ]
    vnics = [
        target.get("dev")
        for target in root.iterfind("devices/interface/target")
        if target.get("dev")
    ]
    return disks, vnics


def domain_facts(domain_xml: str) -> dict:
    """What Ceilometer's libvirt discovery and vNIC inspector read from the domain XML besides
    nova's metadata: architecture and os_type (every compute sample's metadata), and per
    interface with a <target dev> its mac, filterref and parameters (every network.* sample's
    metadata; a filterref also becomes the vNIC's resource id). InstanceInfo fields."""
    root = _safe_root(domain_xml, MAX_DOMAIN_XML_BYTES, "domain XML")
    os_type = root.find("os/type")
    vnics = {}
    for iface in root.iterfind("devices/interface"):
        target, mac = iface.find("target"), iface.find("mac")
        if target is None or not target.get("dev") or mac is None:
            continue  # Ceilometer skips these interfaces too
        fref = iface.find("filterref")
        parameters = {p.get("name", "").lower(): p.get("value")
                      for p in iface.iterfind("filterref/parameter")}
        virtualport = iface.find("virtualport/parameters")
        source = iface.find("source")
        parameters["interfaceid"] = None if virtualport is None else virtualport.get("interfaceid")
        parameters["bridge"] = None if source is None else source.get("bridge")
        vnics[target.get("dev")] = {"mac": mac.get("address"),
                                    "fref": None if fref is None else fref.get("filter"),
                                    "parameters": parameters}
    return {"architecture": None if os_type is None else os_type.get("arch"),
            "os_type": None if os_type is None else _optional_text(os_type),
            "vnic_facts": vnics}


def _safe_root(xml: str, limit: int, what: str) -> ET.Element:
    if not isinstance(xml, str):
        raise MetadataMalformed(f"{what}: expected a str, got {type(xml).__name__}")
    size = len(xml.encode("utf-8", "surrogatepass"))
    if size > limit:
        raise MetadataRejected(f"{what}: {size} bytes exceeds the {limit}-byte limit")
    try:
        return SafeET.fromstring(
            xml, forbid_dtd=True, forbid_entities=True, forbid_external=True
        )
    except defusedxml.DefusedXmlException as exc:
        raise MetadataRejected(f"{what}: hostile XML refused: {exc}") from exc
    except (ET.ParseError, UnicodeEncodeError) as exc:  # lone surrogates cannot reach expat
        raise MetadataMalformed(f"{what}: not well-formed XML: {exc}") from exc


def _namespace_of(root: ET.Element, asked: str | None) -> tuple[str, str]:
    """The element's namespace ('' when unprefixed) and the metadata version it means."""
    ns, _, local = root.tag[1:].partition("}") if root.tag.startswith("{") else ("", "", root.tag)
    if local != "instance":
        raise MetadataMalformed(f"nova metadata: root element is <{local}>, expected <instance>")
    effective = ns or asked or next(iter(NAMESPACES))
    if effective not in NAMESPACES:
        raise MetadataMalformed(f"nova metadata: unsupported namespace {effective!r}")
    return ns, NAMESPACES[effective]


class _Finder:
    """Child look-ups in the document's own namespace, with precise errors."""

    def __init__(self, ns: str):
        self._prefix = f"{{{ns}}}" if ns else ""

    def optional(self, parent: ET.Element, name: str) -> ET.Element | None:
        return parent.find(self._prefix + name)

    def required(self, parent: ET.Element, name: str) -> ET.Element:
        found = self.optional(parent, name)
        if found is None:
            raise MetadataMalformed(
                f"nova metadata: missing required element <{name}> in <{_local(parent)}>"
            )
        return found


def _flavor(find: _Finder, flavor_el: ET.Element) -> Flavor:
    numbers = {
        field: _non_negative_int(find.required(flavor_el, element), f"flavor/{element}")
        for element, field in _FLAVOR_NUMBERS
    }
    # nova >= 2025.2 writes <nova:flavor id=...>; older hosts do not.
    return Flavor(name=_required_attr(flavor_el, "name", "flavor"), id=flavor_el.get("id") or None,
                  **numbers)


def _root_disk(find: _Finder, root: ET.Element) -> tuple[str | None, str | None]:
    root_el = find.optional(root, "root")
    if root_el is None:
        return None, None
    root_type = root_el.get("type")
    image_ref = root_el.get("uuid") if root_type == "image" else None
    return root_type, image_ref


MAX_INT = 2**63 - 1  # nova's columns are 64-bit; more cannot be stored (msgpack, SQLite)


def _non_negative_int(element: ET.Element, where: str) -> int:
    raw = _text(element).strip()
    # str.isdigit alone would take "²" or "١٢"; int() alone would take "1_0", "+1" and "-1";
    # the length first: int() refuses more than 4300 digits with a ValueError of its own
    if not (raw.isascii() and raw.isdigit() and len(raw) <= 19 and int(raw) <= MAX_INT):
        raise MetadataMalformed(
            f"nova metadata: {where} is {raw[:40]!r}, expected a non-negative integer "
            f"up to {MAX_INT}"
        )
    return int(raw)


def _required_attr(element: ET.Element, attr: str, where: str) -> str:
    value = element.get(attr)
    if not value:
        raise MetadataMalformed(f"nova metadata: {where} lacks the required {attr!r} attribute")
    return value


def _text(element: ET.Element) -> str:
    return element.text or ""


def _optional_text(element: ET.Element | None) -> str | None:
    return None if element is None else _text(element).strip() or None


def _local(element: ET.Element) -> str:
    return element.tag.rpartition("}")[2]
