"""Deployed as an operator deploys it: the built wheel installed into a fresh venv, a config
written from the generated sample, the agent started with the shipped unit's ExecStart argv
(paths relocated into a temporary root; this machine's PID 1 is not systemd, so the unit's
Type=notify protocol is played by the test: it owns NOTIFY_SOCKET). Then a real delete on the
real libvirtd and broker, a scrape, SIGHUP, and SIGTERM within the unit's TimeoutStopSec.
"""
from __future__ import annotations

import grp
import json
import os
import pathlib
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid

import oslo_messaging
import pytest
from oslo_config import cfg

from tests.integration import harness, prom
from tests.integration.conftest import amqp_url
from tests.support.systemd_unit import UNIT, exec_start_argv, unit_settings

pytestmark = [pytest.mark.integration, pytest.mark.timeout(420)]

ROOT = pathlib.Path(__file__).resolve().parents[2]
SAMPLE = ROOT / "etc" / "lifecycle-stats" / "lifecycle-stats.conf.sample"
INSTALL_PREFIX = "/opt/lifecycle-stats"  # the venv doc/operating.md installs into
RUN = uuid.uuid4().hex[:8]
HOST = f"lst-deploy-{RUN}"


def run(argv, **kw) -> str:
    result = subprocess.run(argv, capture_output=True, text=True, timeout=300, **kw)
    assert result.returncode == 0, f"{argv}: {result.stdout[-2000:]}{result.stderr[-2000:]}"
    return result.stdout


@pytest.fixture(scope="module")
def venv(tmp_path_factory):
    """`pip wheel --no-deps .`, then a fresh venv with that wheel (dependencies come from
    pip's cache / the configured indexes, as an operator's install would)."""
    root = tmp_path_factory.mktemp("deploy")
    try:
        run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w",
             str(root / "wheels"), str(ROOT)])
        [wheel] = (root / "wheels").glob("lifecycle_stats-*.whl")
        run([sys.executable, "-m", "venv", str(root / "venv")])
        run([str(root / "venv/bin/pip"), "install", "-q", str(wheel)], cwd=root)
        yield root / "venv"
    finally:
        shutil.rmtree(root, ignore_errors=True)  # ~100 MB; pytest keeps old tmp dirs


def set_option(text: str, section: str, key: str, value: str) -> str:
    """Uncomment-and-set `#key = default` inside [section], as an operator edits the sample."""
    start = re.search(rf"^\[{section}\]$", text, flags=re.M).end()
    end = text.find("\n[", start)
    end = len(text) if end < 0 else end
    body, count = re.subn(rf"^#{re.escape(key)} =.*$", f"{key} = {value}",
                          text[start:end], count=1, flags=re.M)
    assert count == 1, f"no #{key} in [{section}] of the sample"
    return text[:start] + body + text[end:]


def operator_config(root: pathlib.Path, names: harness.BusNames, rabbit_url: str,
                    libvirt_uri: str, port: int) -> pathlib.Path:
    text = SAMPLE.read_text()
    for section, key, value in (
            ("DEFAULT", "host", HOST), ("DEFAULT", "state_path", str(root / "state")),
            ("DEFAULT", "log_file", str(root / "agent.log")), ("DEFAULT", "debug", "true"),
            ("DEFAULT", "control_exchange", names.control_exchange),
            ("DEFAULT", "status_interval", "0.5"), ("libvirt", "uri", libvirt_uri),
            ("poller", "interval", "2"), ("metrics", "port", str(port)),
            ("notification_listener", "transport_url", rabbit_url),
            ("notification_listener", "exchange", names.nova_exchange),
            ("notification_listener", "legacy_topic", names.legacy_topic),
            ("notification_listener", "versioned_topic", names.versioned_topic),
            ("oslo_messaging_notifications", "transport_url", rabbit_url),
            ("oslo_messaging_notifications", "driver", "messagingv2"),
            ("oslo_messaging_notifications", "topics", names.samples_topic),
            # its own hook socket, never /run/lifecycle-stats/hook.sock (a compute host's)
            ("hook", "socket_path", str(root / "hook.sock")),
            ("hook", "socket_group", grp.getgrgid(os.getegid()).gr_name)):
        text = set_option(text, section, key, value)
    path = root / "etc/lifecycle-stats/lifecycle-stats.conf"
    path.parent.mkdir(parents=True)
    path.write_text(text)
    path.chmod(0o640)
    return path


class NotifySocket:
    """What systemd does for Type=notify: a datagram socket whose messages we read."""

    def __init__(self, path: pathlib.Path) -> None:
        self.path = str(path)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(self.path)
        self.sock.settimeout(1.0)

    def wait_for(self, state: str, timeout: float) -> list[str]:
        seen, deadline = [], time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                seen.append(self.sock.recv(4096).decode())
            except socket.timeout:
                continue
            if state in seen:
                return seen
        raise AssertionError(f"no {state} from the agent within {timeout} s (got {seen})")


@pytest.fixture
def bus(rabbit_url):
    names = harness.BusNames()
    conf = cfg.ConfigOpts()
    conf([], project="lifecycle-stats-deploy", default_config_files=[])
    transport = oslo_messaging.get_notification_transport(conf, url=rabbit_url)
    billing = harness.BillingConsumer(transport, names)
    try:
        yield names, billing, harness.Nova(transport, names)
    finally:
        try:
            billing.stop()
            transport.cleanup()
        finally:
            harness.delete_queues(amqp_url(rabbit_url), names.queues([HOST]),
                                  [names.nova_exchange, names.control_exchange])


def test_installed_wheel_runs_under_the_units_command_line(
        venv, bus, guest_factory, rabbit_url, libvirt_uri, tmp_path):
    names, billing, nova = bus
    root = tmp_path / "root"
    port = prom.free_port()
    config = operator_config(root, names, rabbit_url, libvirt_uri, port)
    shipped = exec_start_argv(UNIT.read_text())
    argv = [shipped[0].replace(INSTALL_PREFIX, str(venv), 1),
            *[arg.replace("/etc/lifecycle-stats/", f"{root}/etc/lifecycle-stats/")
              for arg in shipped[1:]]]
    assert argv == [f"{venv}/bin/lifecycle-stats-agent", "--config-file", str(config)]
    where = run([str(venv / "bin/python"), "-c", "import lifecycle_stats; "
                 "print(lifecycle_stats.__file__)"], cwd=root)
    assert where.startswith(str(venv)), where  # the installed copy, not this checkout
    stop_timeout = float(unit_settings(UNIT.read_text())[("Service", "TimeoutStopSec")][0]
                         .rstrip("s"))
    notify = NotifySocket(tmp_path / "notify")
    env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8",
           "NOTIFY_SOCKET": notify.path}
    proc = subprocess.Popen(argv, cwd=root, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    try:
        notify.wait_for("READY=1", 90)
        guest, _ = guest_factory.create(paused=False)
        status = root / "state/status.json"
        wait(lambda: json.loads(status.read_text()).get("instances", 0) >= 1, 30,
             "the guest to be known")
        polls = json.loads(status.read_text())["counters"].get("poller.polls", 0)
        wait(lambda: json.loads(status.read_text())["counters"].get("poller.polls", 0)
             >= polls + 2, 60, "a poll that saw the guest")  # so a lost race is last_known
        nova.delete_start(guest, HOST)
        time.sleep(0.1)  # nova's RPC/DB calls before the destroy
        guest_factory.destroy(guest)
        got = billing.wait_for_instances([guest.instance_id], 20)
        assert guest.instance_id in got, (root / "agent.log").read_text()[-3000:]
        kind = got[guest.instance_id][0]["payload"]["capture"]["kind"]
        assert kind in ("final", "last_known")

        samples = prom.scrape(port)
        assert prom.value(samples, "lifecycle_stats_captures_total", kind=kind) == 1
        assert prom.value(samples, "lifecycle_stats_connection_up", connection="bus") == 1

        proc.send_signal(signal.SIGHUP)
        seen = notify.wait_for("READY=1", 20)
        assert "RELOADING=1" in seen and proc.poll() is None

        began = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(stop_timeout)
        stopped_in = time.monotonic() - began
        assert code == 0, proc.stderr.read().decode()[-2000:]
        assert "STOPPING=1" in notify.wait_for("STOPPING=1", 1)
        print(f"\ndeployed agent: capture {kind}, stopped in {stopped_in:.2f} s "
              f"(TimeoutStopSec {stop_timeout:.0f} s)")
        log = (root / "agent.log").read_text()
        assert "Traceback" not in log and " ERROR " not in log, log[-3000:]
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(10)
        notify.sock.close()


def wait(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if predicate():
                return
        except (FileNotFoundError, json.JSONDecodeError):
            pass
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")
