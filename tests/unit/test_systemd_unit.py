"""The shipped systemd unit: `systemd-analyze verify` accepts it (no systemd as PID 1 needed)
and its settings match what the agent does (readiness, reload, drain time, state path)."""
import pathlib
import shutil
import subprocess
import sys

import pytest

from lifecycle_stats import agent
from lifecycle_stats.cmd import agent as agent_cmd
from tests.support.systemd_unit import UNIT, exec_start_argv, unit_settings

ROOT = pathlib.Path(__file__).resolve().parents[2]
SYSUSERS = ROOT / "etc" / "sysusers.d" / "lifecycle-stats.conf"
AGENT = pathlib.Path(sys.executable).with_name("lifecycle-stats-agent")


def test_systemd_analyze_verify_accepts_the_unit(tmp_path):
    analyze = shutil.which("systemd-analyze")
    assert analyze, "systemd-analyze missing: tools/bootstrap.sh installs the systemd package"
    # verify checks that ExecStart's program exists: point it at this venv's agent.
    text = UNIT.read_text()
    shipped = exec_start_argv(text)[0]
    unit = tmp_path / UNIT.name
    unit.write_text(text.replace(shipped, str(AGENT)))
    result = subprocess.run([analyze, "verify", "--man=no", str(unit)], capture_output=True,
                            text=True, timeout=60)
    ours = [line for line in (result.stdout + result.stderr).splitlines() if UNIT.name in line]
    assert result.returncode == 0 and ours == [], result.stdout + result.stderr


def test_unit_matches_the_agent():
    settings = unit_settings(UNIT.read_text())

    def one(key):
        return settings[("Service", key)][0]

    argv = exec_start_argv(UNIT.read_text())
    assert pathlib.Path(argv[0]).name == "lifecycle-stats-agent"
    assert argv[1:] == ["--config-file", "/etc/lifecycle-stats/lifecycle-stats.conf"]
    assert one("Type") == "notify"  # the agent sends READY=1 (sd_notify.py)
    assert one("ExecReload") == "/bin/kill -HUP $MAINPID"
    assert one("Restart") == "on-failure"
    # StateDirectory= is the agent's default [DEFAULT] state_path.
    state_opt = next(o for o in agent.OPTS if o.name == "state_path")
    assert "/var/lib/" + one("StateDirectory") == state_opt.default
    # A group the host lacks in SupplementaryGroups= fails the start (216/GROUP): groups come
    # from the group database (sysusers, install), test_unit_systemd.py runs it without nova.
    assert ("Service", "SupplementaryGroups") not in settings
    assert one("RestartPreventExitStatus").split() == [str(agent_cmd.EXIT_CONFIG)]
    assert "AF_UNIX" in one("RestrictAddressFamilies").split()
    # Agent.stop shares one bound, [DEFAULT] stop_timeout, across every wait (the bus
    # listener's flushes in hand, the lifecycle listener's and the poller's joins, the
    # conduits' drain); closing the emitters, spool and connections comes after it.
    stop_opt = next(o for o in agent.OPTS if o.name == "stop_timeout")
    assert float(one("TimeoutStopSec").rstrip("s")) >= stop_opt.default + 5
    assert "libvirtd.service" in " ".join(settings[("Unit", "After")])


def test_sysusers_puts_the_unit_user_in_group_libvirt():
    user = unit_settings(UNIT.read_text())[("Service", "User")][0]
    lines = [line.split() for line in SYSUSERS.read_text().splitlines()
             if line and not line.startswith("#")]
    assert ["u", user] == lines[0][:2]
    assert ["m", user, "libvirt"] in lines
