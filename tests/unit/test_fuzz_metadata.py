"""Fuzzing nova_metadata.parse and the registry that calls it with what a domain definition
may hold: nova's own documents with random content, mutated element trees in and out of nova's
namespaces, every truncation of a valid document, DTDs, entity bombs and external entities
inserted anywhere, random text and bytes. parse must return an InstanceInfo or raise
MetadataRejected / MetadataMalformed -- nothing else, never hang -- and the registry must count
every unusable document, never raise.
"""
from __future__ import annotations

import atexit
import copy
import os
import re
import tempfile
import uuid
import xml.etree.ElementTree as ET

import libvirt
import pytest
from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st

from lifecycle_stats.reading import nova_metadata
from tests.support import guests as novalike
from lifecycle_stats.counters import Counters
from lifecycle_stats.exceptions import MetadataMalformed, MetadataRejected
from lifecycle_stats.records import InstanceInfo
from lifecycle_stats.reading.registry import MALFORMED, REJECTED, DomainRegistry

FUZZ = settings(max_examples=300, deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
NS_1_1, NS_1_0 = novalike.NOVA_NS_1_1, novalike.NOVA_NS_1_0
INSTANCE_ID = "7a1e8d2c-3b4f-4e5a-9c6d-1f2e3d4c5b6a"
# What an external entity would try to pull in: a file of the test's own with a token no fuzzed
# value can produce by chance (/etc/hostname was used once; on a host named "vm" a fuzzed image
# uuid "vm" looked like a leak).
SECRET_TEXT = f"secret-{uuid.uuid4().hex}"
with tempfile.NamedTemporaryFile("w", suffix=".secret", delete=False) as _f:
    _f.write(SECRET_TEXT)
SECRET = _f.name
atexit.register(os.unlink, SECRET)


def outcome(xml, namespace=NS_1_1):
    """("info", InstanceInfo) | ("rejected", exc) | ("malformed", exc); anything else raises."""
    try:
        info = nova_metadata.parse(xml, "instance-0000002a", INSTANCE_ID, namespace=namespace)
    except MetadataRejected as exc:
        return "rejected", exc
    except MetadataMalformed as exc:
        return "malformed", exc
    assert isinstance(info, InstanceInfo)
    _check_info(info)
    return "info", info


def _check_info(info: InstanceInfo) -> None:
    assert info.instance_id == INSTANCE_ID and info.domain_name == "instance-0000002a"
    assert info.metadata_version in ("1.1", "1.0")
    assert info.user_id and info.project_id and info.flavor.name
    for number in (info.flavor.memory_mb, info.flavor.root_gb, info.flavor.swap_mb,
                   info.flavor.ephemeral_gb, info.flavor.vcpus):
        assert type(number) is int and number >= 0
    assert SECRET_TEXT not in repr(info)  # no external entity was ever resolved


# -- strategies -----------------------------------------------------------------------------------

# characters XML 1.0 can carry, minus \r (parsers normalise it to \n, so it cannot round-trip)
xml_chars = st.characters(exclude_categories=("Cs",), exclude_characters="\r\ufffe\uffff",
                          min_codepoint=0x20) | st.sampled_from(["\t", "\n", "&", "<", "'", '"'])
xml_text = st.text(xml_chars, max_size=40)
any_text = st.text(st.characters(exclude_categories=()), max_size=60)
numbers = st.integers(0, nova_metadata.MAX_INT)  # nova's columns: 64-bit signed

guests = st.builds(
    novalike.NovaGuest,
    display_name=xml_text, flavor_name=st.text(xml_chars, min_size=1, max_size=20),
    memory_mb=numbers, root_gb=numbers, swap_mb=numbers, ephemeral_gb=numbers, vcpus=numbers,
    user_id=st.text(xml_chars, min_size=1, max_size=36), user_name=xml_text,
    project_id=st.text(xml_chars, min_size=1, max_size=36), project_name=xml_text,
    image_ref=xml_text, namespace=st.sampled_from([NS_1_1, NS_1_0]))


def unprefixed(xml: str, namespace: str) -> str:
    """The form libvirt hands back: no prefix, no namespace declaration."""
    return xml.replace(f' xmlns:nova="{namespace}"', "").replace("<nova:", "<").replace(
        "</nova:", "</")


VALID = novalike.nova_metadata_xml(novalike.NovaGuest())
TAGS = ["instance", "name", "flavor", "owner", "user", "project", "memory", "disk", "swap",
        "ephemeral", "vcpus", "root", "creationTime", "package", "x", "script"]
NAMESPACES = [NS_1_1, NS_1_0, "", "http://example.com/evil", "http://openstack.org/xmlns/libvirt/nova/9.9"]
HOSTILE = [
    '<!DOCTYPE instance [<!ENTITY a "aaaaaaaaaa">]>',
    '<!DOCTYPE lolz [<!ENTITY lol "lol"><!ENTITY lol1 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;">'
    '<!ENTITY lol2 "&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;"><!ENTITY lol3 "&lol2;&lol2;'
    '&lol2;&lol2;&lol2;&lol2;&lol2;">]>',
    f'<!DOCTYPE instance [<!ENTITY ext SYSTEM "file://{SECRET}">]>',
    f'<!DOCTYPE instance SYSTEM "file://{SECRET}">',
    '<!DOCTYPE instance [<!ENTITY % pe SYSTEM "http://127.0.0.1:1/x.dtd"> %pe;]>',
    f'<!ENTITY ext SYSTEM "file://{SECRET}">',
    "&ext;", "&lol3;", "&a;", "&#0;", "&#x110000;", "&amp;", "<![CDATA[&ext;]]>",
    '<?xml-stylesheet href="http://127.0.0.1:1/x"?>', '<?xml version="1.0"?>',
    f'<xi:include xmlns:xi="http://www.w3.org/2001/XInclude" href="file://{SECRET}" parse="text"/>',
    "<!-- -->", "]]>", "<", "\x00", "\ud800",
]


@st.composite
def mutated_trees(draw):
    """nova's document, namespaced or not, with random edits to its element tree."""
    guest = draw(guests)
    root = ET.fromstring(novalike.nova_metadata_xml(guest))
    for _ in range(draw(st.integers(0, 4))):
        elements = list(root.iter())
        target = draw(st.sampled_from(elements))
        op = draw(st.sampled_from(["drop", "rename", "text", "attr", "dup", "ns", "nest"]))
        ns = draw(st.sampled_from(NAMESPACES))
        tag = f"{{{ns}}}{draw(st.sampled_from(TAGS))}" if ns else draw(st.sampled_from(TAGS))
        if op == "drop" and target is not root:
            next(p for p in root.iter() if target in list(p)).remove(target)
        elif op == "rename":
            target.tag = tag
        elif op == "text":
            target.text = draw(xml_text | st.sampled_from(["-1", "1_0", "+1", "²", "١٢", " 7 ",
                                                           "99999999999999999999999", ""]))
        elif op == "attr":
            target.set(draw(st.sampled_from(["name", "uuid", "type", "version"])), draw(xml_text))
        elif op == "dup":
            target.append(copy.deepcopy(target))
        elif op == "ns" or op == "nest":
            ET.SubElement(target, tag).text = draw(xml_text)
    xml = ET.tostring(root, encoding="unicode")
    if draw(st.booleans()):
        xml = unprefixed(xml.replace("ns0:", "nova:").replace("xmlns:ns0=", "xmlns:nova="),
                         guest.namespace)
    return xml


@st.composite
def with_insertions(draw):
    """A valid document with hostile snippets inserted at random places."""
    xml = draw(st.sampled_from([VALID, unprefixed(VALID, NS_1_1)]))
    for _ in range(draw(st.integers(1, 3))):
        at = draw(st.just(0) | st.integers(0, len(xml)))  # 0: where a DTD is legal
        xml = xml[:at] + draw(st.sampled_from(HOSTILE)) + xml[at:]
    return xml


random_documents = st.one_of(
    any_text,
    st.binary(max_size=200).map(lambda b: b.decode("latin-1")),
    st.binary(max_size=200).map(lambda b: b.decode("utf-8", "surrogateescape")),
    st.lists(st.sampled_from(list("<>/=\"' &;!?[]-") + ["nova:", "instance", "xmlns"]),
             max_size=40).map("".join),
)
documents = st.one_of(mutated_trees(), with_insertions(), random_documents,
                      guests.map(novalike.nova_metadata_xml))


# -- parse ------------------------------------------------------------------------------------------

@FUZZ
@given(guests, st.booleans())
def test_nova_documents_round_trip(guest, libvirt_form):
    xml = novalike.nova_metadata_xml(guest)
    if libvirt_form:
        xml = unprefixed(xml, guest.namespace)
    kind, info = outcome(xml, namespace=guest.namespace)
    assert kind == "info", info
    assert info.metadata_version == {NS_1_1: "1.1", NS_1_0: "1.0"}[guest.namespace]
    assert (info.display_name, info.user_id, info.project_id, info.flavor.name) == (
        guest.display_name, guest.user_id, guest.project_id, guest.flavor_name)
    assert (info.flavor.memory_mb, info.flavor.root_gb, info.flavor.swap_mb,
            info.flavor.ephemeral_gb, info.flavor.vcpus) == (
        guest.memory_mb, guest.root_gb, guest.swap_mb, guest.ephemeral_gb, guest.vcpus)
    assert info.image_ref == guest.image_ref


@pytest.mark.parametrize("xml", [VALID, unprefixed(VALID, NS_1_1)], ids=["nova", "libvirt"])
def test_every_truncation_of_a_valid_document_is_malformed(xml):
    assert outcome(xml)[0] == "info"
    for end in range(len(xml)):
        kind, exc = outcome(xml[:end])
        assert kind == "malformed", (end, xml[:end], exc)


@pytest.mark.parametrize("dtd", [h for h in HOSTILE if h.startswith("<!DOCTYPE")])
def test_a_dtd_is_always_rejected(dtd):
    kind, exc = outcome(dtd + VALID)
    assert kind == "rejected", exc


@FUZZ
@given(with_insertions())
@example("\ud800" + VALID)
def test_hostile_insertions_never_resolve_anything(xml):
    kind, _ = outcome(xml)
    event(kind)
    # A declaration quoted inside a processing instruction or a comment is only text there
    # (hypothesis once nested one insertion inside another's PI): only real ones must reject.
    markup = re.sub(r"<\?.*?\?>|<!--.*?-->", "", xml, flags=re.S)
    if "<!DOCTYPE" in markup or "<!ENTITY" in markup:
        assert kind != "info"


@FUZZ
@given(mutated_trees())
def test_mutated_trees_parse_or_fail_cleanly(xml):
    event(outcome(xml)[0])


@FUZZ
@given(random_documents | st.none() | st.integers() | st.binary(max_size=50))
def test_random_input_fails_cleanly(xml):
    kind, _ = outcome(xml)
    assert kind != "info"


@pytest.mark.parametrize("extra", [0, 1, 10_000])
def test_size_cap_is_enforced_before_parsing(extra):
    head = VALID.replace("<nova:name>guest</nova:name>", "<nova:name>{}</nova:name>")
    pad = nova_metadata.MAX_METADATA_BYTES - len(head.format("").encode())
    kind, exc = outcome(head.format("é" * ((pad + extra) // 2) + "x" * ((pad + extra) % 2)))
    assert kind == ("info" if extra == 0 else "rejected"), exc


# -- the registry -----------------------------------------------------------------------------------

class NoMetadata(libvirt.libvirtError):
    def __init__(self):
        super().__init__("metadata not found")

    def get_error_code(self):
        return libvirt.VIR_ERR_NO_DOMAIN_METADATA


class FakeDom:
    """A domain whose nova metadata (in `namespace`) is `xml`, as dom.metadata() returns it."""

    def __init__(self, xml, namespace):
        self._uuid = str(uuid.uuid4())
        self._xml, self._namespace = xml, namespace

    def UUIDString(self):
        return self._uuid

    def name(self):
        return "instance-0000002a"

    def metadata(self, kind, uri):
        assert kind == libvirt.VIR_DOMAIN_METADATA_ELEMENT
        if uri != self._namespace:
            raise NoMetadata()
        return self._xml

    def XMLDesc(self, flags=0):  # the registry also reads architecture, os type, vNICs
        return (f"<domain type='kvm'><name>{self.name()}</name><uuid>{self._uuid}</uuid>"
                "<os><type arch='x86_64'>hvm</type></os></domain>")


@FUZZ
@given(st.lists(st.tuples(documents, st.sampled_from([NS_1_1, NS_1_0])), min_size=1,
                max_size=5))
def test_registry_counts_every_unusable_document_and_never_raises(docs):
    counters = Counters()
    registry = DomainRegistry(None, counters)  # refresh() reads the dom it is given
    expected = {"info": 0, "rejected": 0, "malformed": 0}
    for xml, namespace in docs:
        dom = FakeDom(xml, namespace)
        kind, _ = outcome(xml, namespace=namespace)
        expected[kind] += 1
        info = registry.refresh(dom)
        assert (info is not None) == (kind == "info")
        assert registry.is_known(dom.UUIDString())
        assert registry.get(dom.UUIDString()) == info
        if info is not None:
            assert info.instance_id == dom.UUIDString()
    assert counters.get(REJECTED) == expected["rejected"]
    assert counters.get(MALFORMED) == expected["malformed"]
    assert len(registry.instances()) == expected["info"]


def test_a_document_the_parser_did_not_foresee_is_that_domain_s_problem_alone(monkeypatch):
    """A parser failure other than MetadataError (int() refusing 4301 digits was one) escaped
    the registry: every sync failed at that domain, every resync, for every domain (found by
    review). Now it is counted malformed like any unusable document."""
    counters = Counters()
    registry = DomainRegistry(None, counters)
    good = FakeDom(novalike.nova_metadata_xml(novalike.NovaGuest(domain_name="ok")), NS_1_1)
    odd = FakeDom("<odd/>", NS_1_1)
    real_parse = nova_metadata.parse

    def parse(xml, *args, **kwargs):
        if xml == "<odd/>":
            raise ValueError("Exceeds the limit (4300 digits) for integer string conversion")
        return real_parse(xml, *args, **kwargs)

    monkeypatch.setattr(nova_metadata, "parse", parse)
    assert registry.refresh(odd) is None
    assert registry.refresh(good) is not None
    assert registry.unusable(odd.UUIDString()) == MALFORMED
    assert counters.get(MALFORMED) == 1
