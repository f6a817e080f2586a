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
