"""End to end: nova's delete.start on the real broker → the real `lifecycle-stats-agent` reads
the real QEMU guest → `compute.instance.delete.samples` consumed from the broker as billing
would, while the guest is destroyed and undefined Δ ms after the announcement (as nova does).

One agent serves the module (start ≈ 2 s); the SIGTERM-in-flight test runs its own agent on a
second host name. Bus names are unique per run (harness.BusNames) and removed afterwards.
Other engineers' domains may be on the same daemon: only our own instances are asserted on.
"""
from __future__ import annotations

import concurrent.futures
import datetime
import time
import uuid

import jsonschema
import libvirt
import pytest

from lifecycle_stats.publishing import meters, payloads, samples
from lifecycle_stats.reading import inspector
from tests.support import nova as nova_messages
from tests.integration import harness
from tests.integration.conftest import amqp_url

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

RUN = uuid.uuid4().hex[:8]
HOST = f"lst-e2e-{RUN}"
TERM_HOST = f"lst-e2e-{RUN}-term"
EVENT_WAIT = 15.0  # seconds for a delete.samples to reach billing (measured: ~55 ms)
QUIET = 1.5  # seconds without a second event before "exactly one" is believed
PRE_READ_GROUPS = (libvirt.VIR_DOMAIN_STATS_CPU_TOTAL | libvirt.VIR_DOMAIN_STATS_INTERFACE
                   | libvirt.VIR_DOMAIN_STATS_BLOCK | libvirt.VIR_DOMAIN_STATS_VCPU)
OUTCOMES = ("flush.final", "flush.last_known", "flush.unavailable")


# -- fixtures ------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def names():
    return harness.BusNames()


@pytest.fixture(scope="module")
def bus(rabbit_url, names):
    """(transport, billing consumer, nova); queues and exchanges removed afterwards."""
    with harness.billing_bus(rabbit_url, amqp_url(rabbit_url), names, [HOST, TERM_HOST],
                             project="lifecycle-stats-e2e") as (transport, billing):
        yield transport, billing, harness.Nova(transport, names)


@pytest.fixture(scope="module")
def billing(bus):
    return bus[1]


@pytest.fixture(scope="module")
def nova(bus):
    return bus[2]


@pytest.fixture(scope="module")
def agent(bus, names, libvirt_uri, rabbit_url, tmp_path_factory):
    """The module's agent; the last test stops it and checks the exit code."""
    process = harness.AgentProcess(tmp_path_factory.mktemp("agent"), host=HOST,
                                   transport_url=rabbit_url, names=names,
                                   libvirt_uri=libvirt_uri, poll_interval=1.0)
    try:
        process.start()
        yield process
    finally:
        try:
            process.stop(timeout=20)
        finally:
            process.kill()


@pytest.fixture
def reader(libvirt_uri):
    """A libvirt connection of our own, to read counters just before nova's announcement.
    Per test, like guest_factory's: others' tests restart libvirtd, closing old connections."""
    conn = libvirt.open(libvirt_uri)
    yield conn
    conn.close()


# -- helpers -------------------------------------------------------------------------------

def counters_now(agent) -> dict[str, int]:
    return dict(agent.status().get("counters", {}))


def wait_counter(agent, name: str, at_least: int, timeout: float = 10.0) -> int:
    status = agent.wait_for(lambda s: s.get("counters", {}).get(name, 0) >= at_least,
                            timeout, f"{name} >= {at_least}")
    return status["counters"][name]


def wait_outcomes(agent, at_least: int, timeout: float = 10.0) -> None:
    agent.wait_for(lambda s: sum(s.get("counters", {}).get(n, 0) for n in OUTCOMES) >= at_least,
                   timeout, f"flush outcomes >= {at_least}")


def warm_cache(agent) -> None:
    """Wait for a bulk poll that started after our guest existed, so a `last_known` has a
    cached reading to report (a poll already running may predate the guest: wait for two).
    Generous: a bulk poll waits for busy domains of other test runs (libvirt's job timeout is
    30 s), so it can stall well beyond its interval on a shared daemon."""
    wait_counter(agent, "poller.polls", agent.counter("poller.polls") + 2, timeout=45.0)


def parse_time(text: str) -> datetime.datetime:
    return datetime.datetime.fromisoformat(text)


def read_counters(conn, guest) -> tuple[dict[tuple[str, str], int], datetime.datetime]:
    """Cumulative counters as (meter, resource id) → value, read just before the announcement,
    and the moment the read began."""
    dom = conn.lookupByUUIDString(guest.instance_id)
    began = datetime.datetime.now(datetime.timezone.utc)
    [(_, stats)] = conn.domainListGetStats([dom], PRE_READ_GROUPS)
    # Ceilometer 27's cpu: the vCPUs' time + wait (tests/interop compares with its pollster)
    cpu = inspector.vcpu_time_from_stats(stats)
    # as samples.py: the vCPU sum whenever there is one, 0 included (`cpu or cpu.time` read a
    # guest whose vCPUs had no time yet as its cpu.time, and a reading of 0 looked behind)
    uid = guest.instance_id
    out = {("cpu", uid): cpu if cpu is not None else stats["cpu.time"]}
    for i in range(stats.get("block.count", 0)):
        resource = f"{uid}-{stats[f'block.{i}.name']}"
        for meter, key in (("read.requests", "rd.reqs"), ("read.bytes", "rd.bytes"),
                           ("write.requests", "wr.reqs"), ("write.bytes", "wr.bytes")):
            value = stats.get(f"block.{i}.{key}", 0)
            out[(f"disk.device.{meter}", resource)] = value
            out[(f"disk.{meter}", uid)] = out.get((f"disk.{meter}", uid), 0) + value
    for i in range(stats.get("net.count", 0)):
        resource = f"{guest.domain_name}-{uid}-{stats[f'net.{i}.name']}"
        for direction, side in (("incoming", "rx"), ("outgoing", "tx")):
            for meter, key in (("bytes", "bytes"), ("packets", "pkts"),
                               ("packets.drop", "drop"), ("packets.error", "errs")):
                out[(f"network.{direction}.{meter}", resource)] = stats[f"net.{i}.{side}.{key}"]
    return out, began


def volumes(event) -> dict[tuple[str, str], float]:
    return {(s["name"], s["resource_id"]): s["volume"] for s in event["payload"]["samples"]}


def first_events(billing, instance_ids, timeout: float = EVENT_WAIT) -> dict[str, list[dict]]:
    got = billing.wait_for_instances(instance_ids, timeout)
    missing = set(instance_ids) - set(got)
    assert not missing, f"no delete.samples for {sorted(missing)} within {timeout} s"
    return got


def assert_exactly_one(billing, instance_id: str, since_first: float = QUIET) -> dict:
    """Wait until `since_first` seconds have passed since the first event, then expect one."""
    [first, *_] = billing.by_instance()[instance_id]
    time.sleep(max(0.0, first["consumed_at"] + since_first - time.monotonic()))
    events = billing.by_instance()[instance_id]
    assert len(events) == 1, [e["payload"]["capture"] for e in events]
    return events[0]


def assert_contract(event, guest, host: str) -> None:
    """The shipped schema, envelope, identity from nova's metadata, ids as Ceilometer's."""
    payload = event["payload"]
    jsonschema.validate(payload, payloads.schema(payloads.DELETE_SAMPLES))
    assert event["event_type"] == payloads.DELETE_SAMPLES
    assert event["publisher_id"] == f"lifecycle-stats.{host}"
    message_id = nova_messages.expected_message_id(guest)
    assert event["envelope_id"] == payload["message_id"] == message_id
    assert parse_time(event["timestamp"]).tzinfo is not None
    assert {k: payload[k] for k in ("instance_id", "host", "tenant_id", "user_id",
                                    "display_name", "instance_type", "vcpus", "memory_mb",
                                    "root_gb", "ephemeral_gb")} == {
        "instance_id": guest.instance_id, "host": host, "tenant_id": guest.project_id,
        "user_id": guest.user_id, "display_name": guest.display_name,
        "instance_type": guest.flavor_name, "vcpus": guest.vcpus,
        "memory_mb": guest.memory_mb, "root_gb": guest.root_gb,
        "ephemeral_gb": guest.ephemeral_gb}
    if payload["capture"]["kind"] != payloads.UNAVAILABLE:
        assert_samples(payload, guest)


def assert_samples(payload, guest) -> None:
    uid, [tap], [disk] = guest.instance_id, guest.vnics, guest.disks
    names = {s["name"] for s in payload["samples"]}
    # Both kinds carry a reading of the running guest (the cache keeps active readings only).
    missing = (meters.REQUIRED_FOR_ACTIVE | {f"instance:{guest.flavor_name}"}) - names
    assert not missing, f"capture lacks {sorted(missing)}: {payload['capture']}"
    for s in payload["samples"]:
        if s["name"].startswith("disk.device."):
            expected = f"{uid}-{disk}"
        elif s["name"].startswith("network."):
            expected = f"{guest.domain_name}-{uid}-{tap}"
        else:
            expected = uid
        assert s["resource_id"] == expected, s
        assert s["message_id"] == samples.deterministic_id(
            uid, payload["message_id"], s["name"], s["resource_id"])
        assert (s["user_id"], s["project_id"]) == (guest.user_id, guest.project_id)
        # never later than the read, nor than nova's announcement (payloads.sample_time)
        assert parse_time(s["timestamp"]) <= parse_time(payload["capture"]["captured_at"])
    assert len({s["timestamp"] for s in payload["samples"]}) == 1


def assert_not_behind(event, before: dict, read_began: datetime.datetime) -> str:
    """Counters only grow within one QEMU process: a reading taken after our pre-read must be
    ≥ it, one completed before our pre-read began must be ≤ it. Returns what was compared."""
    capture = event["payload"]["capture"]
    got = volumes(event)
    captured_at = parse_time(capture["captured_at"])
    # a final read starts after the announcement, i.e. after our read; a last_known reading
    # is whatever was newest: a single read stamped after our read began (a stop event's)
    # came after it, one stamped well before it (the started event's) before it
    after = capture["kind"] == payloads.FINAL or (
        capture["read_path"] != "bulk" and captured_at >= read_began)
    if not after and captured_at >= read_began - datetime.timedelta(seconds=1):
        return "not compared: a read that may have overlapped the pre-read"
    for key, value in before.items():
        assert key in got, f"{key} missing from {sorted(got)}; capture {capture}"
        if after:
            assert got[key] >= value, f"{key}: event {got[key]} < pre-read {value}"
        else:
            assert got[key] <= value, f"{key}: older event {got[key]} > pre-read {value}"
    cpu = ("cpu", event["payload"]["instance_id"])
    return f"{'>=' if after else '<='} pre-read; cpu advanced {got[cpu] - before[cpu]} ns"


# -- tests ---------------------------------------------------------------------------------

@pytest.mark.parametrize("delta_ms", [0, 20, 100])
@pytest.mark.parametrize("versioned", [False, True], ids=["legacy", "versioned"])
def test_delete_then_destroy_gives_one_event_never_behind(
        agent, billing, nova, guest_factory, reader, versioned, delta_ms):
    guest, _ = guest_factory.create(paused=False)
    warm_cache(agent)
    outcomes = sum(agent.counter(n) for n in OUTCOMES)
    before, read_began = read_counters(reader, guest)
    published = time.monotonic()
    nova.delete_start(guest, HOST, versioned=versioned)
    time.sleep(delta_ms / 1000)
    guest_factory.destroy(guest)  # destroy + undefine, as nova's driver.destroy does

    first_events(billing, [guest.instance_id])
    event = assert_exactly_one(billing, guest.instance_id)
    capture = event["payload"]["capture"]
    print(f"\nΔ={delta_ms} ms {'versioned' if versioned else 'legacy'}: kind={capture['kind']} "
          f"path={capture.get('read_path')} state={capture.get('domain_state')} "
          f"age_ms={capture.get('age_ms')} consumed "
          f"{1000 * (event['consumed_at'] - published):.0f} ms after publish")
    assert capture["trigger"] == ("instance.delete.start" if versioned
                                  else "compute.instance.delete.start")
    if delta_ms >= 100:
        assert capture["kind"] == payloads.FINAL
    else:
        assert capture["kind"] in (payloads.FINAL, payloads.LAST_KNOWN)
    assert_contract(event, guest, HOST)
    print(assert_not_behind(event, before, read_began))
    wait_outcomes(agent, outcomes + 1)
    assert sum(agent.counter(n) for n in OUTCOMES) == outcomes + 1


@pytest.mark.parametrize("second", ["versioned", "legacy"],
                         ids=["legacy-then-versioned", "legacy-redelivered"])
def test_two_triggers_for_one_instance_give_one_event(
        agent, billing, nova, guest_factory, second):
    guest, _ = guest_factory.create(paused=False)
    duplicates = agent.counter("flush.duplicates")
    nova.delete_start(guest, HOST)
    nova.delete_start(guest, HOST, versioned=second == "versioned")
    time.sleep(0.1)
    guest_factory.destroy(guest)

    first_events(billing, [guest.instance_id])
    wait_counter(agent, "flush.duplicates", duplicates + 1)  # the second one was handled
    event = assert_exactly_one(billing, guest.instance_id, since_first=2.0)
    assert event["payload"]["capture"]["kind"] == payloads.FINAL
    assert event["payload"]["capture"]["trigger"] == "compute.instance.delete.start"
    assert_contract(event, guest, HOST)
    assert agent.counter("flush.duplicates") == duplicates + 1


def test_a_retried_delete_is_a_second_event_that_supersedes_the_first(
        agent, billing, nova, guest_factory):
    """nova's first delete failed before the destroy; the user deletes again later (a new
    request): the usage in between is captured, and the second event names the first."""
    guest, _ = guest_factory.create(paused=False)
    nova.delete_start(guest, HOST, request="req-first")
    nova.delete_start(guest, HOST, versioned=True, request="req-first")  # one delete: one event
    [first] = first_events(billing, [guest.instance_id])[guest.instance_id]
    nova.delete_start(guest, HOST, request="req-retry")
    deadline = time.monotonic() + EVENT_WAIT
    while len(billing.by_instance()[guest.instance_id]) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(QUIET)
    guest_factory.destroy(guest)
    events = billing.by_instance()[guest.instance_id]
    assert len(events) == 2, [e["payload"]["capture"] for e in events]
    second = events[1]
    assert first["envelope_id"] == nova_messages.expected_message_id(guest, "req-first")
    assert second["envelope_id"] == nova_messages.expected_message_id(guest, "req-retry")
    assert first["payload"]["supersedes"] is None
    assert second["payload"]["supersedes"] == first["envelope_id"]
    for event in (first, second):
        jsonschema.validate(event["payload"], payloads.schema(payloads.DELETE_SAMPLES))
        assert event["payload"]["capture"]["kind"] == payloads.FINAL
    cpu = [next(s["volume"] for s in e["payload"]["samples"] if s["name"] == "cpu")
           for e in (first, second)]
    assert cpu[1] >= cpu[0]  # the later capture carries the usage in between


def test_nothing_for_a_non_nova_domain_or_another_hosts_instance(
        agent, billing, nova, guest_factory):
    foreign, _ = guest_factory.create(paused=False, metadata=None)
    elsewhere, _ = guest_factory.create(paused=False)
    before = counters_now(agent)
    nova.delete_start(foreign, HOST)
    nova.delete_start(elsewhere, "other-host")
    nova.delete_start(elsewhere, "other-host", versioned=True)

    wait_counter(agent, "flush.not_nova", before.get("flush.not_nova", 0) + 1)
    wait_counter(agent, "bus.ignored", before.get("bus.ignored", 0) + 2)
    guest_factory.destroy(foreign)
    guest_factory.destroy(elsewhere)
    time.sleep(QUIET)
    after = counters_now(agent)
    got = billing.by_instance()
    assert foreign.instance_id not in got and elsewhere.instance_id not in got
    assert after.get("bus.triggers.legacy", 0) == before.get("bus.triggers.legacy", 0) + 1
    assert after.get("bus.ignored", 0) == before.get("bus.ignored", 0) + 2
    assert after.get("flush.not_nova", 0) == before.get("flush.not_nova", 0) + 1
    assert sum(after.get(n, 0) for n in OUTCOMES) == sum(before.get(n, 0) for n in OUTCOMES)


def test_sigterm_with_deletes_in_flight_still_delivers_all(
        billing, nova, guest_factory, names, libvirt_uri, rabbit_url, tmp_path):
    guests = [g for g, _ in guest_factory.create_many(5, paused=False)]
    ids = [g.instance_id for g in guests]
    term = harness.AgentProcess(tmp_path, host=TERM_HOST, transport_url=rabbit_url,
                                names=names, libvirt_uri=libvirt_uri, poll_interval=1.0)
    try:
        term.start()
        for guest in guests:
            nova.delete_start(guest, TERM_HOST)
        signalled = time.monotonic()
        with concurrent.futures.ThreadPoolExecutor(max_workers=6) as pool:
            stopping = pool.submit(term.stop)
            time.sleep(0.1)  # nova destroys regardless of the agent
            list(pool.map(guest_factory.destroy, guests))
            assert stopping.result() == 0
        stopped_in = time.monotonic() - signalled
        got = billing.wait_for_instances(ids, 3.0)
        by_first = {i: got[i][0]["payload"]["capture"]["kind"] for i in ids if i in got}
        restarted = len(by_first) < len(ids)
        if restarted:  # not everything drained: the next agent delivers the rest
            term.start()
            got = first_events(billing, ids)
            assert term.stop() == 0
        print(f"\nSIGTERM with 5 deletes in flight: stopped in {stopped_in:.2f} s, "
              f"{len(by_first)} delivered by it ({sorted(by_first.values())}), "
              f"restart needed: {restarted}")
        for guest in guests:
            event = assert_exactly_one(billing, guest.instance_id, since_first=0.5)
            assert_contract(event, guest, TERM_HOST)
    finally:
        term.kill()


def test_agent_stops_cleanly_on_sigterm(agent):
    assert agent.stop() == 0
    log = agent.log_file.read_text()
    assert "Traceback" not in log and " ERROR " not in log, agent.log_tail()
    assert "lifecycle-stats agent stopped" in log
