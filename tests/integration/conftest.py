"""Fixtures for the integration tier: the real libvirtd (qemu:///system) and RabbitMQ.

tools/run_tests.sh starts both. When one does not answer, the fixtures fail in CI (and under
run_tests.sh) and skip elsewhere (tests/conftest.py: service_unavailable). The tier works in
its own RabbitMQ vhost, which tools/start_rabbitmq.sh creates. Environment overrides:
LIFECYCLE_STATS_LIBVIRT_URI, LIFECYCLE_STATS_RABBIT_URL, LIFECYCLE_STATS_RABBIT_VHOST.
"""
from __future__ import annotations

import os
import urllib.parse

import pytest

from tests.support import guests as novalike

# Overridable for a broker/daemon elsewhere on this machine (and to try the failure path).
LIBVIRT_URI = os.environ.get("LIFECYCLE_STATS_LIBVIRT_URI", "qemu:///system")
RABBIT_VHOST = os.environ.get("LIFECYCLE_STATS_RABBIT_VHOST", "lifecycle-stats-test")
RABBIT_URL = os.environ.get(
    "LIFECYCLE_STATS_RABBIT_URL",
    f"rabbit://guest:guest@127.0.0.1:5672/{urllib.parse.quote(RABBIT_VHOST, safe='')}")
GUEST_PREFIX = "lst"


def amqp_url(rabbit_url: str) -> str:
    """oslo.messaging's rabbit:// transport URL as kombu's amqp:// URL (same vhost)."""
    return "amqp://" + rabbit_url.split("://", 1)[1]


@pytest.fixture(scope="session")
def libvirt_uri(service_unavailable):
    """qemu:///system after checking it answers; sweeps guests left by killed earlier runs."""
    import libvirt

    try:
        conn = libvirt.open(LIBVIRT_URI)
    except libvirt.libvirtError as exc:
        service_unavailable(f"libvirtd at {LIBVIRT_URI} (run tools/setup_hypervisor.sh): {exc}")
    try:
        novalike.sweep_leftovers(conn, GUEST_PREFIX)
    finally:
        conn.close()
    return LIBVIRT_URI


@pytest.fixture(scope="session")
def rabbit_url(service_unavailable):
    """The broker's oslo.messaging transport URL, after a real AMQP login succeeded."""
    import kombu

    conn = kombu.Connection(amqp_url(RABBIT_URL), connect_timeout=5)
    try:
        conn.ensure_connection(max_retries=2, interval_start=0.5, timeout=10)
    except Exception as exc:  # kombu raises OperationalError, socket or auth errors
        service_unavailable(f"RabbitMQ at {RABBIT_URL} (run tools/start_rabbitmq.sh): {exc!r}")
    finally:
        conn.release()
    return RABBIT_URL


@pytest.fixture
def guest_factory(libvirt_uri, tmp_path):
    """A novalike.GuestFactory on qemu:///system; every guest and image is removed afterwards."""
    import libvirt

    conn = libvirt.open(libvirt_uri)
    factory = novalike.GuestFactory(conn, str(tmp_path), hypervisor="qemu", prefix=GUEST_PREFIX)
    try:
        yield factory
    finally:
        try:
            factory.cleanup()
        finally:
            conn.close()
