"""The driver in a process run as nova-compute runs (tests/nova_compute.py): eventlet
monkey-patched, or native threads with `import eventlet` poisoned. No broker needed: the
Notifiers use fake://. The agent side is a HookServer (or a mute socket) in this process."""
from __future__ import annotations

import datetime
import grp
import os
import socket
import subprocess
import sys
import uuid

import pytest

from lifecycle_stats.listeners import hook_server
from tests.nova_compute import NovaComputeProcess, write_nova_conf
from tests.support.fakes import TriggerRecorder
from tests.support.nova import legacy_start_payload

HOST = "cmp1"
MY_GROUP = grp.getgrgid(os.getegid()).gr_name
MODES = ("eventlet", "threading")
TIMEOUT = 0.3
NOW = datetime.datetime(2026, 11, 22, 3, 0, tzinfo=datetime.timezone.utc)


@pytest.fixture
def sock_path(tmp_path):
    path = tmp_path / "run" / "hook.sock"
    path.parent.mkdir(mode=0o750)
    return str(path)


def start_nova(tmp_path, sock_path, mode: str, timeout: float) -> NovaComputeProcess:
    conf = write_nova_conf(tmp_path / "nova.conf", host=HOST, transport_url="fake://",
                           socket_path=sock_path, timeout=timeout)
    proc = NovaComputeProcess(conf, mode, log_file=tmp_path / "nova.log")
    ready = proc.start()
    assert ready["drivers"] == ["lifecycle_stats", "messagingv2"]
    return proc


@pytest.fixture(params=MODES)
def nova(request, tmp_path, sock_path):
    proc = start_nova(tmp_path, sock_path, request.param, TIMEOUT)
    yield proc
    assert proc.stop() == 0, proc.log_tail()


@pytest.fixture(params=MODES)
def patient_nova(request, tmp_path, sock_path):
    """Waits 5 s: a test about which connection is used must not meet the timeout on a
    loaded machine (a timed-out connection is dropped)."""
    proc = start_nova(tmp_path, sock_path, request.param, 5.0)
    yield proc
    assert proc.stop() == 0, proc.log_tail()


def delete_start(instance_id=None):
    return {"op": "notify", "event_type": "compute.instance.delete.start",
            "publisher_id": f"compute.{HOST}", "payload": legacy_start_payload(instance_id or str(uuid.uuid4()), HOST)}


def test_the_agent_gets_the_trigger_before_notify_returns(nova, sock_path):
    recorder = TriggerRecorder()
    server = hook_server.HookServer(sock_path, host=HOST, on_trigger=recorder, group=MY_GROUP,
                                    clock=lambda: NOW)
    server.start()
    try:
        instance = str(uuid.uuid4())
        result = nova.call(delete_start(instance))
        assert "error" not in result
        assert [t.instance_id for t in recorder.triggers] == [instance]
        assert "captured" in nova.log() and "did not capture" not in nova.log()
    finally:
        server.stop()


def test_deletes_reuse_one_connection_across_an_agent_restart(patient_nova, sock_path):
    """The kept connection in both of nova's modes (a green socket under eventlet): one
    connection for several deletes, and a restarted agent's new socket found at once."""
    servers, recorders = [], []
    try:
        for _ in range(2):
            recorders.append(TriggerRecorder())
            servers.append(hook_server.HookServer(sock_path, host=HOST, on_trigger=recorders[-1],
                                                  group=MY_GROUP, clock=lambda: NOW))
            servers[-1].start()
            for _ in range(3):
                assert "error" not in patient_nova.call(delete_start())
            servers[-1].stop()
        assert [len(r.triggers) for r in recorders] == [3, 3]
        assert [s.counters.get("hook.connections") for s in servers] == [1, 1]
        assert "did not capture" not in patient_nova.log()
    finally:
        for server in servers:
            server.stop()


def test_a_mute_agent_holds_nova_only_until_the_timeout(nova, sock_path):
    with socket.socket(socket.AF_UNIX) as mute:  # accepts into the backlog, never answers
        mute.bind(sock_path)
        mute.listen(8)
        result = nova.call(delete_start())
    assert "error" not in result
    [waited_ms] = result["notify_ms"]
    assert waited_ms >= TIMEOUT * 1000 * 0.9  # it waited for the agent...
    assert "did not capture" in nova.log() and "timed out" in nova.log()  # ...then gave up
    if nova.mode == "eventlet":  # and the hub kept running meanwhile: the socket was green
        assert result["ticks"] >= 10, result


def test_no_agent_at_all(nova):
    result = nova.call(delete_start())
    assert "error" not in result
    assert "FileNotFoundError" in nova.log()


def test_the_driver_imports_nothing_but_stdlib_msgpack_and_oslo():
    """Inside nova: no eventlet, no libvirt, none of the agent's core (nova_driver's rule)."""
    script = """
import sys
import msgpack, oslo_config.cfg, oslo_messaging.notify.notifier
before = set(sys.modules)
from lifecycle_stats.listeners.nova import connections, driver as nova_driver
from lifecycle_stats.listeners.nova import protocol as hook_protocol
allowed = {hook_protocol.__name__, nova_driver.__name__, connections.__name__}
for name in list(allowed):
    while "." in name:
        name = name.rsplit(".", 1)[0]
        allowed.add(name)
new = sorted(set(sys.modules) - before)
bad = [m for m in new if m not in allowed and m.split(".")[0] not in sys.stdlib_module_names]
print(bad)
"""
    repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    out = subprocess.run([sys.executable, "-W", "ignore", "-c", script], cwd=repo, check=True,
                         capture_output=True, text=True).stdout
    assert out.strip() == "[]"
