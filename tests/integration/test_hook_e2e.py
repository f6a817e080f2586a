"""The zero-race path end to end, nova as nova runs: a nova-compute stand-in process
(tests/nova_compute.py; eventlet monkey-patched, or native threads with eventlet poisoned)
loads the `lifecycle_stats` driver by name from its nova.conf beside `messagingv2`, publishes
delete.start on the real broker and destroys the real QEMU guest the moment notify() returns
(Δ = 0). The real agent process serves the driver's socket and publishes delete.samples,
which a billing consumer reads from the broker.

Bus names are unique per run and removed afterwards; only our own guests are asserted on.
"""
from __future__ import annotations

import dataclasses
import grp
import os
import threading
import time
import uuid

import oslo_messaging
import pytest

from tests.integration import harness
from tests.integration.conftest import amqp_url
from tests.nova_compute import NovaComputeProcess, write_nova_conf

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

RUN = uuid.uuid4().hex[:8]
HOST = f"lst-hook-{RUN}"
MY_GROUP = grp.getgrgid(os.getegid()).gr_name
GUESTS_PER_MODE = 4
EVENT_WAIT = 20.0
QUIET = 1.5  # seconds after the first delete.samples before "exactly one" is believed
MODES = ("eventlet", "threading")


class NovaWatcher:
    """Hears nova's own delete.start on the broker (what messagingv2 sent), by instance."""

    def __init__(self, transport, names: harness.BusNames, pool: str):
        self.seen: dict[str, list[str]] = {}
        self._cond = threading.Condition()
        targets = [oslo_messaging.Target(exchange=names.nova_exchange, topic=topic)
                   for topic in (names.legacy_topic, names.versioned_topic)]
        self._server = oslo_messaging.get_notification_listener(
            transport, targets, [self], executor="threading", pool=pool)
        self._server.start()

    def info(self, ctxt, publisher_id, event_type, payload, metadata):
        instance = payload.get("instance_id") or payload.get("nova_object.data", {}).get("uuid")
        with self._cond:
            self.seen.setdefault(instance, []).append(event_type)
            self._cond.notify_all()

    def wait_for(self, instance_id: str, count: int, timeout: float = EVENT_WAIT) -> list[str]:
        with self._cond:
            self._cond.wait_for(lambda: len(self.seen.get(instance_id, ())) >= count, timeout)
            return list(self.seen.get(instance_id, ()))

    def stop(self) -> None:
        self._server.stop()
        self._server.wait()


@pytest.fixture(scope="module")
def names():
    return harness.BusNames()


@pytest.fixture(scope="module")
def bus(rabbit_url, names):
    watch_pool = f"lst-novawatch-{RUN}"
    with harness.billing_bus(rabbit_url, amqp_url(rabbit_url), names, [HOST],
                             project="lifecycle-stats-hook-e2e",
                             extra_queues=[watch_pool]) as (transport, billing):
        watcher = NovaWatcher(transport, names, watch_pool)
        try:
            yield billing, watcher
        finally:
            watcher.stop()


@pytest.fixture(scope="module")
def agent(bus, names, libvirt_uri, rabbit_url, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("hook-agent")
    process = harness.AgentProcess(
        workdir, host=HOST, transport_url=rabbit_url, names=names, libvirt_uri=libvirt_uri,
        extra={"hook": {"socket_path": str(workdir / "run" / "hook.sock"),
                        "socket_group": MY_GROUP}})
    try:
        process.start()
        yield process
    finally:
        try:
            assert process.stop(timeout=20) == 0
        finally:
            process.kill()


def nova_process(tmp_path, names, rabbit_url, mode, socket_path, libvirt_uri=None):
    conf = write_nova_conf(tmp_path / f"nova-{mode}.conf", host=HOST,
                           transport_url=rabbit_url, socket_path=socket_path,
                           exchange=names.nova_exchange, legacy_topic=names.legacy_topic,
                           versioned_topic=names.versioned_topic)
    process = NovaComputeProcess(conf, mode, libvirt_uri=libvirt_uri,
                                 log_file=tmp_path / f"nova-{mode}.log")
    ready = process.start()
    assert ready["drivers"] == ["lifecycle_stats", "messagingv2"], ready
    return process


def exactly_one(billing, instance_id: str) -> dict:
    got = billing.wait_for_instances([instance_id], EVENT_WAIT)
    assert instance_id in got, f"no delete.samples for {instance_id} within {EVENT_WAIT} s"
    time.sleep(max(0.0, got[instance_id][0]["consumed_at"] + QUIET - time.monotonic()))
    events = billing.by_instance()[instance_id]
    assert len(events) == 1, [e["payload"]["capture"] for e in events]
    return events[0]


@pytest.mark.parametrize("mode", MODES)
def test_delta_zero_deletes_are_all_final_through_the_driver(
        agent, bus, names, rabbit_url, libvirt_uri, guest_factory, tmp_path, mode):
    billing, watcher = bus
    socket_path = agent.config_file.parent / "run" / "hook.sock"
    nova = nova_process(tmp_path, names, rabbit_url, mode, str(socket_path), libvirt_uri)
    guests = [guest_factory.create(paused=False)[0] for _ in range(GUESTS_PER_MODE)]
    hooked = agent.counter("hook.triggers.delete")
    duplicates = agent.counter("flush.duplicates")
    try:
        for guest in guests:  # as nova: both formats, then virDomainDestroy + undefine at once
            result = nova.call({"op": "delete", "guest": dataclasses.asdict(guest),
                                "host": HOST, "formats": ["legacy", "versioned"],
                                "destroy": True})
            assert result.get("destroyed") is True, (result, nova.log_tail())
        kinds = {g.instance_id: exactly_one(billing, g.instance_id)["payload"]["capture"]
                 for g in guests}
        print(f"\n{mode}: " + ", ".join(f"{c['kind']} via {c['trigger']}"
                                         for c in kinds.values()))
        assert {c["kind"] for c in kinds.values()} == {"final"}, kinds
        assert "did not capture" not in nova.log()
        # one trigger per delete through the socket (the versioned one deduped in nova)...
        assert agent.counter("hook.triggers.delete") - hooked == len(guests)
        for guest in guests:  # ...and nova's own notifications still went out on the broker
            assert sorted(watcher.wait_for(guest.instance_id, 2)) == [
                "compute.instance.delete.start", "instance.delete.start"]
        # the agent's bus listener heard both formats too, and the flush made them duplicates
        agent.wait_for(lambda s: s.get("counters", {}).get("flush.duplicates", 0)
                       >= duplicates + 2 * len(guests), EVENT_WAIT, "bus copies deduplicated")
    finally:
        assert nova.stop() == 0, nova.log_tail()


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("agent_state", ["socket-missing", "killed-stale-socket",
                                         "never-answers"])
def test_without_a_working_agent_nova_goes_on_and_still_publishes(
        bus, names, rabbit_url, tmp_path, mode, agent_state):
    import socket

    _, watcher = bus
    socket_path = tmp_path / "hook.sock"
    mute = None
    if agent_state == "never-answers":  # accepts into its backlog, never reads or answers
        mute = socket.socket(socket.AF_UNIX)
        mute.bind(str(socket_path))
        mute.listen(8)
    elif agent_state == "killed-stale-socket":  # an agent killed -9 leaves its socket file
        with socket.socket(socket.AF_UNIX) as dead:
            dead.bind(str(socket_path))
    nova = nova_process(tmp_path, names, rabbit_url, mode, str(socket_path))
    try:
        instance = str(uuid.uuid4())
        payload = {"instance_id": instance, "host": HOST, "tenant_id": "t", "user_id": "u"}
        result = nova.call({"op": "notify", "event_type": "compute.instance.delete.start",
                            "publisher_id": f"compute.{HOST}", "payload": payload})
        assert "error" not in result, result
        assert watcher.wait_for(instance, 1) == ["compute.instance.delete.start"]
        assert "did not capture" in nova.log()
        print(f"\n{mode}/{agent_state}: notify returned after {result['notify_ms'][0]:.0f} ms")
    finally:
        assert nova.stop() == 0, nova.log_tail()
        if mute is not None:
            mute.close()


def test_a_power_off_through_the_driver_caches_a_reading_and_publishes_nothing(
        agent, bus, names, rabbit_url, libvirt_uri, guest_factory, tmp_path):
    from tests.support.nova import legacy_payload

    billing, _ = bus
    socket_path = agent.config_file.parent / "run" / "hook.sock"
    nova = nova_process(tmp_path, names, rabbit_url, "threading", str(socket_path))
    guest, dom = guest_factory.create(paused=False)
    closing_reads = agent.counter("flush.action.power_off")
    try:
        result = nova.call({"op": "notify", "event_type": "compute.instance.power_off.start",
                            "publisher_id": f"compute.{HOST}",
                            "payload": legacy_payload(guest, HOST)})
        assert "error" not in result
        assert "power_off.start cached (read)" in nova.log(), nova.log_tail()
        dom.destroy()  # nova's power-off ends the QEMU process right after
        agent.wait_for(
            lambda s: s.get("counters", {}).get("flush.action.power_off", 0) > closing_reads,
            EVENT_WAIT, "the closing reading taken")
        assert agent.counter("hook.triggers.power_off") >= 1
        time.sleep(QUIET)
        assert guest.instance_id not in billing.by_instance()  # a stop is not a deletion
    finally:
        assert nova.stop() == 0, nova.log_tail()
