"""The shipped unit under a real systemd (PID 1 of a systemd-nspawn container of Debian
bookworm): installed as README says (sysusers, unit, config), started as its configured user
with its hardening, on a host without a `nova` group and then with one; a configuration error
stops it for good instead of restarting every 5 s; `systemd-analyze security` is printed (and
its overall exposure asserted against the figure doc/operating.md quotes).

Needs root, systemd-nspawn and the cached rootfs (tools/systemd_rootfs.sh; run_tests.sh builds
it on a test host). It boots a container on this machine, so it runs only on a test host
(CI=true or LIFECYCLE_STATS_TEST_HOST=1), like the full-disk test.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import sys
import time
import uuid

import pytest

from lifecycle_stats.operations import exposition
from tests.integration import nspawn

ON_TEST_HOST = (os.environ.get("CI", "").lower() == "true"
                or os.environ.get("LIFECYCLE_STATS_TEST_HOST") == "1")
UNIT = "lifecycle-stats-agent.service"
ROOT = nspawn.ROOT
SITE = f"{sys.prefix}/lib/python{sys.version_info[0]}.{sys.version_info[1]}/site-packages"
# doc/operating.md quotes the overall exposure this test prints; a unit change that raises it
# past this fails here rather than leaving the doc wrong.
MAX_EXPOSURE = 2.0
CONFIG = """\
[DEFAULT]
host = unit-test-host
# no broker inside the container: the agent keeps connecting in the background
transport_url = rabbit://guest:guest@127.0.0.1:5672/
[oslo_messaging_notifications]
driver = file
[file_emitter]
path = /var/lib/lifecycle-stats/samples.jsonl
[libvirt]
uri = test:///default
"""


@pytest.fixture(scope="module")
def box(tmp_path_factory, service_unavailable):
    if not ON_TEST_HOST:
        pytest.skip("boots a systemd-nspawn container: runs only on a test host (CI=true or "
                    "LIFECYCLE_STATS_TEST_HOST=1)")
    if os.geteuid() != 0 or not shutil.which("nsenter"):
        service_unavailable("the unit test under systemd needs root and nsenter")
    root = nspawn.rootfs()
    log = tmp_path_factory.mktemp("nspawn") / "console.log"
    box = nspawn.Container(root, f"lst-unit-{uuid.uuid4().hex[:8]}", {str(ROOT): str(ROOT)},
                           log)
    try:
        install(box)
        yield box
    finally:
        box.stop()


def write(box, path: str, text: str, mode: str = "644") -> None:
    box.run("sh", "-c", f'mkdir -p "$(dirname {path})" && cat > {path} && chmod {mode} {path}',
            input=text)


def install(box) -> None:
    """What an operator does (README): a venv in /opt/lifecycle-stats (here the container's
    python3 with this checkout's packages), the sysusers user, the unit, the config."""
    python = box.run("sh", "-c", "readlink -f /usr/bin/python3").stdout.strip()
    version = re.search(r"python(\d+\.\d+)$", python).group(1)
    assert version == f"{sys.version_info[0]}.{sys.version_info[1]}", (
        f"container python {version}: the checkout's compiled modules need the same minor")
    venv = "/opt/lifecycle-stats"
    write(box, f"{venv}/pyvenv.cfg", f"home = /usr/bin\ninclude-system-site-packages = false\n"
                                     f"version = {version}\n")
    box.run("mkdir", "-p", f"{venv}/bin")
    box.run("ln", "-sf", "/usr/bin/python3", f"{venv}/bin/python3")
    write(box, f"{venv}/lib/python{version}/site-packages/checkout.pth",
          f"import site; site.addsitedir({SITE!r})\n")
    write(box, f"{venv}/bin/lifecycle-stats-agent",
          f"#!{venv}/bin/python3\nimport sys\nfrom lifecycle_stats.cmd.agent import main\n"
          "sys.exit(main())\n", mode="755")
    box.run("install", "-m644", f"{ROOT}/etc/sysusers.d/lifecycle-stats.conf",
            "/usr/lib/sysusers.d/lifecycle-stats.conf")
    box.run("systemd-sysusers")
    box.run("install", "-m644", f"{ROOT}/etc/systemd/{UNIT}", f"/etc/systemd/system/{UNIT}")
    if ROOT.is_relative_to("/tmp") or ROOT.is_relative_to("/var/tmp"):
        # A checkout under /tmp is hidden by the unit's PrivateTmp=; an operator's venv lives
        # in /opt. Only this test's copy of the unit sees the checkout through it.
        write(box, f"/etc/systemd/system/{UNIT}.d/checkout-under-tmp.conf",
              f"[Service]\nBindReadOnlyPaths={ROOT}\n")
    write(box, "/etc/lifecycle-stats/lifecycle-stats.conf", CONFIG)
    box.run("systemctl", "daemon-reload")


def start(box) -> dict[str, str]:
    box.run("systemctl", "reset-failed", UNIT, check=False)
    done = box.run("systemctl", "start", UNIT, check=False, timeout=150)
    state = box.show(UNIT, "ActiveState", "SubState", "MainPID", "NRestarts", "ExecMainStatus",
                     "Result")
    assert done.returncode == 0 and state["ActiveState"] == "active", (
        state, done.stderr, journal(box))
    return state


def journal(box) -> str:
    return box.run("journalctl", "-u", UNIT, "--no-pager", "-o", "cat", check=False).stdout


def proc_status(box, pid: str) -> dict[str, str]:
    text = box.run("cat", f"/proc/{pid}/status").stdout
    return {k: v.strip() for k, v in (line.split(":", 1) for line in text.splitlines())}


def gid(box, group: str) -> str:
    return box.run("getent", "group", group).stdout.split(":")[2]


def test_the_unit_starts_as_its_user_with_its_hardening_on_a_host_without_nova(box):
    assert box.run("getent", "group", "nova", check=False).returncode == 2  # no such group
    state = start(box)
    status = proc_status(box, state["MainPID"])
    uid = box.run("id", "-u", "lifecycle-stats").stdout.strip()
    assert status["Uid"].split() == [uid] * 4
    assert gid(box, "libvirt") in status["Groups"].split()  # qemu:///system's socket group
    assert status["NoNewPrivs"] == "1"
    assert int(status["CapEff"], 16) == int(status["CapBnd"], 16) == 0
    assert status["Seccomp"] == "2"  # SystemCallFilter=
    mounts = box.run("cat", f"/proc/{state['MainPID']}/mountinfo").stdout.splitlines()
    root_mount = [line.split() for line in mounts if line.split()[4] == "/"][-1]
    assert root_mount[5].split(",")[0] == "ro"  # ProtectSystem=strict
    assert box.run("stat", "-c", "%a %U", "/var/lib/lifecycle-stats").stdout.split() == [
        "700", "lifecycle-stats"]
    text = journal(box)
    assert "no group 'nova' on this host" in text, text
    # The Prometheus endpoint is on loopback by default, every family there from the start.
    port = exposition.DEFAULT_PORT
    scrape = box.run("python3", "-c", "import urllib.request,sys; sys.stdout.write(urllib."
                     f"request.urlopen('http://127.0.0.1:{port}/metrics', timeout=10)"
                     ".read().decode())").stdout
    assert "lifecycle_stats_build_info" in scrape
    assert box.run("sh", "-c", f"ss -Hltn 'sport = :{port}'").stdout.split()[3] == \
        f"127.0.0.1:{port}"


def test_the_agent_sees_the_processes_of_another_user_as_qemu_s(box):
    """qemu_process.started_at reads /proc/<pid>/stat of the QEMU process, which runs as
    libvirt-qemu, and /proc/uptime. With ProtectProc=invisible the unit hid every process of
    another user: every instance started while the agent ran was booked
    running_when_first_seen, its boot usage unbilled (found by review)."""
    state = start(box)
    box.run("systemctl", "stop", "lst-sleeper", check=False)
    box.run("systemd-run", "--uid=65534", "--gid=65534", "--unit=lst-sleeper", "sleep", "600")
    try:
        sleeper = box.show("lst-sleeper.service", "MainPID")["MainPID"]
        uid = box.run("id", "-u", "lifecycle-stats").stdout.strip()
        seen = box.run("nsenter", f"--target={state['MainPID']}", "--mount", f"--setuid={uid}",
                       f"--setgid={gid(box, 'lifecycle-stats')}", "cat", f"/proc/{sleeper}/stat",
                       "/proc/uptime", check=False)
        assert seen.returncode == 0, seen.stderr
        assert seen.stdout.startswith(f"{sleeper} (sleep)")
    finally:
        box.run("systemctl", "stop", "lst-sleeper", check=False)


def test_with_a_nova_group_the_hook_socket_is_nova_s(box):
    """A compute host: the install step adds the user to nova's group (README)."""
    box.run("groupadd", "--system", "nova")
    box.run("usermod", "--append", "--groups", "nova", "lifecycle-stats")
    box.run("systemctl", "restart", UNIT, timeout=150)
    state = box.show(UNIT, "ActiveState", "MainPID")
    assert state["ActiveState"] == "active", journal(box)
    assert gid(box, "nova") in proc_status(box, state["MainPID"])["Groups"].split()
    deadline = time.monotonic() + 30
    while box.run("test", "-S", "/run/lifecycle-stats/hook.sock", check=False).returncode:
        assert time.monotonic() < deadline, journal(box)
        time.sleep(0.2)
    assert box.run("stat", "-c", "%a %U %G", "/run/lifecycle-stats/hook.sock").stdout.split() \
        == ["660", "lifecycle-stats", "nova"]


def test_a_configuration_error_is_not_restarted_every_5_s(box):
    write(box, "/etc/lifecycle-stats/lifecycle-stats.conf", CONFIG + "[metrics]\nport = x\n")
    try:
        assert box.run("systemctl", "restart", UNIT, check=False, timeout=150).returncode
        time.sleep(7)  # RestartSec=5s: long enough for a restart to have happened
        state = box.show(UNIT, "ActiveState", "NRestarts", "ExecMainStatus", "Result")
        assert state == {"ActiveState": "failed", "NRestarts": "0", "ExecMainStatus": "2",
                         "Result": "exit-code"}, (state, journal(box))
        assert "configuration error" in journal(box)
    finally:
        write(box, "/etc/lifecycle-stats/lifecycle-stats.conf", CONFIG)
    start(box)


def test_systemd_analyze_security_of_the_unit(box, capsys):
    done = box.run("systemd-analyze", "security", "--no-pager", UNIT, check=False)
    report = done.stdout
    with capsys.disabled():
        print(f"\n--- systemd-analyze security {UNIT} (systemd "
              f"{box.run('systemctl', '--version').stdout.split()[1]}) ---\n{report}")
    overall = re.search(r"Overall exposure level for \S+: ([\d.]+) (\S+)", report)
    assert overall, report
    assert float(overall.group(1)) <= MAX_EXPOSURE, overall.group(0)
