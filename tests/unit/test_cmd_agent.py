"""The console script: help, and configuration errors that name the option and the value."""
import pathlib
import subprocess
import sys

AGENT = pathlib.Path(sys.executable).with_name("lifecycle-stats-agent")


def run(*args, timeout=60):
    return subprocess.run([str(AGENT), *args], capture_output=True, text=True, timeout=timeout)


def test_help_lists_the_config_file_option():
    result = run("--help")
    assert result.returncode == 0
    assert "--config-file" in result.stdout


# Never the default hook socket: on a compute host (a `nova` group) a test agent would serve
# /run/lifecycle-stats/hook.sock, which the host's own agent (or another test's) may hold.
NO_HOOK = "[hook]\nenabled = false\n"


def test_a_bad_option_value_fails_at_start_naming_option_and_value(tmp_path):
    conf = tmp_path / "bad.conf"
    conf.write_text(f"[DEFAULT]\nstate_path = {tmp_path}\n[spool]\nmax_records = plenty\n")
    result = run("--config-file", str(conf))
    assert result.returncode == 2
    assert "configuration error" in result.stderr
    assert "max_records" in result.stderr and "plenty" in result.stderr


def test_an_unknown_conduit_fails_at_start(tmp_path):
    conf = tmp_path / "bad.conf"
    conf.write_text(f"[DEFAULT]\nstate_path = {tmp_path}\n[libvirt]\nuri = test:///default\n"
                    "[oslo_messaging_notifications]\ndriver = carrier-pigeon\n")
    result = run("--config-file", str(conf))
    assert result.returncode == 2
    assert "[oslo_messaging_notifications] driver" in result.stderr
    assert "carrier-pigeon" in result.stderr


def test_an_unreachable_libvirt_is_a_clear_error_not_a_traceback(tmp_path):
    conf = tmp_path / "c.conf"
    conf.write_text(f"[DEFAULT]\nstate_path = {tmp_path}\n"
                    "[libvirt]\nuri = qemu+tcp://127.0.0.1:1/system\n"
                    "connection_retry_attempts = 1\n"
                    "[oslo_messaging_notifications]\ndriver = log\n"
                    "[notification_listener]\ntransport_url = fake://\n" + NO_HOOK)
    result = run("--config-file", str(conf))
    assert result.returncode == 1
    assert "cannot reach libvirt at qemu+tcp://127.0.0.1:1/system" in result.stderr
    assert "Traceback" not in result.stderr


def test_sigterm_stops_the_agent_whichever_thread_receives_it(tmp_path):
    """Regression: the main thread waited on an Event without a timeout, so a SIGTERM the
    kernel delivered to a libvirt or oslo thread was never acted on."""
    import json
    import signal
    import time

    conf = tmp_path / "c.conf"
    conf.write_text(f"[DEFAULT]\nstate_path = {tmp_path}\nstatus_interval = 0.5\n"
                    "[libvirt]\nuri = test:///default\n"
                    "[oslo_messaging_notifications]\ndriver = log\n"
                    "[notification_listener]\ntransport_url = fake://\n" + NO_HOOK
                    + "[metrics]\nport = 0\n")  # other agents run on this machine
    for _ in range(3):
        proc = subprocess.Popen([str(AGENT), "--config-file", str(conf)],
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                if json.loads((tmp_path / "status.json").read_text())["pid"] == proc.pid:
                    break
            except (OSError, ValueError, KeyError):
                pass
            time.sleep(0.1)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(20) == 0, proc.stderr.read()


def test_a_taken_metrics_port_fails_at_start_naming_the_option(tmp_path):
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        conf = tmp_path / "c.conf"
        conf.write_text(f"[DEFAULT]\nstate_path = {tmp_path}\n"
                        "[libvirt]\nuri = test:///default\n"
                        "[oslo_messaging_notifications]\ndriver = log\n"
                        "[notification_listener]\ntransport_url = fake://\n" + NO_HOOK +
                        f"[metrics]\nport = {port}\n")
        result = run("--config-file", str(conf))
    assert result.returncode == 2
    assert "[metrics] listen/port" in result.stderr and f"127.0.0.1:{port}" in result.stderr
    assert "Traceback" not in result.stderr


def test_a_file_at_the_hook_socket_path_is_a_clear_error_and_is_kept(tmp_path):
    import grp
    import os

    occupied = tmp_path / "run" / "hook.sock"
    occupied.parent.mkdir(mode=0o750)
    occupied.write_text("not a socket")
    conf = tmp_path / "c.conf"
    conf.write_text(f"[DEFAULT]\nstate_path = {tmp_path}\n"
                    "[libvirt]\nuri = test:///default\n"
                    "[oslo_messaging_notifications]\ndriver = log\n"
                    "[notification_listener]\ntransport_url = fake://\n"
                    "[metrics]\nport = 0\n"
                    f"[hook]\nsocket_path = {occupied}\n"
                    f"socket_group = {grp.getgrgid(os.getegid()).gr_name}\n")
    result = run("--config-file", str(conf))
    assert result.returncode == 2, result.stderr
    assert "[hook] socket_path" in result.stderr and "not a socket" in result.stderr
    assert "Traceback" not in result.stderr
    assert occupied.read_text() == "not a socket"


def test_a_bad_value_read_only_at_start_is_a_configuration_error_exit_2(tmp_path):
    """Regression: oslo.config converts a value at its first read; `[metrics] port = x` was
    first read in Agent.start, a traceback and exit 1, which systemd restarted for ever
    (RestartPreventExitStatus= covers exit 2 only)."""
    conf = tmp_path / "c.conf"
    conf.write_text(f"[DEFAULT]\nstate_path = {tmp_path}\n"
                    "[libvirt]\nuri = test:///default\n"
                    "[oslo_messaging_notifications]\ndriver = log\n"
                    "[notification_listener]\ntransport_url = fake://\n"
                    "[metrics]\nport = x\n")
    result = run("--config-file", str(conf))
    assert result.returncode == 2, result.stderr
    assert "configuration error" in result.stderr and "port" in result.stderr
    assert "Traceback" not in result.stderr


IMPORTS_OF_MAIN = """
import sys
from lifecycle_stats.cmd import agent
code = agent.main(["--config-file", sys.argv[1]])
print(code, sorted({name.split(".")[0] for name in sys.modules} & {"dns", "jsonschema"}))
"""


def test_the_agent_loads_neither_green_dns_nor_jsonschema(tmp_path, monkeypatch):
    """Regression (agent memory, issue 19): eventlet, which oslo.messaging imports, loaded
    dnspython for a green resolver the never-patched agent cannot use (6.6 MiB resident),
    and payloads.py loaded jsonschema (2.8 MiB) that only a refused payload needs."""
    conf = tmp_path / "c.conf"
    conf.write_text(f"[DEFAULT]\nstate_path = {tmp_path}\n"
                    "[libvirt]\nuri = qemu+tcp://127.0.0.1:1/system\n"
                    "connection_retry_attempts = 1\n"
                    "[oslo_messaging_notifications]\ndriver = messagingv2\n"
                    "[notification_listener]\ntransport_url = fake://\n"
                    "[metrics]\nport = 0\n" + NO_HOOK)
    monkeypatch.delenv("EVENTLET_NO_GREENDNS", raising=False)
    result = subprocess.run([sys.executable, "-c", IMPORTS_OF_MAIN, str(conf)],
                            capture_output=True, text=True, timeout=60)
    last = result.stdout.splitlines()[-1:]  # the agent logs to stdout before it
    assert last == ["1 []"], result.stdout + result.stderr  # 1: libvirt unreachable


def test_an_operator_setting_for_green_dns_wins(monkeypatch):
    from lifecycle_stats import interpreter

    monkeypatch.setenv("EVENTLET_NO_GREENDNS", "no")
    interpreter.skip_green_dns()
    assert interpreter.os.environ["EVENTLET_NO_GREENDNS"] == "no"
    monkeypatch.delenv("EVENTLET_NO_GREENDNS")
    interpreter.skip_green_dns()
    assert interpreter.os.environ["EVENTLET_NO_GREENDNS"] == "yes"
