"""The Ceilometer side of the interop tier: consumers, the stock notification agent, and
the subprocess that runs Ceilometer's code over captured output (all in .ceilometer-venv)."""
from __future__ import annotations

import json
import os
import pathlib
import signal
import subprocess
import threading
import time
import uuid

import msgpack
import oslo_messaging

ROOT = pathlib.Path(__file__).resolve().parents[2]
CEILOMETER_PYTHON = ROOT / ".ceilometer-venv" / "bin" / "python"
DEFINITIONS = ROOT / "etc" / "ceilometer" / "meters.d"
RUN = uuid.uuid4().hex[:8]
CEILOMETER_EXCHANGE = f"lst-ceilometer-{RUN}"  # the real default is `ceilometer`
CEILOMETER_TOPIC = f"lst-ceilometer-notifications-{RUN}"
POLLING_POOL = f"lst-ceilo-pool-{RUN}"


class PollingConsumer:
    """Reads telemetry.polling as Ceilometer's notification agent does (priority SAMPLE)."""

    def __init__(self, transport):
        self.messages: list[dict] = []
        self._cond = threading.Condition()
        target = oslo_messaging.Target(exchange=CEILOMETER_EXCHANGE, topic=CEILOMETER_TOPIC)
        self._server = oslo_messaging.get_notification_listener(
            transport, [target], [self], executor="threading", pool=POLLING_POOL)
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


# The samples Ceilometer's stock meters.yaml makes of any compute.instance.* payload, ours too.
STOCK_FROM_DELETE = ("memory", "vcpus", "disk.root.size", "disk.ephemeral.size")
# Ceilometer's own meters.yaml: its compute.instance.* definitions fire on delete.samples too.
STOCK_DEFINITIONS = next((ROOT / ".ceilometer-venv" / "lib").glob(
    "python3*/site-packages/ceilometer/data/meters.d"), None)
CEILOMETER_PRIORITIES = ("audit", "critical", "debug", "error", "info", "sample", "warn")


class CeilometerAgent:
    """The stock `ceilometer-agent-notification`, publishing every sample to a JSON file, or
    with gnocchi= (a gnocchi_service.Gnocchi) also to Gnocchi through Ceilometer's gnocchi
    publisher and stock gnocchi_resources.yaml (its event pipeline ends deleted instances)."""

    def __init__(self, workdir: pathlib.Path, rabbit_url: str, secret: str, *,
                 exchanges=(CEILOMETER_EXCHANGE,), topics=(CEILOMETER_TOPIC,), gnocchi=None,
                 archive_policy: str | None = None, definitions=(DEFINITIONS, STOCK_DEFINITIONS)):
        """exchanges, topics, definitions: () leaves Ceilometer's defaults."""
        self.samples = workdir / "ceilometer-samples.json"
        publishers = [f"file://{self.samples}?json"]
        pipelines = ["meter"]
        credentials = ""
        if gnocchi is not None:
            options = "enable_filter_project=false" + (
                f"&archive_policy={archive_policy}" if archive_policy else "")
            publishers.append(f"gnocchi://?{options}")
            pipelines.append("event")
            credentials = ("[service_credentials]\nauth_type = gnocchi-basic\nuser = admin\n"
                           f"endpoint = {gnocchi.url}\n")
            (workdir / "event_pipeline.yaml").write_text(
                "sources:\n  - name: all_events\n    events: ['*']\n    sinks: [to_gnocchi]\n"
                "sinks:\n  - name: to_gnocchi\n"
                f"    publishers: ['gnocchi://?{options}']\n")
        (workdir / "pipeline.yaml").write_text(
            "sources:\n  - name: all\n    meters: ['*']\n    sinks: [out]\n"
            "sinks:\n  - name: out\n    publishers:\n"
            + "".join(f"      - '{p}'\n" for p in publishers))
        self.config = workdir / "ceilometer.conf"
        lines = [
            "[DEFAULT]", f"transport_url = {rabbit_url}",
            f"pipeline_cfg_file = {workdir / 'pipeline.yaml'}",
            f"event_pipeline_cfg_file = {workdir / 'event_pipeline.yaml'}",
            f"log_file = {workdir / 'ceilometer-agent.log'}",
            "[notification]", "workers = 1",
            *(f"notification_control_exchanges = {e}" for e in exchanges),
            *(f"pipelines = {p}" for p in pipelines),
            "[meter]", *(f"meter_definitions_dirs = {d}" for d in definitions),
            "[oslo_messaging_notifications]",
            *([f"topics = {','.join(topics)}"] if topics else []),  # a ListOpt
            "[publisher]", f"telemetry_secret = {secret}"]
        self.config.write_text("\n".join(lines) + "\n" + credentials)
        self.log = workdir / "ceilometer-agent.log"
        if gnocchi is not None:  # Ceilometer's resource types, as a deployment runs it once
            done = subprocess.run(
                [str(CEILOMETER_PYTHON.with_name("ceilometer-upgrade")), "--config-file",
                 str(self.config), "--retry", "3"], capture_output=True, text=True, timeout=180)
            assert done.returncode == 0, done.stderr[-3000:] + self.log_tail()
        self.proc = subprocess.Popen(
            [str(CEILOMETER_PYTHON.with_name("ceilometer-agent-notification")),
             "--config-file", str(self.config)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        self.topics = tuple(topics) or ("notifications",)

    def wait_listening(self, amqp: str, timeout: float = 60.0) -> None:
        """Its queue exists once it listens; a sample sent before that would be dropped."""
        import kombu

        deadline = time.monotonic() + timeout
        with kombu.Connection(amqp, connect_timeout=5) as conn:
            while time.monotonic() < deadline:
                assert self.proc.poll() is None, f"ceilometer agent exited: {self.log_tail()}"
                try:
                    for topic in self.topics:
                        conn.channel().queue_declare(f"{topic}.sample", passive=True)
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
