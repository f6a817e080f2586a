"""Usage over an instance's whole life, on the real libvirtd with real QEMU guests and the
real RabbitMQ, the agent running as its own process (harness.AgentProcess).

Nova is played as nova-compute does it: a process-ending `.start` on the bus, then the driver
call (destroy / create). Bounds come from our own reads of the guest's counters just before
the announcement and just after the agent took its reading. Every guest here is started while
the agent watches, so its usage counts from zero (boot cpu included): a QEMU process's cpu
counter starts at zero. A wrong sum fails (issue 18).
"""
from __future__ import annotations

import datetime
import time
import uuid

import libvirt
import pytest

from lifecycle_stats.publishing import payloads
from tests.integration import harness, usage_world
from tests.integration.conftest import amqp_url

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

RUN = uuid.uuid4().hex[:8]
HOST = f"lst-usage-{RUN}"
KILL_HOST = f"lst-usage-{RUN}-kill"
ENRICH_HOST = f"lst-usage-{RUN}-enrich"
PERIODS_HOST = f"lst-usage-{RUN}-periods"
EVENT_WAIT = 20.0
HOUR_END_MARGIN = 60.0  # seconds; the longest test here takes 15 s on this machine


@pytest.fixture(scope="module")
def names():
    return harness.BusNames()


@pytest.fixture(scope="module")
def bus(rabbit_url, names):
    with harness.billing_bus(rabbit_url, amqp_url(rabbit_url), names,
                             [HOST, KILL_HOST, ENRICH_HOST, PERIODS_HOST], project="lifecycle-stats-usage",
                             event_types=None) as (transport, billing):
        yield billing, harness.Nova(transport, names)


@pytest.fixture(scope="module")
def billing(bus):
    return bus[0]


@pytest.fixture(scope="module")
def nova(bus):
    return bus[1]


def start_agent(workdir, host, names, libvirt_uri, rabbit_url,
                extra=None) -> harness.AgentProcess:
    process = harness.AgentProcess(workdir, host=host, transport_url=rabbit_url, names=names,
                                   libvirt_uri=libvirt_uri, poll_interval=1.0, extra=extra)
    process.start()
    return process


def stop(process: harness.AgentProcess) -> None:
    try:
        process.stop(timeout=20)
    finally:
        process.kill()


@pytest.fixture(scope="module")
def agent(names, libvirt_uri, rabbit_url, tmp_path_factory, bus):
    process = start_agent(tmp_path_factory.mktemp("usage"), HOST, names, libvirt_uri,
                          rabbit_url)
    try:
        yield process
    finally:
        stop(process)


@pytest.fixture(autouse=True)
def clear_of_the_hour_end():
    """The agents here close hourly audit periods (the default), and an exists at the hour
    splits a life's usage in two: the checks below that read one exists (or the final one's
    process count) would then see a part. A test that could straddle the hour waits it out;
    test_usage_adds_up_across_audit_periods crosses periods on purpose."""
    left = 3600.0 - time.time() % 3600.0  # UTC hours are whole hours of the Unix epoch
    if left < HOUR_END_MARGIN:
        time.sleep(left + 1.0)


@pytest.fixture
def reader(libvirt_uri):
    conn = libvirt.open(libvirt_uri)
    yield conn
    conn.close()


# -- helpers -------------------------------------------------------------------------------

def cpu(conn, guest) -> int:
    return conn.lookupByUUIDString(guest.instance_id).info()[4]


def bump(agent, counter: str, action) -> None:
    """Run action (nova's announcement), then wait until the agent counted its reading."""
    before = agent.counter(counter)
    action()
    agent.wait_for(lambda s: s.get("counters", {}).get(counter, 0) > before, 20.0, counter)


def polled(agent, times: int = 2) -> None:
    """Wait for bulk polls that started after now (a running one may predate our change)."""
    target = agent.counter("poller.polls") + times
    agent.wait_for(lambda s: s.get("counters", {}).get("poller.polls", 0) >= target, 45.0,
                   "poller.polls")


def delete_events(billing, guest) -> dict[str, dict]:
    """delete.samples and the final exists of guest, once both arrived."""
    deadline = time.monotonic() + EVENT_WAIT
    while time.monotonic() < deadline:
        got = {e["event_type"]: e for e in billing.by_instance().get(guest.instance_id, [])}
        if {"compute.instance.delete.samples", "compute.instance.exists"} <= set(got):
            for event in got.values():
                payloads.validate_payload(event["event_type"], event["payload"])
            return got
        time.sleep(0.1)
    raise AssertionError(f"events of {guest.instance_id}: {billing.by_instance()}")


def running_guest(guest_factory, agent):
    guest, dom = guest_factory.create(paused=False)
    polled(agent)
    return guest, dom


# -- tests ---------------------------------------------------------------------------------

def test_usage_continues_across_power_off_and_on(agent, nova, billing, guest_factory,
                                                 reader):
    guest, dom = running_guest(guest_factory, agent)
    first_low = cpu(reader, guest)
    bump(agent, "flush.action.power_off",
         lambda: nova.delete_start(guest, HOST, action="power_off"))
    first_high = cpu(reader, guest)
    dom.destroy()  # nova's power-off: the first QEMU process ends, the domain stays defined
    dom.create()  # power-on: a new QEMU process, counters from zero
    polled(agent)
    second_low = cpu(reader, guest)
    bump(agent, "flush.final", lambda: nova.delete_start(guest, HOST))
    second_high = cpu(reader, guest)
    guest_factory.destroy(guest)
    events = delete_events(billing, guest)
    usage = events["compute.instance.exists"]["payload"]["usage"]
    assert first_low + second_low <= usage["cpu_time_ns"] <= first_high + second_high
    assert usage["processes"] == 2 and usage_world.read_to_the_destroy(usage)
    assert events["compute.instance.delete.samples"]["payload"]["capture"]["complete"] is True


def test_usage_continues_across_a_hard_reboot(agent, nova, billing, guest_factory, reader):
    guest, dom = running_guest(guest_factory, agent)
    first_low = cpu(reader, guest)
    bump(agent, "flush.action.reboot",
         lambda: nova.delete_start(guest, HOST, action="reboot", versioned=True))
    first_high = cpu(reader, guest)
    dom.destroy()  # nova's hard reboot: destroy, then create the domain again
    dom.create()
    polled(agent)
    second_low = cpu(reader, guest)
    bump(agent, "flush.final", lambda: nova.delete_start(guest, HOST, versioned=True))
    second_high = cpu(reader, guest)
    guest_factory.destroy(guest)
    usage = delete_events(billing, guest)["compute.instance.exists"]["payload"]["usage"]
    assert first_low + second_low <= usage["cpu_time_ns"] <= first_high + second_high
    assert usage["processes"] == 2 and usage_world.read_to_the_destroy(usage)


def test_power_off_then_delete_is_complete_with_the_domain_shut_off(agent, nova, billing,
                                                                    guest_factory, reader):
    guest, dom = running_guest(guest_factory, agent)
    bump(agent, "flush.action.power_off",
         lambda: nova.delete_start(guest, HOST, action="power_off"))
    closing_high = cpu(reader, guest)
    dom.destroy()
    time.sleep(1.5)  # powered off for a while (polls skip it: only active domains are read)
    bump(agent, "flush.last_known", lambda: nova.delete_start(guest, HOST))
    guest_factory.destroy(guest)
    events = delete_events(billing, guest)
    capture = events["compute.instance.delete.samples"]["payload"]["capture"]
    usage = events["compute.instance.exists"]["payload"]["usage"]
    # complete, unless a 1 s poll landed between the closing read and the destroy: then only
    # that tail is unread, and both say so (doc/billing.md)
    assert usage_world.read_to_the_destroy(usage)
    assert capture["kind"] == "last_known" and capture["complete"] is usage["complete"]
    assert capture["domain_state"] == "shutoff" and capture["read_state"] == "running"
    samples = events["compute.instance.delete.samples"]["payload"]["samples"]
    [cpu_sample] = [s for s in samples if s["name"] == "cpu"]
    assert 0 < cpu_sample["volume"] <= closing_high
    # One process, from zero, to its closing reading. Usage bills libvirt's cpu.time (the
    # whole QEMU process); the `cpu` sample is Ceilometer's Σ vCPU time, part of it.
    assert cpu_sample["volume"] <= usage["cpu_time_ns"] <= closing_high


def test_a_delete_racing_destroy_is_stale_and_the_loss_is_bounded(agent, nova, billing,
                                                                  guest_factory, reader):
    guest, dom = running_guest(guest_factory, agent)
    cpu_at_destroy = cpu(reader, guest)
    nova.delete_start(guest, HOST)
    dom.destroy()  # Δ ≈ 0: nova destroys before the agent's read
    guest_factory.destroy(guest)
    events = delete_events(billing, guest)
    capture = events["compute.instance.delete.samples"]["payload"]["capture"]
    usage = events["compute.instance.exists"]["payload"]["usage"]
    if capture["kind"] == "final":  # the agent won the race after all: nothing to bound
        assert capture["complete"] is True and usage_world.read_to_the_destroy(usage)
        return
    assert capture["kind"] == "last_known" and capture["complete"] is False
    assert capture["domain_state"] in ("shutoff", "gone")  # destroyed; undefined or not yet
    [missed] = usage["usage_incomplete"]
    assert usage["complete"] is False and 0 < missed["seconds"] < 45
    # what the polls read before the destroy is accounted (a poll may land in the few ms
    # between our read and the destroy: 1 s of cpu of slack); the rest is the bounded loss
    assert 0 < usage["cpu_time_ns"] <= cpu_at_destroy + 10**9


def test_kill_minus_9_mid_period_keeps_the_ledger(names, libvirt_uri, rabbit_url, nova,
                                                   billing, guest_factory, reader, tmp_path):
    process = start_agent(tmp_path, KILL_HOST, names, libvirt_uri, rabbit_url)
    try:
        guest, dom = running_guest(guest_factory, process)
        before_kill = cpu(reader, guest)
        polled(process)
        process.kill()  # SIGKILL: nothing flushed, closed or drained
        process.start()  # same state_path: the ledger is all it has
        polled(process)
        bump(process, "flush.final", lambda: nova.delete_start(guest, KILL_HOST))
        guest_factory.destroy(guest)
        usage = delete_events(billing, guest)["compute.instance.exists"]["payload"]["usage"]
        assert usage["cpu_time_ns"] >= before_kill  # read before the kill, kept
        assert usage["processes"] == 1 and usage_world.read_to_the_destroy(usage)
    finally:
        stop(process)


def test_nova_s_own_exists_is_enriched_for_exactly_its_window(names, libvirt_uri, rabbit_url,
                                                             nova, billing, guest_factory,
                                                             tmp_path):
    process = start_agent(tmp_path, ENRICH_HOST, names, libvirt_uri, rabbit_url,
                          extra={"usage": {"enrich_nova_exists": "true"}})
    try:
        guest, _ = running_guest(guest_factory, process)
        polled(process)
        now = datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0)
        begin, end = now - datetime.timedelta(hours=1), now + datetime.timedelta(hours=1)
        nova.exists(guest, ENRICH_HOST, begin, end)
        nova.exists(guest, ENRICH_HOST, begin, end, versioned=True)  # format "both"
        process.wait_for(lambda s: s.get("counters", {}).get("bus.audits.versioned", 0) >= 1,
                         20.0, "both exists heard")
        deadline = time.monotonic() + EVENT_WAIT
        while time.monotonic() < deadline and not billing.by_instance().get(guest.instance_id):
            time.sleep(0.1)
        time.sleep(1.0)  # a second copy would have arrived by now
        [event] = billing.by_instance()[guest.instance_id]
        payload = event["payload"]
        payloads.validate_payload(event["event_type"], payload)
        assert event["event_type"] == "compute.instance.exists"
        assert event["publisher_id"] == f"lifecycle-stats.{ENRICH_HOST}"
        assert payload["audit_period_beginning"] == str(begin.replace(tzinfo=None))
        assert payload["audit_period_ending"] == str(end.replace(tzinfo=None))
        assert payload["period_source"] == "nova_audit" and payload["final"] is False
        assert payload["usage"]["cpu_time_ns"] > 0 and payload["usage"]["processes"] == 1
        assert set(payload["bandwidth"]) == set(guest.vnics)
    finally:
        stop(process)


# -- issue 18's outside-in scenarios: billing's sum against our own reads --------------------

@pytest.fixture
def world(agent, nova, billing, guest_factory, libvirt_uri):
    made = usage_world.World(agent, nova, billing, guest_factory, libvirt_uri)
    yield made
    made.close()


def assert_adds_up(world, life, *, processes: int) -> None:
    """Billing's sum over every exists lies between our reads before each announcement and
    before each stop: nothing the QEMU processes used up to their closing reads is missing,
    and nothing beyond them is billed."""
    billed = world.billed(life)
    assert billed is not None, f"no final exists for {life.guest.instance_id}"
    assert sum(life.low) <= billed.cpu_time_ns <= sum(life.high), (
        f"billed {billed.cpu_time_ns} ns, used {sum(life.low)}..{sum(life.high)} ns "
        f"over {len(life.low)} processes in {billed.exists} exists")
    # unread only from the last poll to nova's destroy, if at all (doc/billing.md)
    assert (billed.finals, billed.processes, billed.complete) == (1, processes, True), \
        billed.incomplete
    assert billed.complete


def test_power_cycle_then_agent_kill_minus_9_then_delete_bills_everything_used(
        names, libvirt_uri, rabbit_url, nova, billing, guest_factory, tmp_path):
    process = start_agent(tmp_path, KILL_HOST, names, libvirt_uri, rabbit_url)
    own = usage_world.World(process, nova, billing, guest_factory, libvirt_uri)
    try:
        life = usage_world.power_cycle_kill_delete(own)
        assert_adds_up(own, life, processes=2)
    finally:
        own.close()
        stop(process)


def test_a_failed_delete_ends_nothing_and_the_real_delete_bills_everything(world):
    life = usage_world.failed_delete_then_delete(world)
    assert_adds_up(world, life, processes=2)


def test_soft_delete_is_a_closing_read_and_the_reclaim_bills_everything(world):
    life = usage_world.soft_delete_then_reclaim(world)
    assert_adds_up(world, life, processes=1)


def test_a_resize_revert_is_read_on_the_destination_before_it_destroys(world, agent):
    """Defect 9 on a real guest: nova's exists with task_state resize_reverting, published
    before the destroy, gets the destination's closing read."""
    reverts = agent.counter("flush.action.resize_revert")
    life = usage_world.resize_then_revert(world)
    assert agent.counter("flush.action.resize_revert") == reverts + 1
    assert_adds_up(world, life, processes=3)


def test_usage_adds_up_across_audit_periods(names, libvirt_uri, rabbit_url, nova, billing,
                                            guest_factory, tmp_path):
    """Periods of 5 s: the life below spans several, and billing's sum over every exists
    (deduplicated by message_id) is what the QEMU processes used, as with one period."""
    process = start_agent(tmp_path, PERIODS_HOST, names, libvirt_uri, rabbit_url,
                          extra={"usage": {"audit_period": "5s"}})
    own = usage_world.World(process, nova, billing, guest_factory, libvirt_uri)
    try:
        life = own.boot()
        own.stop(life, "power_off")
        time.sleep(5.0)  # off for a whole period: its exists has no growth
        own.start(life)
        own.delete(life)
        billed = own.billed(life)
        assert billed is not None, f"no final exists for {life.guest.instance_id}"
        assert billed.exists >= 3 and billed.finals == 1
        assert sum(life.low) <= billed.cpu_time_ns <= sum(life.high), (
            f"billed {billed.cpu_time_ns} ns, used {sum(life.low)}..{sum(life.high)} ns "
            f"in {billed.exists} exists")
        [final] = [e["payload"] for e in own.exists_of(life) if e["payload"]["final"]]
        # the first process ended periods before the delete: the final exists alone is a part
        assert final["usage"]["cpu_time_ns"] < sum(life.low)
    finally:
        own.close()
        stop(process)
