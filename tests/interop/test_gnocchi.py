"""A real delete, stored by a real Gnocchi through a stock Ceilometer.

Gnocchi 4.7 (tools/gnocchi_env.sh: .gnocchi-venv, PostgreSQL indexer, file storage; api under
uwsgi + metricd, tests/interop/gnocchi_service.py) is fed by the stock
`ceilometer-agent-notification` with Ceilometer's gnocchi publisher and its stock
gnocchi_resources.yaml, listening on our `ceilometer` conduit's exchange and on nova's. One
archive policy of our own (1 s, `last`) is named in the publisher URL so every measure can be
read back exactly; everything else is stock.
1. While the guest runs, Ceilometer 27's own pollsters poll it and their samples go on the bus
   as ceilometer-polling sends them: Gnocchi creates the instance, disk and vNIC resources
   (flavor_id from nova's API, as Ceilometer's discovery asks it).
2. nova's delete.start (Ceilometer's event pipeline ends the instance), destroy; the agent
   captures and publishes through messagingv2 (read by us) and `ceilometer` (read by Ceilometer).
Then: the instance resource is ended; its final cpu, disk and network measures are stored at
the capture's timestamp with the delete.samples' values; after metricd processed everything
it is still ended (our samples are stamped before nova's announcement, which precedes
ended_at); the flavor_id is still nova's id, never the name. A control on the same Gnocchi
shows the rule we rely on: a measure stamped after ended_at un-ends a resource.
"""
from __future__ import annotations

import datetime
import json
import subprocess
import time

import oslo_messaging
import pytest

from lifecycle_stats.publishing import payloads
from tests.integration import harness
from tests.interop import agent_beside_ceilometer
from tests.interop.gnocchi_service import Gnocchi
from tests.interop.stock_ceilometer import (
    CEILOMETER_EXCHANGE, CEILOMETER_PRIORITIES, CEILOMETER_PYTHON, CEILOMETER_TOPIC, ROOT, RUN,
)

pytestmark = [pytest.mark.integration, pytest.mark.interop, pytest.mark.timeout(420)]

HOST = f"lst-gnocchi-{RUN}"
POLICY = f"lst-exact-{RUN}"
API_FLAVOR_ID = "5c2f3a0e-7d1b-4e8f-9a6c-1b2d3e4f5a6b"
FINAL_METERS = ("cpu", "disk.device.read.bytes", "disk.device.read.requests",
                "disk.device.write.bytes", "disk.device.write.requests",
                "network.incoming.bytes", "network.incoming.packets",
                "network.outgoing.bytes", "network.outgoing.packets")


def instant(text: str) -> datetime.datetime:
    moment = datetime.datetime.fromisoformat(text.replace("Z", "+00:00"))
    return moment if moment.tzinfo else moment.replace(tzinfo=datetime.timezone.utc)


def wait_for(what: str, probe, timeout: float, gnocchi: Gnocchi, agent=None):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = probe()
        if got:
            return got
        time.sleep(0.5)
    tail = agent.log_tail() if agent is not None else ""
    raise AssertionError(f"{what} after {timeout} s\n{tail}\n{gnocchi.log_tail()}")


@pytest.fixture(scope="module")
def world(rabbit_url, libvirt_uri, tmp_path_factory):
    if not CEILOMETER_PYTHON.exists():
        pytest.fail(f"{CEILOMETER_PYTHON} missing: run tools/ceilometer_venv.sh", pytrace=False)
    names = harness.BusNames()
    workdir = tmp_path_factory.mktemp("gnocchi")
    with agent_beside_ceilometer.started(
            rabbit_url, workdir, names,
            queues=[*names.queues([HOST]),
                    *(f"{t}.{p}" for t in (CEILOMETER_TOPIC, names.legacy_topic)
                      for p in CEILOMETER_PRIORITIES)],
            exchanges=[names.nova_exchange, CEILOMETER_EXCHANGE,
                       names.control_exchange]) as started:
        gnocchi = Gnocchi(workdir, RUN)
        started.on_close(gnocchi.stop)
        # ceilometer-polling's side: it sends into `ceilometer`
        polling_transport = agent_beside_ceilometer.notification_transport(
            rabbit_url, "lifecycle-stats-polling", control_exchange=CEILOMETER_EXCHANGE)
        started.on_close(polling_transport.cleanup)
        gnocchi.start()
        gnocchi.request("POST", "/v1/archive_policy", {
            "name": POLICY, "back_window": 3600, "aggregation_methods": ["last"],
            "definition": [{"granularity": "1s", "timespan": "1 day"}]})
        # its event + meter definitions take ~40 s to load on a busy 2-core machine
        ceilometer = started.start_ceilometer(
            timeout=240, exchanges=(CEILOMETER_EXCHANGE, names.nova_exchange),
            topics=(CEILOMETER_TOPIC, names.legacy_topic), gnocchi=gnocchi,
            archive_policy=POLICY)
        agent = started.start_agent(HOST, libvirt_uri, ["messagingv2", "ceilometer"])
        yield {"agent": agent, "billing": started.billing,
               "nova": harness.Nova(started.transport, names),
               "polling": oslo_messaging.Notifier(polling_transport, "ceilometer.polling",
                                                  driver="messagingv2",
                                                  topics=[CEILOMETER_TOPIC]),
               "gnocchi": gnocchi, "ceilometer": ceilometer, "secret": started.secret,
               "workdir": workdir}


def ceilometer_polls(world, libvirt_uri: str, guest) -> int:
    """One poll by Ceilometer 27's own pollsters, sent as ceilometer-polling sends it."""
    out = world["workdir"] / "polled.json"
    done = subprocess.run(
        [str(CEILOMETER_PYTHON), str(ROOT / "tests" / "interop" / "ceilometer_pollsters.py"),
         libvirt_uri, HOST, guest.instance_id, API_FLAVOR_ID, str(out), world["secret"]],
        capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    messages = json.loads(out.read_text())["messages"]
    world["polling"].sample({}, "telemetry.polling", {"samples": messages})
    return len(messages)


def point_at(points: list, at: datetime.datetime):
    """The (timestamp, granularity, value) Gnocchi stored for the second of `at`, or None."""
    second = at.replace(microsecond=0)
    return next((p for p in points if instant(p[0]) == second), None)


def resource_of(sample: dict) -> str:
    name = sample["name"]
    return ("instance" if name == "cpu" else
            "instance_disk" if name.startswith("disk.device.") else
            "instance_network_interface")


def test_a_real_delete_ends_the_instance_in_gnocchi_with_its_final_measures(
        world, guest_factory, libvirt_uri):
    gnocchi = world["gnocchi"]
    guest, _ = guest_factory.create(paused=False)
    world["agent"].wait_for(lambda s: s.get("counters", {}).get("poller.polls", 0) >= 2, 45,
                            "polls")
    assert ceilometer_polls(world, libvirt_uri, guest) > 0
    instance_path = f"/v1/resource/instance/{guest.instance_id}"
    polled = wait_for("no instance resource from Ceilometer's polling",
                      lambda: _get_or_none(gnocchi, instance_path), 60, gnocchi,
                      world["ceilometer"])
    assert polled["flavor_id"] == API_FLAVOR_ID and polled["ended_at"] is None

    announced = world["nova"].delete_start(guest, HOST)
    time.sleep(0.1)  # nova's own gap before driver.destroy
    guest_factory.destroy(guest)
    [event] = world["billing"].wait_for_instances([guest.instance_id], 30)[guest.instance_id]
    assert event["payload"]["capture"]["kind"] == payloads.FINAL
    finals = [s for s in event["payload"]["samples"] if s["name"] in FINAL_METERS]
    assert {s["name"] for s in finals} == set(FINAL_METERS)

    ended = wait_for("the instance was not ended by delete.start",
                     lambda: _get_or_none(gnocchi, instance_path)["ended_at"], 60, gnocchi,
                     world["ceilometer"])
    for sample in finals:
        at = instant(sample["timestamp"])
        assert at <= announced < instant(ended)
        path = (f"/v1/resource/{resource_of(sample)}/{sample['resource_id']}/metric/"
                f"{sample['name']}/measures?aggregation=last&granularity=1&refresh=true")
        points = wait_for(f"no final {sample['name']} measure for {sample['resource_id']}",
                          lambda: point_at(gnocchi.get(path), at), 60, gnocchi,
                          world["ceilometer"])
        assert points[-1] == sample["volume"], (sample, points)

    wait_for("metricd did not drain", lambda: gnocchi.backlog() == 0, 60, gnocchi)
    after = gnocchi.get(instance_path)
    assert after["ended_at"] == ended  # never resurrected by our (earlier) measures
    assert after["flavor_id"] == API_FLAVOR_ID  # our samples never overwrite it with a name
    print(f"\nGnocchi: instance ended at {ended}; {len(finals)} final measures equal to "
          f"delete.samples; still ended after metricd drained")


def test_control_a_measure_after_ended_at_unends_a_resource_on_this_gnocchi(world):
    """The rule the never-resurrect claim relies on, shown on the same Gnocchi."""
    gnocchi = world["gnocchi"]
    ended = datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0)
    rid = f"lst-control-{RUN}"
    gnocchi.request("POST", "/v1/resource/generic", {
        "id": rid, "started_at": (ended - datetime.timedelta(minutes=1)).isoformat(),
        "ended_at": ended.isoformat(), "metrics": {"m": {"archive_policy_name": POLICY}}})
    path = f"/v1/resource/generic/{rid}"
    before = (ended - datetime.timedelta(seconds=5)).isoformat()
    gnocchi.request("POST", f"{path}/metric/m/measures", [{"timestamp": before, "value": 1}])
    wait_for("metricd did not drain", lambda: gnocchi.backlog() == 0, 60, gnocchi)
    assert gnocchi.get(path)["ended_at"] is not None  # earlier measure: still ended
    later = (ended + datetime.timedelta(seconds=5)).isoformat()
    gnocchi.request("POST", f"{path}/metric/m/measures", [{"timestamp": later, "value": 2}])
    wait_for("a later measure did not un-end the resource",
             lambda: gnocchi.get(path)["ended_at"] is None, 60, gnocchi)


def _get_or_none(gnocchi: Gnocchi, path: str):
    import urllib.error

    try:
        return gnocchi.get(path)
    except urllib.error.HTTPError as exc:
        if exc.code == 404:
            return None
        raise
