"""The project's scripts never weaken a host that is not marked as a test host."""
import os
import pathlib
import subprocess

ROOT = pathlib.Path(__file__).resolve().parents[2]


def run_setup(conf: pathlib.Path, **env):
    clean = {k: v for k, v in os.environ.items()
             if k not in ("CI", "LIFECYCLE_STATS_TEST_HOST")}
    return subprocess.run(["bash", str(ROOT / "tools/setup_hypervisor.sh")],
                          env={**clean, "LIBVIRT_QEMU_CONF": str(conf), **env},
                          capture_output=True, text=True, timeout=60)


def test_setup_hypervisor_refuses_an_unmarked_host_and_names_the_flag(tmp_path):
    conf = tmp_path / "qemu.conf"
    conf.write_text('# a real hypervisor\nsecurity_driver = "apparmor"\n')
    for env in ({}, {"CI": "false"}, {"LIFECYCLE_STATS_TEST_HOST": "0"}):
        result = run_setup(conf, **env)
        assert result.returncode == 3, result
        assert "LIFECYCLE_STATS_TEST_HOST=1" in result.stderr
        assert "not marked as a test host" in result.stderr
        assert conf.read_text() == '# a real hypervisor\nsecurity_driver = "apparmor"\n'


def test_run_tests_passes_on_only_the_flags_it_was_given():
    script = (ROOT / "tools/run_tests.sh").read_text()
    setup_lines = [line for line in script.splitlines() if "setup_hypervisor.sh" in line
                   and not line.lstrip().startswith("#")]
    assert setup_lines == ["CI=${CI:-} LIFECYCLE_STATS_TEST_HOST=${LIFECYCLE_STATS_TEST_HOST:-} "
                           "bash tools/setup_hypervisor.sh"]


def run_demo_with_setup(tmp_path, script: str) -> subprocess.CompletedProcess:
    """tools/run_demo.sh --help (the demo's usage, no agent) after a stand-in set-up."""
    setup = tmp_path / "setup.sh"
    setup.write_text(script)
    return subprocess.run(["bash", str(ROOT / "tools/run_demo.sh"), "--help"],
                          env={**os.environ, "LIFECYCLE_STATS_BOOTSTRAP": str(setup),
                               "TMPDIR": str(tmp_path)},
                          capture_output=True, text=True, timeout=120)


def test_run_demo_keeps_the_setups_chatter_out_of_the_demos_output(tmp_path):
    result = run_demo_with_setup(tmp_path, "echo 'Obtaining file:///repo'\n"
                                 "echo 'SetuptoolsDeprecationWarning: License classifiers' >&2\n")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("usage: lifecycle-stats-demo")
    assert "Obtaining" not in result.stdout + result.stderr
    assert "Warning" not in result.stdout + result.stderr
    assert list(tmp_path.glob("lifecycle-stats-bootstrap.*")) == []  # its log is removed


def test_run_demo_shows_a_failed_setups_output_and_stops(tmp_path):
    result = run_demo_with_setup(tmp_path, "echo 'E: Unable to locate package libvirt-dev' >&2\n"
                                 "exit 100\n")
    assert result.returncode == 1
    assert "E: Unable to locate package libvirt-dev" in result.stderr
    assert "the set-up failed" in result.stderr
    assert "usage: lifecycle-stats-demo" not in result.stdout
