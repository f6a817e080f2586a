"""The hardened nova metadata parser, table-driven over the forms libvirt and nova produce."""
from __future__ import annotations

import re

import pytest

from lifecycle_stats.reading import nova_metadata
from tests.support import guests as novalike
from lifecycle_stats.exceptions import MetadataMalformed, MetadataRejected
from lifecycle_stats.records import Flavor

UUID = "8f4a3b2c-1d0e-4f5a-9b8c-7d6e5f4a3b2c"
DOMAIN = "instance-0000002a"


def _guest(**overrides) -> novalike.NovaGuest:
    fields = dict(
        instance_id=UUID,
        domain_name=DOMAIN,
        display_name="web-1",
        flavor_name="m1.small",
        memory_mb=2048,
        root_gb=20,
        swap_mb=512,
        ephemeral_gb=5,
        vcpus=2,
        user_id="u" * 32,
        user_name="alice",
        project_id="p" * 32,
        project_name="billing",
        image_ref="155d900f-4e14-4e4c-a73d-069cbf4541e6",
    )
    fields.update(overrides)
    return novalike.NovaGuest(**fields)


def _unprefixed(xml: str) -> str:
    """What libvirt's virDomainGetMetadata returns: the same element with no namespace."""
    xml = re.sub(r' xmlns:nova="[^"]*"', "", xml)
    return xml.replace("<nova:", "<").replace("</nova:", "</")


def _forms(namespace: str) -> list[tuple[str, str | None]]:
    """(xml, namespace the caller asked for) pairs for one guest in every accepted form."""
    prefixed = novalike.nova_metadata_xml(_guest(namespace=namespace))
    default_ns = f'<instance xmlns="{namespace}"' + _unprefixed(prefixed)[len("<instance"):]
    return [(prefixed, None), (_unprefixed(prefixed), namespace), (default_ns, None)]


FORMS = [
    pytest.param(xml, asked, version, id=f"{version}-{kind}")
    for namespace, version in nova_metadata.NAMESPACES.items()
    for (xml, asked), kind in zip(_forms(namespace), ("prefixed", "unprefixed", "default-ns"))
]


@pytest.mark.parametrize("xml, asked, version", FORMS)
def test_parses_every_accepted_form(xml, asked, version):
    info = nova_metadata.parse(xml, DOMAIN, UUID, namespace=asked)
    assert info.instance_id == UUID
    assert info.domain_name == DOMAIN
    assert info.display_name == "web-1"
    assert info.flavor == Flavor("m1.small", 2048, 20, 512, 5, 2)
    assert (info.user_id, info.user_name) == ("u" * 32, "alice")
    assert (info.project_id, info.project_name) == ("p" * 32, "billing")
    assert info.root_type == "image"
    assert info.image_ref == "155d900f-4e14-4e4c-a73d-069cbf4541e6"
    assert info.creation_time == "2026-11-21 09:00:00"
    assert info.metadata_version == version


def test_libvirt_whitespace_form_parses():
    # virDomainGetMetadata pretty-prints; this is its literal output for a novalike guest
    xml = (
        '<instance>\n  <package version="27.1.0"/>\n  <name>guest</name>\n'
        "  <flavor name=\"m1.nano\">\n    <memory> 32 </memory>\n    <disk>1</disk>\n"
        "    <swap>0</swap>\n    <ephemeral>0</ephemeral>\n    <vcpus>1</vcpus>\n  </flavor>\n"
        '  <owner>\n    <user uuid="u1">demo</user>\n    <project uuid="p1">demo</project>\n'
        "  </owner>\n</instance>"
    )
    info = nova_metadata.parse(xml, DOMAIN, UUID)
    assert info.flavor == Flavor("m1.nano", 32, 1, 0, 0, 1)
    assert info.metadata_version == "1.1"  # unprefixed and no namespace given: newest
    assert (info.root_type, info.image_ref, info.creation_time) == (None, None, None)


def test_unprefixed_takes_version_from_the_namespace_asked_for():
    xml = _unprefixed(novalike.nova_metadata_xml(_guest()))
    assert nova_metadata.parse(xml, DOMAIN, UUID, novalike.NOVA_NS_1_0).metadata_version == "1.0"


def test_a_namespaced_document_wins_over_the_namespace_asked_for():
    xml = novalike.nova_metadata_xml(_guest(namespace=novalike.NOVA_NS_1_0))
    info = nova_metadata.parse(xml, DOMAIN, UUID, novalike.NOVA_NS_1_1)
    assert info.metadata_version == "1.0"


def test_namespaces_are_ordered_newest_first():
    assert list(nova_metadata.NAMESPACES.values()) == ["1.1", "1.0"]


@pytest.mark.parametrize(
    "name",
    ["web-1", "żółw-😀", "日本語のサーバー", "a & b <c> \"d\" 'e'", ""],
    ids=["ascii", "polish-emoji", "japanese", "escaped-markup", "empty"],
)
def test_display_names_round_trip(name):
    xml = novalike.nova_metadata_xml(_guest(display_name=name, user_name=name))
    info = nova_metadata.parse(xml, DOMAIN, UUID)
    assert (info.display_name, info.user_name) == (name, name)


def test_volume_backed_root_has_no_image_ref():
    xml = novalike.nova_metadata_xml(_guest()).replace('type="image"', 'type="volume"')
    info = nova_metadata.parse(xml, DOMAIN, UUID)
    assert (info.root_type, info.image_ref) == ("volume", None)


def _drop(pattern: str) -> str:
    xml = novalike.nova_metadata_xml(_guest())
    out = re.sub(pattern, "", xml, count=1)
    assert out != xml, pattern
    return out


MISSING = [
    (r"<nova:name>.*?</nova:name>", "missing required element <name> in <instance>"),
    (r"<nova:flavor .*?</nova:flavor>", "missing required element <flavor> in <instance>"),
    (r"<nova:owner>.*?</nova:owner>", "missing required element <owner> in <instance>"),
    (r"<nova:user .*?</nova:user>", "missing required element <user> in <owner>"),
    (r"<nova:project .*?</nova:project>", "missing required element <project> in <owner>"),
    (r' uuid="u{32}"', "owner/user lacks the required 'uuid' attribute"),
    (r' uuid="p{32}"', "owner/project lacks the required 'uuid' attribute"),
    (r' name="m1.small"', "flavor lacks the required 'name' attribute"),
] + [
    (rf"<nova:{el}>\d+</nova:{el}>", f"missing required element <{el}> in <flavor>")
    for el in ("memory", "disk", "swap", "ephemeral", "vcpus")
]


@pytest.mark.parametrize("pattern, message", MISSING, ids=[m for _, m in MISSING])
def test_missing_required_field_is_malformed(pattern, message):
    with pytest.raises(MetadataMalformed) as caught:
        nova_metadata.parse(_drop(pattern), DOMAIN, UUID)
    assert message in str(caught.value)


def test_empty_uuid_attribute_counts_as_missing():
    xml = novalike.nova_metadata_xml(_guest(user_id=""))
    with pytest.raises(MetadataMalformed, match="owner/user lacks the required 'uuid'"):
        nova_metadata.parse(xml, DOMAIN, UUID)


@pytest.mark.parametrize("element", ["memory", "disk", "swap", "ephemeral", "vcpus"])
@pytest.mark.parametrize("bad", ["lots", "", "1.5", "-1", "+1", "1_0", "0x10", "²", "١٢",
                                 # no store takes it (before: accepted, then the capture and
                                 # the ledger failed on it); int() refuses 4301 digits itself
                                 # (before: a ValueError that stopped every resync)
                                 str(2**63), "9" * 5000])
def test_non_integer_flavor_number_is_malformed(element, bad):
    xml = re.sub(
        rf"<nova:{element}>\d+</nova:{element}>",
        f"<nova:{element}>{bad}</nova:{element}>",
        novalike.nova_metadata_xml(_guest()),
    )
    with pytest.raises(MetadataMalformed) as caught:
        nova_metadata.parse(xml, DOMAIN, UUID)
    assert f"flavor/{element} is {bad[:40]!r}, expected a non-negative integer" in str(
        caught.value)


BILLION_LAUGHS = (
    '<?xml version="1.0"?><!DOCTYPE lolz [<!ENTITY lol "lol">'
    + "".join(
        f'<!ENTITY lol{i} "{("&lol" + (str(i - 1) if i > 1 else "") + ";") * 10}">'
        for i in range(1, 10)
    )
    + "]><instance><name>&lol9;</name></instance>"
)
HOSTILE = {
    "billion-laughs": BILLION_LAUGHS,
    "external-entity": (
        '<!DOCTYPE instance [<!ENTITY xxe SYSTEM "file:///etc/passwd">]>'
        "<instance><name>&xxe;</name></instance>"
    ),
    "external-dtd": '<!DOCTYPE instance SYSTEM "http://127.0.0.1:9/evil.dtd"><instance/>',
    "parameter-entity": (
        '<!DOCTYPE instance [<!ENTITY % p SYSTEM "file:///etc/passwd"> %p;]><instance/>'
    ),
    "harmless-dtd": "<!DOCTYPE instance><instance><name>x</name></instance>",
    "internal-entity": '<!DOCTYPE i [<!ENTITY e "guest">]><instance><name>&e;</name></instance>',
}


@pytest.mark.parametrize("xml", HOSTILE.values(), ids=HOSTILE.keys())
def test_hostile_xml_is_rejected(xml):
    with pytest.raises(MetadataRejected, match="hostile XML refused"):
        nova_metadata.parse(xml, DOMAIN, UUID)


def test_oversize_input_is_rejected_before_parsing():
    padding = "x" * nova_metadata.MAX_METADATA_BYTES
    xml = novalike.nova_metadata_xml(_guest(display_name=padding))
    with pytest.raises(MetadataRejected, match=r"exceeds the 65536-byte limit"):
        nova_metadata.parse(xml, DOMAIN, UUID)


def test_size_cap_counts_bytes_not_characters():
    # 3 bytes per character in UTF-8: under the cap in characters, over it in bytes
    name = "日" * (nova_metadata.MAX_METADATA_BYTES // 3)
    with pytest.raises(MetadataRejected, match="exceeds"):
        nova_metadata.parse(novalike.nova_metadata_xml(_guest(display_name=name)), DOMAIN, UUID)


BROKEN = {
    "truncated": novalike.nova_metadata_xml(_guest())[:-40],
    "empty": "",
    "not-xml": "flavor=m1.small",
    "undeclared-entity": "<instance><name>&nope;</name></instance>",
    "two-roots": "<instance/><instance/>",
}


@pytest.mark.parametrize("xml", BROKEN.values(), ids=BROKEN.keys())
def test_broken_xml_is_malformed(xml):
    with pytest.raises(MetadataMalformed, match="not well-formed XML"):
        nova_metadata.parse(xml, DOMAIN, UUID)


@pytest.mark.parametrize(
    "xml, message",
    [
        ("<domain/>", "root element is <domain>, expected <instance>"),
        (
            '<n:instance xmlns:n="http://openstack.org/xmlns/libvirt/nova/9.9"/>',
            "unsupported namespace 'http://openstack.org/xmlns/libvirt/nova/9.9'",
        ),
    ],
    ids=["wrong-root", "unknown-namespace"],
)
def test_wrong_document_is_malformed(xml, message):
    with pytest.raises(MetadataMalformed, match=re.escape(message)):
        nova_metadata.parse(xml, DOMAIN, UUID)


def test_children_in_another_namespace_do_not_count():
    xml = novalike.nova_metadata_xml(_guest()).replace(
        "<nova:name>web-1</nova:name>", '<x:name xmlns:x="urn:other">web-1</x:name>'
    )
    with pytest.raises(MetadataMalformed, match="missing required element <name>"):
        nova_metadata.parse(xml, DOMAIN, UUID)


def test_non_string_input_is_malformed():
    with pytest.raises(MetadataMalformed, match="expected a str, got bytes"):
        nova_metadata.parse(b"<instance/>", DOMAIN, UUID)


# -- device_names ---------------------------------------------------------------------------

DOMAIN_XML = """<domain type='qemu'><name>instance-0000002a</name><devices>
  <disk type='file' device='disk'><source file='/a.qcow2'/><target dev='vda' bus='virtio'/></disk>
  <disk type='file' device='cdrom'><target dev='hdc' bus='ide'/></disk>
  <disk type='file' device='floppy'><target dev='fda'/></disk>
  <disk type='file'><target dev='vdb' bus='virtio'/></disk>
  <interface type='ethernet'><target dev='tap1a2b3c4d-5e'/></interface>
  <interface type='bridge'><source bridge='br0'/></interface>
  <interface type='network'><target dev='vnet3'/></interface>
</devices></domain>"""


def test_device_names_reads_disks_and_vnics():
    disks, vnics = nova_metadata.device_names(DOMAIN_XML)
    assert disks == ["vda", "vdb"]  # cdrom and floppy skipped; no device attr means disk
    assert vnics == ["tap1a2b3c4d-5e", "vnet3"]  # an interface without a target skipped


def test_device_names_of_a_deviceless_domain():
    assert nova_metadata.device_names("<domain><name>x</name></domain>") == ([], [])


@pytest.mark.parametrize(
    "xml, error, match",
    [
        (HOSTILE["external-entity"].replace("instance", "domain"), MetadataRejected, "hostile"),
        ("<domain><devices>", MetadataMalformed, "not well-formed"),
        ("<instance/>", MetadataMalformed, "expected <domain>"),
        (
            "<domain>" + " " * nova_metadata.MAX_DOMAIN_XML_BYTES + "</domain>",
            MetadataRejected,
            "exceeds",
        ),
    ],
    ids=["external-entity", "truncated", "wrong-root", "oversize"],
)
def test_device_names_uses_the_hardened_parser(xml, error, match):
    with pytest.raises(error, match=match):
        nova_metadata.device_names(xml)


def test_flavor_id_from_nova_2025_2_metadata():
    xml = (
        '<instance><name>guest</name>'
        '<flavor name="m1.nano" id="f-17"><memory>32</memory><disk>1</disk><swap>0</swap>'
        '<ephemeral>0</ephemeral><vcpus>1</vcpus></flavor>'
        '<owner><user uuid="u1">demo</user><project uuid="p1">demo</project></owner>'
        '</instance>'
    )
    assert nova_metadata.parse(xml, DOMAIN, UUID).flavor.id == "f-17"
    older = xml.replace(' id="f-17"', "")
    assert nova_metadata.parse(older, DOMAIN, UUID).flavor.id is None


def test_domain_facts_are_what_ceilometers_discovery_and_vnic_inspector_read():
    """architecture/os_type (discovery.py) and per tap mac, filterref, parameters
    (LibvirtInspector.inspect_vnics); interfaces without a target or a mac are skipped."""
    xml = """<domain type='kvm'><name>instance-1</name>
      <os><type arch='aarch64' machine='virt'>hvm</type></os>
      <devices>
        <interface type='bridge'><mac address='fa:16:3e:00:00:01'/>
          <source bridge='qbr1'/><target dev='tap1'/>
          <virtualport type='openvswitch'><parameters interfaceid='port-1'/></virtualport>
          <filterref filter='nova-instance-1-fa163e000001'>
            <parameter name='IP' value='10.0.0.5'/></filterref>
        </interface>
        <interface type='ethernet'><mac address='fa:16:3e:00:00:02'/><target dev='tap2'/>
        </interface>
        <interface type='ethernet'><target dev='tap3'/></interface>
        <interface type='ethernet'><mac address='fa:16:3e:00:00:04'/></interface>
      </devices></domain>"""
    facts = nova_metadata.domain_facts(xml)
    assert (facts["architecture"], facts["os_type"]) == ("aarch64", "hvm")
    assert facts["vnic_facts"] == {
        "tap1": {"mac": "fa:16:3e:00:00:01", "fref": "nova-instance-1-fa163e000001",
                 "parameters": {"ip": "10.0.0.5", "interfaceid": "port-1", "bridge": "qbr1"}},
        "tap2": {"mac": "fa:16:3e:00:00:02", "fref": None,
                 "parameters": {"interfaceid": None, "bridge": None}},
    }
