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
import os
import pathlib
import secrets
import signal
import socket
import subprocess
import threading
import time
import uuid

import msgpack
import oslo_messaging
import pytest
from oslo_config import cfg

from lifecycle_stats.publishing import meters, payloads
from tests.integration import harness
from tests.integration.conftest import amqp_url

pytestmark = [pytest.mark.integration, pytest.mark.interop, pytest.mark.timeout(240)]

ROOT = pathlib.Path(__file__).resolve().parents[2]
CEILOMETER_PYTHON = ROOT / ".ceilometer-venv" / "bin" / "python"
DEFINITIONS = ROOT / "etc" / "ceilometer" / "meters.d"
RUN = uuid.uuid4().hex[:8]
HOST = f"lst-interop-{RUN}"
CEILOMETER_EXCHANGE = f"lst-ceilometer-{RUN}"  # the real default is `ceilometer`
CEILOMETER_TOPIC = f"lst-ceilometer-notifications-{RUN}"
CORE = ("name", "type", "unit", "volume", "resource_id", "user_id", "project_id")


class PollingConsumer:
    """Reads telemetry.polling as Ceilometer's notification agent does (priority SAMPLE)."""

    def __init__(self, transport):
        self.messages: list[dict] = []
        self._cond = threading.Condition()
        target = oslo_messaging.Target(exchange=CEILOMETER_EXCHANGE, topic=CEILOMETER_TOPIC)
        self._server = oslo_messaging.get_notification_listener(
            transport, [target], [self], executor="threading", pool=f"lst-ceilo-pool-{RUN}")
        self._server.start()

    def sample(self, ctxt, publisher_id, event_type, payload, metadata):
        with self._cond:  # the dict oslo.messaging's batch dispatcher hands Ceilometer
            self.messages.append({"ctxt": ctxt, "publisher_id": publisher_id,
                                  "event_type": event_type, "payload": payload,
                                  "metadata": dict(metadata)})
            self._cond.notify_all()

    def wait(self, timeout: float) -> list[dict]:
        with self._cond:
            self._cond.wait_for(lambda: self.messages, timeout)
            return list(self.messages)

    def stop(self):
        self._server.stop()
        self._server.wait()


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
    # delete.samples go where Ceilometer listens (README: control_exchange = ceilometer)
    names.control_exchange, names.samples_topic = CEILOMETER_EXCHANGE, CEILOMETER_TOPIC
    workdir = tmp_path_factory.mktemp("interop")
    secret = secrets.token_hex(16)
    conf = cfg.ConfigOpts()
    conf([], project="lifecycle-stats-interop", default_config_files=[])
    transport = oslo_messaging.get_notification_transport(conf, url=rabbit_url)
    billing = polling = agent = ceilometer = None
    try:
        ceilometer = CeilometerAgent(workdir, rabbit_url, secret)
        ceilometer.wait_listening(amqp_url(rabbit_url))
        billing = harness.BillingConsumer(transport, names)
        polling = PollingConsumer(transport)
        agent = harness.AgentProcess(
            workdir, host=HOST, transport_url=rabbit_url, names=names,
            libvirt_uri=libvirt_uri, poll_interval=1.0, extra={
                "oslo_messaging_notifications": {
                    "driver": ["messagingv2", "ceilometer", "udp", "file"]},
                "ceilometer_emitter": {"exchange": CEILOMETER_EXCHANGE,
                                       "topics": CEILOMETER_TOPIC},
                "udp_emitter": {"target": f"udp://127.0.0.1:{udp_socket.getsockname()[1]}"},
                "file_emitter": {"path": str(workdir / "samples.jsonl")},
                "publisher": {"telemetry_secret": secret},
            })
        agent.start()
        yield {"agent": agent, "billing": billing, "polling": polling, "secret": secret,
               "nova": harness.Nova(transport, names), "file": workdir / "samples.jsonl",
               "workdir": workdir, "ceilometer": ceilometer}
    finally:
        try:
            if agent is not None:
                agent.stop(timeout=20)
                agent.kill()
            if ceilometer is not None:
                ceilometer.stop()
            for consumer in (billing, polling):
                if consumer is not None:
                    consumer.stop()
            transport.cleanup()
        finally:
            harness.delete_queues(
                amqp_url(rabbit_url),
                [*names.queues([HOST]), f"lst-ceilo-pool-{RUN}",
                 *(f"{CEILOMETER_TOPIC}.{p}" for p in CEILOMETER_PRIORITIES)],
                [names.nova_exchange, CEILOMETER_EXCHANGE])


# Ceilometer's own meters.yaml: its compute.instance.* definitions fire on delete.samples too.
STOCK_DEFINITIONS = next((ROOT / ".ceilometer-venv" / "lib").glob(
    "python3*/site-packages/ceilometer/data/meters.d"), None)
CEILOMETER_PRIORITIES = ("audit", "critical", "debug", "error", "info", "sample", "warn")


class CeilometerAgent:
    """The stock `ceilometer-agent-notification`, publishing every sample to a JSON file."""

    def __init__(self, workdir: pathlib.Path, rabbit_url: str, secret: str):
        self.samples = workdir / "ceilometer-samples.json"
        (workdir / "pipeline.yaml").write_text(
            "sources:\n  - name: all\n    meters: ['*']\n    sinks: [to_file]\n"
            "sinks:\n  - name: to_file\n"
            f"    publishers: ['file://{self.samples}?json']\n")
        self.config = workdir / "ceilometer.conf"
        self.config.write_text(
            f"[DEFAULT]\ntransport_url = {rabbit_url}\n"
            f"pipeline_cfg_file = {workdir / 'pipeline.yaml'}\n"
            f"log_file = {workdir / 'ceilometer-agent.log'}\n"
            f"[notification]\nnotification_control_exchanges = {CEILOMETER_EXCHANGE}\n"
            "workers = 1\npipelines = meter\n"
            f"[meter]\nmeter_definitions_dirs = {DEFINITIONS}\n"
            f"meter_definitions_dirs = {STOCK_DEFINITIONS}\n"
            f"[oslo_messaging_notifications]\ntopics = {CEILOMETER_TOPIC}\n"
            f"[publisher]\ntelemetry_secret = {secret}\n")
        self.log = workdir / "ceilometer-agent.log"
        self.proc = subprocess.Popen(
            [str(CEILOMETER_PYTHON.with_name("ceilometer-agent-notification")),
             "--config-file", str(self.config)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)

    def wait_listening(self, amqp: str, timeout: float = 60.0) -> None:
        """Its queue exists once it listens; a sample sent before that would be dropped."""
        import kombu

        deadline = time.monotonic() + timeout
        with kombu.Connection(amqp, connect_timeout=5) as conn:
            while time.monotonic() < deadline:
                assert self.proc.poll() is None, f"ceilometer agent exited: {self.log_tail()}"
                try:
                    conn.channel().queue_declare(f"{CEILOMETER_TOPIC}.sample", passive=True)
                    return
                except Exception:  # not declared yet (the broker closes the channel)
                    time.sleep(0.2)
        raise AssertionError(f"ceilometer agent not listening after {timeout} s: "
                             f"{self.log_tail()}")

    def published(self, count: int, timeout: float = 30.0) -> list[dict]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            lines = self.samples.read_text().splitlines() if self.samples.exists() else []
            if len(lines) >= count:
                return [json.loads(line) for line in lines]
            time.sleep(0.2)
        raise AssertionError(f"ceilometer published fewer than {count} samples: "
                             f"{self.log_tail()}")

    def log_tail(self) -> str:
        return self.log.read_text()[-3000:] if self.log.exists() else "(no log)"

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)  # its worker processes too
                self.proc.wait(10)


STOCK_FROM_DELETE = ("memory", "vcpus", "disk.root.size", "disk.ephemeral.size")


def read_datagrams(sock, count: int) -> list[dict]:
    return [msgpack.unpackb(sock.recv(65535), raw=False) for _ in range(count)]


def read_file(path: pathlib.Path, count: int, timeout: float = 10.0) -> list[dict]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        lines = path.read_text().splitlines() if path.exists() else []
        if len(lines) >= count:
            return [json.loads(line) for line in lines]
        time.sleep(0.1)
    raise AssertionError(f"{path}: fewer than {count} lines after {timeout} s")


def run_ceilometer(python, captured: dict, workdir: pathlib.Path) -> dict:
    src, dst = workdir / "captured.json", workdir / "ceilometer.json"
    src.write_text(json.dumps(captured))
    done = subprocess.run([str(python), str(ROOT / "tests" / "interop" / "ceilometer_side.py"),
                           str(src), str(dst), str(DEFINITIONS)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(dst.read_text())


def instant(text: str) -> datetime.datetime:
    return datetime.datetime.fromisoformat(text)


def assert_same_sample(ours: dict, theirs: dict, *, metadata: bool) -> None:
    assert {k: theirs[k] for k in CORE} == {k: ours[k] for k in CORE}, (ours, theirs)
    assert type(theirs["volume"]) is type(ours["volume"])
    assert instant(theirs["timestamp"]) == instant(ours["timestamp"])
    if metadata:
        assert theirs["resource_metadata"] == ours["resource_metadata"]


def test_a_real_delete_reaches_ceilometer_intact_on_every_conduit(
        world, guest_factory, udp_socket, ceilometer_python):
    guest, _ = guest_factory.create(paused=False)
    agent = world["agent"]
    agent.wait_for(lambda s: s.get("counters", {}).get("poller.polls", 0) >= 2, 45, "polls")
    announced = world["nova"].delete_start(guest, HOST)
    time.sleep(0.1)  # nova's own gap before driver.destroy
    guest_factory.destroy(guest)

    events = world["billing"].wait_for_instances([guest.instance_id], 20)
    [event] = events[guest.instance_id]
    ours = event["payload"]["samples"]
    assert event["payload"]["capture"]["kind"] == payloads.FINAL, event["payload"]["capture"]
    [polling] = world["polling"].wait(20)
    udp = read_datagrams(udp_socket, len(ours))
    lines = read_file(world["file"], len(ours))
    delete_message = {"ctxt": {}, "publisher_id": event["publisher_id"],
                      "event_type": event["event_type"], "payload": event["payload"],
                      "metadata": {"message_id": event["envelope_id"],
                                   "timestamp": event["timestamp"]}}
    got = run_ceilometer(ceilometer_python, {
        "secret": world["secret"], "delete_samples": [delete_message], "telemetry": [polling],
        "udp": udp, "file": lines}, world["workdir"])

    assert got["ceilometer_version"] == "27.0.0"
    # telemetry.polling, as Ceilometer's own polling agent sends it
    assert (polling["event_type"], polling["publisher_id"]) == (
        "telemetry.polling", f"lifecycle-stats.{HOST}")
    by_id = {s["message_id"]: s for s in ours}
    for name in ("udp", "file"):
        rebuilt = got[name]
        assert len(rebuilt) == len(ours), name
        for theirs in rebuilt:
            assert_same_sample(by_id[theirs["id"]], theirs, metadata=True)
    [rebuilt] = got["telemetry"]
    assert [s["id"] for s in rebuilt] == [s["message_id"] for s in ours]  # our ids kept
    for mine, theirs in zip(ours, rebuilt):
        assert_same_sample(mine, theirs, metadata=True)

    # delete.samples through Ceilometer's notification meters and our YAML: every sample,
    # instance-level metadata only (Ceilometer evaluates `metadata:` once per notification)
    [from_yaml] = got["delete_samples"]
    assert len(from_yaml) == len(ours)
    for mine, theirs in zip(ours, from_yaml):
        assert_same_sample(mine, theirs, metadata=False)
        meta = theirs["resource_metadata"]
        assert meta["host"] == mine["resource_metadata"]["host"] != HOST  # hashed hostId
        assert meta["instance_host"] == HOST
        assert meta["flavor"] == mine["resource_metadata"]["flavor"]
        assert meta["notification_message_id"] == event["payload"]["message_id"]

    # Ceilometer's verify_signature accepts every signed dict and rejects tampered copies
    for name, result in got["signatures"].items():
        assert result["valid"] and all(result["valid"]), name
        assert not any(result["tampered_valid"]), name

    # the stock notification agent, from the broker: telemetry.polling with every field and our
    # ids; delete.samples through our YAML with instance-level metadata
    published = world["ceilometer"].published(2 * len(ours) + len(STOCK_FROM_DELETE))
    by_path = {"telemetry": [], "yaml": [], "stock": []}
    for theirs in published:
        meta = theirs["resource_metadata"]
        path = ("telemetry" if theirs["id"] in by_id else
                "yaml" if "capture_kind" in meta else "stock")
        by_path[path].append(theirs)
    assert len(by_path["telemetry"]) == len(by_path["yaml"]) == len(ours)
    for theirs in by_path["telemetry"]:
        assert_same_sample(by_id[theirs["id"]], theirs, metadata=True)
    # the stock definitions' extra samples: same names and units as ours, never stamped after
    # nova's announcement (they take the envelope's time)
    assert sorted(s["name"] for s in by_path["stock"]) == sorted(STOCK_FROM_DELETE)
    for theirs in by_path["stock"]:
        mine = next(s for s in ours if s["name"] == theirs["name"])
        assert (theirs["unit"], theirs["resource_id"]) == (mine["unit"], mine["resource_id"])
        assert instant(theirs["timestamp"]) <= announced
    for theirs in by_path["yaml"]:
        assert theirs["resource_metadata"]["event_type"] == payloads.DELETE_SAMPLES
        mine = next(s for s in ours if (s["name"], s["resource_id"]) == (
            theirs["name"], theirs["resource_id"]))
        assert_same_sample(mine, theirs, metadata=False)

    # never resurrect: stamped no later than nova's announcement, which precedes the moment
    # Ceilometer's Gnocchi publisher sets ended_at
    for sample in ours:
        assert instant(sample["timestamp"]) <= announced
    assert instant(event["timestamp"]) <= announced  # stock meters.yaml stamps with the envelope
    print(f"\n{len(ours)} samples; telemetry/udp/file/yaml rebuilt by Ceilometer: "
          f"{len(rebuilt)}/{len(got['udp'])}/{len(got['file'])}/{len(from_yaml)}; "
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


def test_catalogue_matches_ceilometers_own_compute_pollsters(ceilometer_python):
    """Every non-legacy row has a Ceilometer pollster of that name, type and unit; every
    Ceilometer libvirt pollster we do not publish is one the README explains."""
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
