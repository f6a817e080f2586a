"""tools/setup_hypervisor.sh on a marked test host: says what it changed in qemu.conf (run on a
copy, so the real daemon's configuration is not touched), and tools/start_rabbitmq.sh gave the
integration tier its own vhost."""
import os
import pathlib
import subprocess

import kombu
import pytest

from tests.integration.conftest import RABBIT_VHOST, amqp_url

pytestmark = pytest.mark.integration
ROOT = pathlib.Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("flag", [{"CI": "true"}, {"LIFECYCLE_STATS_TEST_HOST": "1"}])
def test_setup_hypervisor_on_a_test_host_prints_its_diff(libvirt_uri, tmp_path, flag):
    conf = tmp_path / "qemu.conf"
    conf.write_text("# copy of a stock qemu.conf\n")
    env = {k: v for k, v in os.environ.items() if k not in ("CI", "LIFECYCLE_STATS_TEST_HOST")}
    result = subprocess.run(["bash", str(ROOT / "tools/setup_hypervisor.sh")],
                            env={**env, "LIBVIRT_QEMU_CONF": str(conf), **flag},
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert '+security_driver = "none"' in result.stdout
    assert '+user = "root"' in result.stdout
    assert f"--- {conf} (before)" in result.stdout
    again = subprocess.run(["bash", str(ROOT / "tools/setup_hypervisor.sh")],
                           env={**env, "LIBVIRT_QEMU_CONF": str(conf)},
                           capture_output=True, text=True, timeout=300)
    assert again.returncode == 0 and "unchanged" in again.stdout  # marked by its own block


def test_the_integration_tier_uses_its_own_vhost(rabbit_url):
    assert rabbit_url.endswith("/" + RABBIT_VHOST)
    with kombu.Connection(amqp_url(rabbit_url), connect_timeout=5) as conn:
        conn.ensure_connection(max_retries=1)
        assert conn.virtual_host == RABBIT_VHOST
