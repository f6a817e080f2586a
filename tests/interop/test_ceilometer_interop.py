"""Interop: the pinned Ceilometer (tools/ceilometer_venv.sh) reads the agent's real output.

A real QEMU guest is deleted as nova deletes it (delete.start on the real broker, then destroy)
while the real `lifecycle-stats-agent` publishes through four conduits at once: messagingv2
(delete.samples), ceilometer (telemetry.polling), udp (to a socket of ours) and file. Everything
they produced goes to a subprocess in .ceilometer-venv that runs Ceilometer's own notification
meters with our etc/ceilometer YAML, its telemetry.polling endpoint and its verify_signature.
A real `ceilometer-agent-notification` process (stock pipeline code, file publisher) also
consumes both bus conduits from the broker, configured only with the run's exchange and topic.
Every sample must come back with name, type, unit, volume, resource_id, user/project ids,
timestamp and metadata intact. Bus names are unique per run and removed afterwards.
"""
from __future__ import annotations

import datetime
import json
import socket
import subprocess
import time

import pytest

from lifecycle_stats.publishing import meters, payloads
from tests.integration import harness
from tests.interop import agent_beside_ceilometer
from tests.interop.stock_ceilometer import (
    CEILOMETER_EXCHANGE, CEILOMETER_PRIORITIES, CEILOMETER_PYTHON, CEILOMETER_TOPIC,
    POLLING_POOL, RUN, STOCK_FROM_DELETE, PollingConsumer, read_datagrams, read_file,
    run_ceilometer,
)

pytestmark = [pytest.mark.integration, pytest.mark.interop, pytest.mark.timeout(240)]

HOST = f"lst-interop-{RUN}"
CORE = ("name", "type", "unit", "volume", "resource_id", "user_id", "project_id")


@pytest.fixture(scope="module")
def ceilometer_python():
    if not CEILOMETER_PYTHON.exists():
        pytest.fail(f"{CEILOMETER_PYTHON} missing: run tools/ceilometer_venv.sh", pytrace=False)
    return CEILOMETER_PYTHON


@pytest.fixture(scope="module")
def udp_socket():
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.settimeout(10)
    yield sock
    sock.close()


@pytest.fixture(scope="module")
def world(rabbit_url, libvirt_uri, udp_socket, tmp_path_factory):
    """The agent with four conduits, nova, billing and a Ceilometer-side consumer."""
    names = harness.BusNames()
    # delete.samples go where Ceilometer listens (doc/ceilometer.md: control_exchange = ceilometer)
    names.control_exchange, names.samples_topic = CEILOMETER_EXCHANGE, CEILOMETER_TOPIC
    workdir = tmp_path_factory.mktemp("interop")
    with agent_beside_ceilometer.started(
            rabbit_url, workdir, names,
            queues=[*names.queues([HOST]), POLLING_POOL,
                    *(f"{CEILOMETER_TOPIC}.{p}" for p in CEILOMETER_PRIORITIES)],
            exchanges=[names.nova_exchange, CEILOMETER_EXCHANGE]) as started:
        ceilometer = started.start_ceilometer()
        polling = PollingConsumer(started.transport)
        started.on_close(polling.stop)
        agent = started.start_agent(
            HOST, libvirt_uri, ["messagingv2", "ceilometer", "udp", "file"],
            udp_emitter={"target": f"udp://127.0.0.1:{udp_socket.getsockname()[1]}"},
            file_emitter={"path": str(workdir / "samples.jsonl")})
        yield {"agent": agent, "billing": started.billing, "polling": polling,
               "secret": started.secret, "nova": harness.Nova(started.transport, names),
               "file": workdir / "samples.jsonl", "workdir": workdir, "ceilometer": ceilometer}


# Ceilometer's stock `compute.instance.(?!create.start|update).*` definitions fire on both the
# delete.samples and the final compute.instance.exists that follows it (as on nova's exists)
STOCK_FROM_DELETE_AND_EXISTS = STOCK_FROM_DELETE * 2


def instant(text: str) -> datetime.datetime:
    return datetime.datetime.fromisoformat(text)


def assert_same_sample(ours: dict, theirs: dict, *, metadata: bool) -> None:
    assert {k: theirs[k] for k in CORE} == {k: ours[k] for k in CORE}, (ours, theirs)
    assert type(theirs["volume"]) is type(ours["volume"])
    assert instant(theirs["timestamp"]) == instant(ours["timestamp"])
    if metadata:
        assert theirs["resource_metadata"] == ours["resource_metadata"]


def delete_a_guest(world, guest_factory, udp_socket) -> dict:
    """Delete a running guest as nova does; collect every conduit's output."""
    guest, _ = guest_factory.create(paused=False)
    world["agent"].wait_for(lambda s: s.get("counters", {}).get("poller.polls", 0) >= 2, 45,
                            "polls")
    announced = world["nova"].delete_start(guest, HOST)
    time.sleep(0.1)  # nova's own gap before driver.destroy
    guest_factory.destroy(guest)
    [event] = world["billing"].wait_for_instances([guest.instance_id], 20)[guest.instance_id]
    assert event["payload"]["capture"]["kind"] == payloads.FINAL, event["payload"]["capture"]
    count = len(event["payload"]["samples"])
    [polling] = world["polling"].wait(20)
    return {"announced": announced, "event": event, "ours": event["payload"]["samples"],
            "polling": polling, "udp": read_datagrams(udp_socket, count),
            "file": read_file(world["file"], count)}


def as_ceilometer_gets_it(event: dict) -> dict:
    """The dict oslo.messaging's batch dispatcher hands Ceilometer's endpoints."""
    return {"ctxt": {}, "publisher_id": event["publisher_id"], "event_type": event["event_type"],
            "payload": event["payload"], "metadata": {"message_id": event["envelope_id"],
                                                      "timestamp": event["timestamp"]}}


def check_meter_messages(got: dict, ours: list[dict]) -> None:
    """telemetry.polling, udp, file: rebuilt by TelemetryIpc with every field and our ids."""
    by_id = {s["message_id"]: s for s in ours}
    for name in ("udp", "file"):
        assert len(got[name]) == len(ours), name
        for theirs in got[name]:
            assert_same_sample(by_id[theirs["id"]], theirs, metadata=True)
    [rebuilt] = got["telemetry"]
    assert [s["id"] for s in rebuilt] == [s["message_id"] for s in ours]  # our ids kept
    for mine, theirs in zip(ours, rebuilt):
        assert_same_sample(mine, theirs, metadata=True)


def check_yaml_path(from_yaml: list[dict], ours: list[dict], event: dict) -> None:
    """delete.samples through our YAML: every sample, instance-level metadata only
    (Ceilometer evaluates `metadata:` once per notification)."""
    assert len(from_yaml) == len(ours)
    for theirs in from_yaml:
        mine = next(s for s in ours if (s["name"], s["resource_id"]) == (
            theirs["name"], theirs["resource_id"]))
        assert_same_sample(mine, theirs, metadata=False)
        meta = theirs["resource_metadata"]
        assert meta["event_type"] == payloads.DELETE_SAMPLES
        assert meta["host"] == mine["resource_metadata"]["host"] != HOST  # hashed hostId
        assert meta["instance_host"] == HOST
        assert meta["flavor"] == mine["resource_metadata"]["flavor"]
        assert meta["notification_message_id"] == event["payload"]["message_id"]


def check_agent_output(published: list[dict], ours: list[dict], event: dict,
                       announced: datetime.datetime) -> None:
    """What the real notification agent published, split by the path it came through."""
    by_id = {s["message_id"]: s for s in ours}
    paths: dict[str, list[dict]] = {"telemetry": [], "yaml": [], "stock": []}
    for theirs in published:
        path = ("telemetry" if theirs["id"] in by_id else
                "yaml" if "capture_kind" in theirs["resource_metadata"] else "stock")
        paths[path].append(theirs)
    assert len(paths["telemetry"]) == len(ours)
    for theirs in paths["telemetry"]:
        assert_same_sample(by_id[theirs["id"]], theirs, metadata=True)
    check_yaml_path(paths["yaml"], ours, event)
    # the stock definitions' samples: our names and units, stamped with the envelope's time
    assert sorted(s["name"] for s in paths["stock"]) == sorted(STOCK_FROM_DELETE_AND_EXISTS)
    for theirs in paths["stock"]:
        mine = next(s for s in ours if s["name"] == theirs["name"])
        assert (theirs["unit"], theirs["resource_id"]) == (mine["unit"], mine["resource_id"])
        assert instant(theirs["timestamp"]) <= announced


def test_a_real_delete_reaches_ceilometer_intact_on_every_conduit(
        world, guest_factory, udp_socket, ceilometer_python):
    out = delete_a_guest(world, guest_factory, udp_socket)
    ours, event, announced = out["ours"], out["event"], out["announced"]
    got = run_ceilometer(ceilometer_python, {
        "secret": world["secret"], "delete_samples": [as_ceilometer_gets_it(event)],
        "telemetry": [out["polling"]], "udp": out["udp"], "file": out["file"]},
        world["workdir"])
    assert got["ceilometer_version"] == "27.0.0"
    assert (out["polling"]["event_type"], out["polling"]["publisher_id"]) == (
        "telemetry.polling", f"lifecycle-stats.{HOST}")
    check_meter_messages(got, ours)
    [from_yaml] = got["delete_samples"]
    check_yaml_path(from_yaml, ours, event)
    # Ceilometer's verify_signature accepts every signed dict and rejects tampered copies
    for name, result in got["signatures"].items():
        assert result["valid"] and all(result["valid"]), name
        assert not any(result["tampered_valid"]), name
    published = world["ceilometer"].published(2 * len(ours) + len(STOCK_FROM_DELETE_AND_EXISTS))
    check_agent_output(published, ours, event, announced)
    # never resurrect: stamped no later than nova's announcement, which precedes the moment
    # Ceilometer's Gnocchi publisher sets ended_at (the stock definitions use the envelope's)
    assert all(instant(s["timestamp"]) <= announced for s in ours)
    assert instant(event["timestamp"]) <= announced
    print(f"\n{len(ours)} samples; Ceilometer rebuilt telemetry/udp/file/yaml "
          f"{len(got['telemetry'][0])}/{len(got['udp'])}/{len(got['file'])}/{len(from_yaml)}; "
          f"ceilometer-agent-notification published {len(published)}; "
          f"meters: {sorted({s['name'] for s in ours})}")


def test_ceilometer_libvirt_inspector_imports_in_the_interop_venv(ceilometer_python):
    """Issue 14 benchmarks against Ceilometer's real LibvirtInspector from this venv."""
    done = subprocess.run([str(ceilometer_python), "-W", "ignore", "-c",
                           "from ceilometer.compute.virt.libvirt.inspector import "
                           "LibvirtInspector; import libvirt; print(libvirt.getVersion())"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr[-2000:]
    assert int(done.stdout.strip()) >= 9_000_000


def test_poll_cycle_baseline_worker_runs_ceilometers_inspector(ceilometer_python):
    """benchmarks/poll_cycle.py's baseline worker polls with the real LibvirtInspector: the test
    driver's domain is read, an unknown uuid is skipped as Ceilometer skips it, a bad request
    is a clear error. Figures are printed by the benchmark, never asserted."""
    from benchmarks import _ceilometer_inspector as baseline
    test_domain = {"id": "6695eb01-f6a4-8304-79aa-97f2502e193f", "name": "test",
                   "instance_name": "test"}  # libvirt's test:///default ships this domain
    inspector = baseline.CeilometerInspector("test:///default", str(ceilometer_python))
    try:
        assert inspector.versions["ceilometer"] and inspector.versions["libvirt"] >= 9_000_000
        cycle = inspector.cycle([test_domain, {"id": "00000000-0000-4000-8000-00000000dead"}])
        assert (cycle.instances, cycle.read) == (2, 1)
        assert cycle.errors == {"InstanceNotFoundException": 1}
        with pytest.raises(baseline.WorkerError, match="KeyError"):
            inspector.cycle([{"name": "no id"}])
        assert inspector.cycle([test_domain]).read == 1  # the worker survives a bad request
    finally:
        inspector.close()


def test_catalogue_matches_ceilometers_own_compute_pollsters(ceilometer_python):
    """Every non-legacy row has a Ceilometer pollster of that name, type and unit; every
    Ceilometer libvirt pollster we do not publish is one doc/ceilometer.md explains."""
    script = ("import json, importlib.metadata as md\n"
              "out = {}\n"
              "for ep in md.entry_points(group='ceilometer.poll.compute'):\n"
              "    cls = ep.load()\n"
              "    out[ep.name] = [cls.sample_type, cls.sample_unit]\n"
              "print(json.dumps(out))\n")
    done = subprocess.run([str(ceilometer_python), "-W", "ignore", "-c", script],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr[-2000:]
    theirs = {name: tuple(v) for name, v in json.loads(done.stdout).items()}
    ours = {m.name: (m.type, m.unit) for m in meters.CATALOGUE if not m.legacy}
    assert {name: theirs.get(name) for name in ours} == ours
    assert set(theirs) - set(ours) == {"network.incoming.bytes.delta",
                                       "network.outgoing.bytes.delta",
                                       "network.incoming.bytes.rate",
                                       "network.outgoing.bytes.rate"}
    assert not {m.name for m in meters.CATALOGUE if m.legacy} & set(theirs)
