"""The README's main command: the embedded demo must keep producing what it shows — the
delete.samples of each deletion, and the usage exists of an audit period and at deletion."""
import pathlib
import re
import subprocess

import pytest

pytestmark = pytest.mark.libvirt_test_driver

ROOT = pathlib.Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def demo() -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(ROOT / "tools/run_demo.sh")], capture_output=True,
                          text=True, timeout=180)


def section(out: str, title: str) -> list[str]:
    """The lines under the heading that starts with title, up to the next blank line."""
    lines = out.split(title, 1)[1].split("\n\n", 1)[0].splitlines()
    return lines[1:]


def test_the_demo_exits_0_only_with_what_it_shows(demo):
    assert demo.returncode == 0, demo.stdout + demo.stderr  # the demo checks what billing got


def test_delete_samples_two_final_and_one_last_known(demo):
    assert "billing ← 3 compute.instance.delete.samples" in demo.stdout
    rows = section(demo.stdout, "billing ← 3 compute.instance.delete.samples")
    kinds = {row.split()[0]: row.split()[2] for row in rows if "via " in row}
    assert kinds == {"web-1": "final", "db-1": "final", "batch-7": "last_known"}
    assert "flush.duplicates=1" in demo.stdout and "flush.not_nova=1" in demo.stdout
    assert "bus.ignored=1" in demo.stdout  # the other host's delete.start


def test_a_whole_audit_periods_exists_for_every_nova_instance(demo):
    title = re.search(r"billing ← 3 compute\.instance\.exists for the audit period "
                      r"(\d\d:\d\d:\d\d) → (\d\d:\d\d:\d\d) UTC", demo.stdout)
    assert title, demo.stdout
    rows = section(demo.stdout, title.group(0))
    assert sorted(row.split()[0] for row in rows) == ["batch-7", "db-1", "web-1"]
    for row in rows:
        assert "agent_period" in row and row.split()[-1] == "complete"  # not "incomplete 1 s"
        assert int(re.search(r"cpu_time_ns=(\d+)", row).group(1)) > 0


def test_the_final_exists_of_every_deleted_instance(demo):
    rows = section(demo.stdout, "billing ← 3 compute.instance.exists at deletion")
    finals = {row.split()[0]: row for row in rows}
    assert sorted(finals) == ["batch-7", "db-1", "web-1"]
    assert all(" deleted " in row for row in rows)
    # web-1 and db-1 were read after nova announced their deletes (a closing reading); batch-7
    # was destroyed before its announcement, so its tail since the last poll is reported as
    # unread. (`"complete" in row` held for "incomplete 0.05 s" too.)
    assert finals["web-1"].split()[-1] == "complete" == finals["db-1"].split()[-1]
    assert re.search(r" incomplete \d+(\.\d+)? s$", finals["batch-7"])
    assert "usage.exists.deleted=3" in demo.stdout


def test_no_installer_or_deprecation_warnings(demo):
    out = demo.stdout + demo.stderr
    assert not re.search(r"\w+Warning\b", out), out
    assert "setuptools" not in out.lower() and "eventlet" not in out.lower()
