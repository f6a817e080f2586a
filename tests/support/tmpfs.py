"""A small real tmpfs for full-disk tests (test host only: mounting changes the mount table),
and filling it to the last byte."""
from __future__ import annotations

import errno
import os
import subprocess

import pytest

ON_TEST_HOST = (os.environ.get("CI", "").lower() == "true"
                or os.environ.get("LIFECYCLE_STATS_TEST_HOST") == "1")


@pytest.fixture
def small_fs(tmp_path, service_unavailable):
    if not ON_TEST_HOST:
        pytest.skip("mounts a tmpfs: runs only on a test host (CI=true or "
                    "LIFECYCLE_STATS_TEST_HOST=1)")
    if os.geteuid() != 0:
        service_unavailable("mounting a tmpfs for the full-disk test needs root")
    mount = tmp_path / "small-fs"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m,mode=0700", "tmpfs", str(mount)],
                   check=True, capture_output=True, timeout=30)
    try:
        yield mount
    finally:
        subprocess.run(["umount", "--lazy", str(mount)], check=True, capture_output=True,
                       timeout=30)


def fill(mount) -> "os.PathLike":
    """Write until the filesystem refuses a single byte more."""
    filler = mount / "filler"
    with open(filler, "wb", buffering=0) as out:
        for size in (65536, 4096, 512, 1):
            try:
                while True:
                    out.write(b"\0" * size)
            except OSError as exc:
                assert exc.errno == errno.ENOSPC, exc
    return filler
