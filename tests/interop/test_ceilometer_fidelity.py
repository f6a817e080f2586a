"""Fidelity: Ceilometer 27's own compute pollsters and our capture, on the same real guest.

One paused QEMU guest on qemu:///system (it ran a moment first, so its counters are not zero).
We read it (Inspector + Registry, samples.build_samples without the legacy meters), then
Ceilometer 27 polls it in .ceilometer-venv (tests/interop/ceilometer_pollsters.py: its own
discovery over the live domain, every `ceilometer.poll.compute` pollster), then we read again.
Every sample must have a twin: same name, resource id, type, unit, user and project; a gauge
the same volume, a counter a volume between our two reads; the same resource_metadata, where
the flavor id is Ceilometer's only when nova wrote it into the domain (nova >= 2025.2);
without it Ceilometer asks nova's API, which we never do, so our flavor has no id at all.
"""
from __future__ import annotations

import json
import subprocess
import time

import pytest

from lifecycle_stats.counters import Counters
from lifecycle_stats.publishing import meters, samples
from lifecycle_stats.reading.hypervisor import Hypervisor
from lifecycle_stats.reading.inspector import Inspector
from lifecycle_stats.reading.registry import DomainRegistry
from tests.support.guests import NovaGuest, nova_metadata_xml
from tests.interop.stock_ceilometer import CEILOMETER_PYTHON, ROOT, RUN

pytestmark = [pytest.mark.integration, pytest.mark.interop, pytest.mark.timeout(180)]

HOST = f"lst-fidelity-{RUN}"
# Per-poll differences against Ceilometer's previous poll: meaningless in a one-off capture
# (test_ceilometer_interop checks this is the whole list of pollsters we do not mirror).
NOT_MIRRORED = frozenset({"network.incoming.bytes.delta", "network.outgoing.bytes.delta",
                          "network.incoming.bytes.rate", "network.outgoing.bytes.rate"})
# Gauges of the QEMU process, not the guest: they move (either way) while the guest is paused.
MOVING_GAUGES = frozenset({"memory.resident"})
API_FLAVOR_ID = "7b1e7c4e-3d52-4c7a-9a55-0c6d1f6e2a11"  # what nova's API says the id is


def metadata_with_flavor_id(guest: NovaGuest, flavor_id: str | None) -> str:
    """nova's <metadata>; nova >= 2025.2 adds the flavor's id as an attribute."""
    xml = nova_metadata_xml(guest)
    if flavor_id is None:
        return xml
    return xml.replace("<nova:flavor ", f'<nova:flavor id="{flavor_id}" ', 1)


def ceilometer_polls(libvirt_uri: str, instance_id: str, workdir) -> dict:
    out = workdir / f"pollsters-{instance_id}.json"
    done = subprocess.run(
        [str(CEILOMETER_PYTHON), str(ROOT / "tests" / "interop" / "ceilometer_pollsters.py"),
         libvirt_uri, HOST, instance_id, API_FLAVOR_ID, str(out)],
        capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(out.read_text())


def our_samples(inspector, info, instance_id):
    reading = inspector.read(instance_id)
    built = samples.build_samples(info, reading, host=HOST, capture_id="fidelity", legacy=False)
    return {(s.name, s.resource_id): s.as_dict() for s in built}


def from_nova_api(theirs: list[dict]) -> list[dict]:
    """Ceilometer's samples without the flavor id it took from nova's API (we never ask it)."""
    out = []
    for sample in theirs:
        flavor = dict(sample["resource_metadata"]["flavor"])
        assert flavor.pop("id") == API_FLAVOR_ID
        out.append({**sample, "resource_metadata": {**sample["resource_metadata"],
                                                    "flavor": flavor}})
    return out


def differences(before: dict, after: dict, theirs: list[dict]) -> list[tuple]:
    """Every way our samples differ from Ceilometer's: (meter, resource, field, ours, theirs)."""
    by_key = {(s["name"], s["resource_id"]): s for s in theirs if s["name"] not in NOT_MIRRORED}
    assert sorted(by_key) == sorted(before), "meters or resources differ"
    found = []
    for key, ceilo in sorted(by_key.items()):
        low, high = before[key], after[key]
        for field in ("type", "unit", "user_id", "project_id"):
            if low[field] != ceilo[field]:
                found.append((*key, field, low[field], ceilo[field]))
        if ceilo["type"] == meters.CUMULATIVE or ceilo["name"] in MOVING_GAUGES:
            # between our two reads (a process's RSS may shrink as well as grow)
            bounds = sorted((low["volume"], high["volume"]))
            if not bounds[0] <= ceilo["volume"] <= bounds[1]:
                found.append((*key, "volume", (low["volume"], high["volume"]), ceilo["volume"]))
        elif low["volume"] != ceilo["volume"]:
            found.append((*key, "volume", low["volume"], ceilo["volume"]))
        if type(low["volume"]) is not type(ceilo["volume"]):
            found.append((*key, "volume type", type(low["volume"]), type(ceilo["volume"])))
        ours_meta, their_meta = low["resource_metadata"], ceilo["resource_metadata"]
        for name in sorted(set(ours_meta) | set(their_meta)):
            if ours_meta.get(name, "<absent>") != their_meta.get(name, "<absent>"):
                found.append((*key, f"resource_metadata.{name}", ours_meta.get(name, "<absent>"),
                              their_meta.get(name, "<absent>")))
    return found


@pytest.mark.parametrize("nova_writes_flavor_id", [True, False],
                         ids=["nova>=2025.2", "nova<2025.2"])
def test_every_meter_equals_ceilometers_own_pollster(libvirt_uri, guest_factory, tmp_path,
                                                     nova_writes_flavor_id):
    if not CEILOMETER_PYTHON.exists():
        pytest.fail(f"{CEILOMETER_PYTHON} missing: run tools/ceilometer_venv.sh", pytrace=False)
    template = NovaGuest(vcpus=2, flavor_name="m1.fidelity", ephemeral_gb=1, root_gb=2)
    written_id = API_FLAVOR_ID if nova_writes_flavor_id else None
    guest, dom = guest_factory.create(
        vcpus=2, flavor_name="m1.fidelity", ephemeral_gb=1, root_gb=2,
        metadata=metadata_with_flavor_id(template, written_id))
    dom.resume()
    time.sleep(0.3)  # let it run: cpu and disk counters above zero
    dom.suspend()  # paused: counters stand still between the three reads
    hypervisor = Hypervisor(libvirt_uri)
    inspector = Inspector(hypervisor)
    info = DomainRegistry(hypervisor, Counters()).refresh_by_uuid(guest.instance_id)
    assert info is not None

    before = our_samples(inspector, info, guest.instance_id)
    got = ceilometer_polls(libvirt_uri, guest.instance_id, tmp_path)
    after = our_samples(inspector, info, guest.instance_id)

    assert (got["ceilometer_version"], got["instances"]) == ("27.0.0", 1), got["errors"]
    theirs = got["samples"] if nova_writes_flavor_id else from_nova_api(got["samples"])
    found = differences(before, after, theirs)
    assert not found, "\n".join(map(repr, found))
    cpu = before[("cpu", guest.instance_id)]
    assert cpu["volume"] > 0
    flavor = cpu["resource_metadata"]["flavor"]
    if nova_writes_flavor_id:
        assert flavor["id"] == API_FLAVOR_ID
    else:
        assert "id" not in flavor  # never the name; Ceilometer's comes from nova's API
    print(f"\n{len(got['samples'])} samples equal to Ceilometer 27's pollsters; "
          f"pollsters without data here: {sorted(got['errors'])}")
