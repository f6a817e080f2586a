"""Operating the real agent process (real QEMU guests, real RabbitMQ): its Prometheus endpoint
and textfile after real deletes, and SIGHUP (reload) during a burst of deletes, which must
lose no trigger, reopen the log file and apply the mutable options re-read from the file.
"""
from __future__ import annotations

import concurrent.futures
import signal
import time
import uuid

import pytest

from tests.integration import harness, prom
from tests.integration.conftest import amqp_url

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

RUN = uuid.uuid4().hex[:8]
HOST = f"lst-ops-{RUN}"
EVENT_WAIT = 20.0
BURST = 6


@pytest.fixture(scope="module")
def names():
    return harness.BusNames()


@pytest.fixture(scope="module")
def bus(rabbit_url, names):
    with harness.billing_bus(rabbit_url, amqp_url(rabbit_url), names, [HOST],
                             project="lifecycle-stats-ops") as (transport, billing):
        yield billing, harness.Nova(transport, names)


@pytest.fixture(scope="module")
def agent(bus, names, libvirt_uri, rabbit_url, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("ops-agent")
    port = prom.free_port()
    process = harness.AgentProcess(
        workdir, host=HOST, transport_url=rabbit_url, names=names, libvirt_uri=libvirt_uri,
        poll_interval=1.0,
        extra={"metrics": {"port": str(port), "textfile": str(workdir / "agent.prom")}})
    process.metrics_port = port
    try:
        process.start()
        yield process
    finally:
        try:
            process.stop(timeout=30)
        finally:
            process.kill()


def delivered(billing, guests) -> dict:
    ids = [g.instance_id for g in guests]
    got = billing.wait_for_instances(ids, EVENT_WAIT)
    missing = sorted(set(ids) - set(got))
    assert not missing, f"no delete.samples for {missing}"
    return got


def test_every_family_is_there_at_zero_before_the_first_event(agent):
    """Alerts and rate() need the series before the first event: the real agent's first
    scrape has every family, label values as labels at 0 (regression: per-value names,
    families appearing at their first increment)."""
    first = prom.scrape(agent.metrics_port)
    expected = [("lifecycle_stats_conduit_errors_total", {"conduit": "messagingv2"}),
                ("lifecycle_stats_conduit_rejected_total", {"conduit": "messagingv2"}),
                                ("lifecycle_stats_closing_reads_total", {"action": "shelve"}),
                ("lifecycle_stats_hook_triggers_total", {"action": "delete"}),
                ("lifecycle_stats_usage_exists_total", {"source": "deleted"}),
                ("lifecycle_stats_usage_exists_total", {"source": "nova_audit"}),
                ("lifecycle_stats_bus_audits_total", {"format": "versioned"}),
                ("lifecycle_stats_captures_total", {"kind": "final"}),
                ("lifecycle_stats_bus_rejected_total", {}),
                ("lifecycle_stats_flush_read_errors_total", {}),
                ("lifecycle_stats_flush_duration_seconds_count", {"outcome": "final"})]
    for name, labels in expected:
        assert (name, frozenset(labels.items())) in first, (name, labels)
        assert prom.value(first, name, **labels) == 0, (name, labels)
    assert not [name for name, _ in first if "messagingv2" in name or "_delete_" in name]


def test_metrics_endpoint_after_a_real_delete(agent, bus, guest_factory):
    billing, nova = bus
    before = prom.scrape(agent.metrics_port)
    guest, _ = guest_factory.create(paused=False)
    agent.wait_for(lambda s: s.get("instances", 0) >= 1, 30, "the guest to be known")
    nova.delete_start(guest, HOST)
    time.sleep(0.05)
    guest_factory.destroy(guest)
    kind = delivered(billing, [guest])[guest.instance_id][0]["payload"]["capture"]["kind"]
    agent.wait_for(lambda s: s["spool"]["depth"] == 0, 15, "the spool to drain")

    after = prom.scrape(agent.metrics_port)
    kinds = {"kind": kind}
    assert prom.value(after, "lifecycle_stats_captures_total", **kinds) == \
        prom.value(before, "lifecycle_stats_captures_total", **kinds) + 1
    assert prom.value(after, "lifecycle_stats_flush_duration_seconds_count", outcome=kind) == \
        prom.value(before, "lifecycle_stats_flush_duration_seconds_count", outcome=kind) + 1
    assert prom.value(after, "lifecycle_stats_bus_triggers_total", format="legacy") >= 1
    assert prom.value(after, "lifecycle_stats_hook_triggers_total", action="delete") == \
        prom.value(before, "lifecycle_stats_hook_triggers_total", action="delete")  # the bus
    assert prom.value(after, "lifecycle_stats_conduit_sent_total", conduit="messagingv2") >= 1
    assert prom.value(after, "lifecycle_stats_conduit_pending_records",
                      conduit="messagingv2") == 0
    for connection in ("libvirt_flush", "libvirt_poll", "libvirt_events", "bus"):
        assert prom.value(after, "lifecycle_stats_connection_up", connection=connection) == 1
    assert prom.value(after, "lifecycle_stats_conduit_up", conduit="messagingv2") == 1
    assert 0 <= prom.value(after, "lifecycle_stats_last_successful_poll_age_seconds") < 30
    assert any(name == "lifecycle_stats_build_info" for name, _ in after)
    assert any(name == "lifecycle_stats_process_cpu_seconds_total" for name, _ in after)
    assert not [labels for _, labels in after if any(k in ("instance_id", "uuid", "domain")
                                                    for k, _ in labels)]
    # The textfile for node_exporter carries the same families, rewritten with the status.
    textfile = agent.workdir / "agent.prom"
    agent.wait_for(lambda s: prom.value(prom.parse(textfile.read_text()),
                                        "lifecycle_stats_captures_total", **kinds)
                   == prom.value(after, "lifecycle_stats_captures_total", **kinds),
                   10, "the textfile to catch up")


def test_sighup_during_a_burst_loses_nothing_and_reloads(agent, bus, guest_factory):
    billing, nova = bus
    guests = [g for g, _ in guest_factory.create_many(BURST, paused=False)]
    agent.wait_for(lambda s: s.get("instances", 0) >= BURST, 30, "the guests to be known")
    # An operator's edit: mutable options change, logrotate moves the log file away.
    text = agent.config_file.read_text()
    agent.config_file.write_text(text.replace("status_interval = 0.5", "status_interval = 0.7"))
    rotated = agent.log_file.with_name(agent.log_file.name + ".1")
    agent.log_file.rename(rotated)

    with concurrent.futures.ThreadPoolExecutor(max_workers=BURST) as pool:
        for n, guest in enumerate(guests):
            nova.delete_start(guest, HOST, versioned=bool(n % 2))
            if n in (1, BURST // 2, BURST - 1):
                agent.proc.send_signal(signal.SIGHUP)
        time.sleep(0.05)
        list(pool.map(guest_factory.destroy, guests))
    delivered(billing, guests)
    assert agent.proc.poll() is None, "SIGHUP must not stop the agent"
    time.sleep(1.0)  # a duplicate would arrive within this
    assert [len(billing.by_instance()[g.instance_id]) for g in guests] == [1] * BURST
    status = agent.wait_for(lambda s: s.get("interval") == 0.7, 10, "the new status_interval")
    assert status["pid"] == agent.proc.pid
    agent.wait_for(lambda s: agent.log_file.exists()
                   and "reload:" in agent.log_file.read_text(), 10, "a reopened log file")
    assert "mutable option(s) changed" in agent.log_file.read_text()
    assert "Option DEFAULT.status_interval changed from [0.5] to [0.7]" in \
        agent.log_file.read_text() + rotated.read_text()


def test_agent_stops_cleanly_after_reloads(agent):
    assert agent.stop() == 0
    log = agent.log_file.read_text()
    assert "Traceback" not in log and " ERROR " not in log, agent.log_tail()
    assert "lifecycle-stats agent stopped" in log
