"""A full state_path filesystem never drops a delete: the real agent process, a real tmpfs
filled to the last byte, real QEMU and RabbitMQ.

Mounting needs root and changes the machine's mount table (for the test's lifetime), so it runs
only on a test host: CI=true or LIFECYCLE_STATS_TEST_HOST=1. Elsewhere it is skipped with that
reason; in CI a missing privilege fails loudly.
"""
from __future__ import annotations

import os
import time

import pytest

from lifecycle_stats.publishing import payloads
from tests.support import nova as nova_messages
from tests.integration import harness
from tests.support.tmpfs import fill, small_fs  # noqa: F401 (small_fs: a fixture)

@pytest.fixture
def bus(rabbit_url):
    made = harness.Bus(rabbit_url)
    yield made
    made.close()


def test_a_delete_arriving_on_a_full_disk_is_delivered_once_space_is_freed(
        small_fs, bus, guest_factory, tmp_path):
    guest, _ = guest_factory.create(paused=True)
    host = bus.host()
    billing = bus.billing()
    agent = harness.AgentProcess(tmp_path, host=host, transport_url=bus.url, names=bus.names,
                                 state_path=small_fs)
    agent.start()
    try:
        filler = fill(small_fs)
        bus.nova.delete_start(guest, host)
        # While full, nothing can be spooled: the capture is retried, then requeued (the log
        # is outside the full filesystem; the status file is not written meanwhile).
        deadline = time.monotonic() + 60
        while "not spooled (attempt 2 of" not in agent.log_file.read_text():
            assert time.monotonic() < deadline, agent.log_tail()
            time.sleep(0.2)
        assert billing.by_instance() == {}
        assert "database or disk is full" in agent.log_file.read_text()

        os.unlink(filler)
        events = billing.wait_for_instances([guest.instance_id], timeout=60)[guest.instance_id]
        [event] = {e["envelope_id"]: e for e in events}.values()
        assert event["envelope_id"] == nova_messages.expected_message_id(guest)
        assert event["payload"]["capture"]["kind"] == payloads.FINAL
        status = agent.wait_for(lambda s: s["counters"].get("flush.final") == 1, 30,
                                "the capture counted")
        assert status["counters"]["bus.requeued"] >= 2
        assert status["counters"]["flush.deferred"] == status["counters"]["bus.requeued"]
        assert agent.stop() == 0
    finally:
        agent.kill()
