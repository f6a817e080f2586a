"""The router's systemd unit: `systemd-analyze verify` accepts it, and the router does what
the unit expects of it (READY=1 and STOPPING=1 on the notify socket, exit 0 on SIGTERM, exit
2 on a configuration error, which the unit does not restart on)."""
import os
import pathlib
import shutil
import signal
import socket
import subprocess
import sys

from tests.support.systemd_unit import exec_start_argv, unit_settings

ROOT = pathlib.Path(__file__).resolve().parents[2]
UNIT = ROOT / "etc" / "systemd" / "lifecycle-stats-router.service"
SYSUSERS = ROOT / "etc" / "sysusers.d" / "lifecycle-stats-router.conf"
ROUTER = pathlib.Path(sys.executable).with_name("lifecycle-stats-router")


def service(key: str) -> list[str]:
    return unit_settings(UNIT.read_text())[("Service", key)]


def test_systemd_analyze_verify_accepts_the_router_unit(tmp_path):
    analyze = shutil.which("systemd-analyze")
    assert analyze, "systemd-analyze missing: tools/bootstrap.sh installs the systemd package"
    text = UNIT.read_text()
    unit = tmp_path / UNIT.name
    unit.write_text(text.replace(exec_start_argv(text)[0], str(ROUTER)))
    result = subprocess.run([analyze, "verify", "--man=no", str(unit)], capture_output=True,
                            text=True, timeout=60)
    ours = [line for line in (result.stdout + result.stderr).splitlines() if UNIT.name in line]
    assert result.returncode == 0 and ours == [], result.stdout + result.stderr


def test_unit_runs_the_router_as_the_sysusers_user():
    argv = exec_start_argv(UNIT.read_text())
    assert pathlib.Path(argv[0]).name == "lifecycle-stats-router"
    assert argv[1:] == ["--config-file", "/etc/lifecycle-stats/lifecycle-stats-router.conf"]
    lines = [line.split() for line in SYSUSERS.read_text().splitlines()
             if line and not line.startswith("#")]
    assert lines[0][:2] == ["u", service("User")[0]]
    assert service("Group") == service("User")
    assert "SupplementaryGroups" not in " ".join(UNIT.read_text().splitlines())


def test_a_configuration_error_exits_2_which_the_unit_does_not_restart(tmp_path):
    assert service("Restart") == ["on-failure"]
    assert "2" in service("RestartPreventExitStatus")[0].split()
    config = tmp_path / "router.conf"
    config.write_text("[router]\nprefetch = none\n")
    result = subprocess.run([str(ROUTER), "--config-file", str(config)], capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0 and "configuration error" in result.stderr
    with socket.socket() as taken:  # a metrics port in use is one too
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        config.write_text(f"[DEFAULT]\ntransport_url = rabbit://u:p@127.0.0.1:1/\n"
                          f"[metrics]\nport = {taken.getsockname()[1]}\n")
        result = subprocess.run([str(ROUTER), "--config-file", str(config)],
                                capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and "cannot listen" in result.stderr


def test_ready_and_stopping_on_the_notify_socket_and_exit_0_on_sigterm(tmp_path):
    """Type=notify: READY=1 once the relay runs (it connects on its own thread: a broker that
    is down does not hold up the start), STOPPING=1 at SIGTERM, then exit 0."""
    assert service("Type") == ["notify"]
    config = tmp_path / "router.conf"
    config.write_text("[DEFAULT]\ntransport_url = rabbit://u:p@127.0.0.1:1/\n"
                      "[metrics]\nport = 0\n")
    address = str(tmp_path / "notify")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as notify:
        notify.bind(address)
        notify.settimeout(30)
        proc = subprocess.Popen([str(ROUTER), "--config-file", str(config)],
                                env={**os.environ, "NOTIFY_SOCKET": address},
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            assert notify.recv(64) == b"READY=1"
            proc.send_signal(signal.SIGTERM)
            assert notify.recv(64) == b"STOPPING=1"
            assert proc.wait(float(service("TimeoutStopSec")[0].rstrip("s"))) == 0
        finally:
            if proc.poll() is None:
                proc.kill()
            proc.wait()
            proc.stderr.close()


def test_systemd_analyze_security_rates_the_router_unit_ok(tmp_path):
    """Prints the figure doc/operating.md quotes; `--offline` needs no systemd as PID 1."""
    import re

    text = UNIT.read_text()
    unit = tmp_path / UNIT.name
    unit.write_text(text.replace(exec_start_argv(text)[0], str(ROUTER)))
    result = subprocess.run([shutil.which("systemd-analyze"), "security", "--offline=yes",
                             str(unit)], capture_output=True, text=True, timeout=60)
    match = re.search(r"Overall exposure level for \S+: (\d+\.\d+) (\w+)", result.stdout)
    assert match, result.stdout + result.stderr
    print(f"\nsystemd-analyze security {UNIT.name}: {match.group(1)} {match.group(2)}")
    assert float(match.group(1)) <= 2.0 and match.group(2) == "OK"
