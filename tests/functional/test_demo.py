"""The README's main command: the embedded demo must keep producing what it shows."""
import pathlib
import subprocess
import sys

import pytest

pytestmark = pytest.mark.libvirt_test_driver

DEMO = pathlib.Path(sys.executable).with_name("lifecycle-stats-demo")


def test_demo_shows_two_final_and_one_last_known_delete_samples():
    result = subprocess.run([str(DEMO)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr  # the demo checks the kinds
    assert "billing ← 3 compute.instance.delete.samples" in result.stdout
    assert "flush.duplicates=1" in result.stdout and "flush.not_nova=1" in result.stdout
    assert "bus.ignored=1" in result.stdout  # the other host's delete.start
