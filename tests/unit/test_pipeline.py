"""The core's one front door (capture/pipeline.py): routing by action, one typed outcome and
its mapping to the bus's and the hook's replies, the deletion walk, and that the agent, the
replay player and the benchmarks all build the core through it. Real SQLite spool and ledger,
in-memory libvirt stand-ins."""
from __future__ import annotations

import ast
import dataclasses
import datetime
import pathlib

import oslo_messaging
import pytest

from lifecycle_stats import counters
from lifecycle_stats.capture.nova_waiting import NovaWaiting
from lifecycle_stats.capture.pipeline import Pipeline, Readers, Settings
from lifecycle_stats.exceptions import ShuttingDown
from lifecycle_stats.interfaces import Outcome
from lifecycle_stats.listeners import bus, hook_answers, hook_server
from lifecycle_stats.listeners.nova import protocol as hook_protocol
from lifecycle_stats.publishing import payloads, spool
from lifecycle_stats.records import AuditWindow, StopAnnouncement, LifecycleEvent
from lifecycle_stats.usage import periods
from lifecycle_stats.usage.ledger import UsageLedger
from tests.support.fakes import NOW, UUID, FakeInspector, FakeRegistry, make_info, make_reading
from tests.support.nova import legacy_start_payload

ROOT = pathlib.Path(__file__).resolve().parents[2]
HOST = "cmp1"
NOT_NOVA = "0b0b0b0b-0000-4000-8000-000000000009"
PARTS = {"Flusher", "ClosingReads", "DomainEventHandler", "Poller", "Observations",
         "LastReadings", "ExistsReporter", "DeleteReader"}
EXISTS = "compute.instance.exists"


class PollingInspector(FakeInspector):
    def poll(self):
        return dict(self.readings)


class Core:
    def __init__(self, state: pathlib.Path, readings=None) -> None:
        self.counters = counters.Counters()
        self.spool = spool.Spool(str(state / "spool.sqlite"), conduits=["test"],
                                 counters=self.counters)
        self.ledger = UsageLedger(str(state / "usage.sqlite"), periods.parse("hour"))
        self.registry = FakeRegistry({UUID: make_info()}, not_nova=[NOT_NOVA])
        self.woken = 0
        self.door = Pipeline(
            readers=Readers.one(PollingInspector(readings if readings is not None
                                              else {UUID: make_reading()})),
            registry=self.registry, spool=self.spool, ledger=self.ledger,
            settings=Settings.for_host(HOST), counters=self.counters, clock=lambda: NOW,
            on_spooled=self.wake)

    def wake(self) -> None:
        self.woken += 1

    def spooled(self) -> list[str]:
        """What senders find once the publication thread has built the captures (and
        accounted their deletions), here synchronously."""
        self.door.publication.build_waiting()
        return [n.event_type for _, n in self.spool.pending("test", 100)]

    def close(self) -> None:
        self.spool.close()
        self.ledger.close()


@pytest.fixture
def core(tmp_path):
    made = Core(tmp_path)
    yield made
    made.close()


def announce(action: str = "delete", instance_id: str = UUID) -> StopAnnouncement:
    return StopAnnouncement(instance_id=instance_id, event_type=f"compute.instance.{action}.start",
                         host=HOST, received_at=NOW, action=action)


def undefined(instance_id: str = UUID) -> LifecycleEvent:
    """libvirt's undefine, as nova's destroy ends: the evidence that the delete happened."""
    return LifecycleEvent(instance_id, "instance-0000002a", "undefined", "removed", NOW)


def test_a_deletion_spools_its_samples_then_its_final_exists_and_wakes_the_senders(core):
    assert core.door.announced(announce()) is Outcome.FINAL
    assert core.spooled() == [payloads.DELETE_SAMPLES]  # announced: not an end yet
    assert core.ledger.ended(UUID) is None
    core.door.lifecycle(undefined())  # the domain is gone: the instance has ended
    assert core.spooled() == [payloads.DELETE_SAMPLES, EXISTS]
    assert core.ledger.ended(UUID) is not None
    woken = core.woken
    assert woken > 0
    assert core.door.announced(announce()) is Outcome.DUPLICATE  # the bus copy after the hook's
    assert core.spooled() == [payloads.DELETE_SAMPLES, EXISTS] and core.woken == woken


@pytest.mark.allow_error_logs
def test_the_answer_comes_before_the_senders_are_woken(core, caplog):
    heard = []
    assert core.door.announced(announce(), answer=lambda o: heard.append((o, core.woken))) \
        is Outcome.FINAL
    assert heard == [(Outcome.FINAL, 0)] and core.woken > 0  # told, then the senders woken
    core.door.announced(announce(), answer=lambda o: 1 / 0)  # a broken listener...
    assert "answering duplicate failed" in caplog.text  # ...is logged; the capture stands


def test_publishing_waits_for_a_capture_nova_waits_for_and_not_for_the_bus_s(core):
    """While the hook's capture runs (up to nova's answer), publishing's wait_clear() waits,
    and after it until nova's own copy of the announcement is back from the bus; a capture
    from the bus (nobody waiting) holds nothing (capture/nova_waiting.py)."""
    entered = []

    class Recording(NovaWaiting):
        def capture(self, instance_id=None):
            entered.append(instance_id)
            return super().capture(instance_id)

    core.door.nova_waiting = waiting = Recording(hold=30.0)
    assert core.door.announced(announce()) is Outcome.FINAL  # the bus's: nobody waits
    assert entered == [] and waiting.wait_clear(0.01) is True
    during = []
    core.door.announced(announce(), answer=lambda o: during.append(waiting.wait_clear(0.01)))
    assert entered == [UUID] and during == [False]
    assert waiting.wait_clear(0.01) is False  # answered; nova's copy not back yet
    assert core.door.announced(announce()) is Outcome.DUPLICATE  # nova's copy, from the bus
    assert waiting.wait_clear(0.01) is True


def test_nova_waits_for_the_capture_alone_and_the_accounting_follows_the_build(core):
    assert core.door.announced(announce()) is Outcome.FINAL
    assert core.spool.pending("test", 10) == [] and core.spool.depth() == 1  # the capture
    core.door.lifecycle(undefined())  # nova's destroy, before the publication thread ran
    assert core.ledger.ended(UUID) is None  # the announcement reaches the ledger with the build
    assert core.spooled() == [payloads.DELETE_SAMPLES, EXISTS]
    assert core.ledger.ended(UUID) is not None


def test_the_senders_are_woken_before_the_publication_thread(core):
    """The senders build and publish a fresh capture; the publication thread (accounting, the
    swap) comes after them and lingers, so it does not compete with their build."""
    woken = []
    core.door._on_spooled = lambda: woken.append("senders")
    core.door.publication.wake = lambda: woken.append("publication")
    core.door.announced(announce())
    assert woken == ["senders", "publication"]
    assert Settings.for_host(HOST).publication_linger > 0


def test_another_stop_takes_a_closing_reading_and_publishes_nothing(core):
    assert core.door.announced(announce("power_off")) is Outcome.READ
    assert core.spooled() == [] and core.woken == 0
    latest = core.ledger.latest(UUID)
    assert latest is not None and latest.closed  # the process's closing reading
    assert core.door.observations.cache.get(UUID) is not None
    assert core.counters.get("flush.action.power_off") == 1


def test_a_stop_of_a_domain_already_gone_is_missed(tmp_path):
    gone = Core(tmp_path, readings={})
    try:
        assert gone.door.announced(announce("reboot")) is Outcome.MISSED
        assert gone.spooled() == [] and gone.counters.get("flush.action_missed") == 1
    finally:
        gone.close()


def test_a_domain_not_novas_is_never_reported(core):
    assert core.door.announced(announce(instance_id=NOT_NOVA)) is Outcome.NOT_NOVA
    assert core.spooled() == [] and core.woken == 0


def test_after_close_a_deletion_is_refused_for_redelivery(core):
    assert core.door.close(timeout=1) is True
    with pytest.raises(ShuttingDown):
        core.door.announced(announce())
    assert core.spooled() == []


def test_libvirt_events_and_polls_go_through_the_same_observations(core):
    assert core.door.poll() == 1
    assert core.ledger.latest(UUID) is not None
    assert core.door.observations.cache.get(UUID) is not None
    forgotten = []
    core.registry.forget = forgotten.append
    core.door.lifecycle(LifecycleEvent(UUID, "instance-1", "undefined", "", NOW))
    assert forgotten == [UUID]


def test_polls_and_resyncs_keep_the_announced_readers_domain_handles(tmp_path):
    """So a delete's read makes one libvirt call (reading/domain_handles.py)."""
    learned = []

    class Learning(PollingInspector):
        def learn_domains(self):
            learned.append("announced")

    made = Core(tmp_path)
    made.registry.sync = lambda: {UUID}  # libvirt's domains, as a resync lists them
    try:
        door = Pipeline(readers=Readers(announced=Learning(), poll=PollingInspector(
            {UUID: make_reading()}), events=PollingInspector()), registry=made.registry,
            spool=made.spool, ledger=made.ledger, settings=Settings.for_host(HOST),
            counters=made.counters, clock=lambda: NOW)
        door.poll()
        door.poller.poll_logged()  # the poller thread's own poll
        door.resync()
        assert learned == ["announced"] * 3
    finally:
        made.close()


def test_a_nova_audit_window_is_enriched_into_an_exists(core):
    core.door.poll()
    window = AuditWindow(instance_id=UUID, event_type=EXISTS, host=HOST,
                         begin=NOW - datetime.timedelta(hours=1), end=NOW, received_at=NOW)
    core.door.audit(window)
    assert core.spooled() == [EXISTS]


# -- one outcome, each listener's reply ------------------------------------------------------

def test_the_hook_maps_every_outcome_to_its_status():
    assert set(hook_answers.STATUS) == set(Outcome)
    assert {o for o, status in hook_answers.STATUS.items()
            if status == hook_protocol.CAPTURED} == {o for o in Outcome if o.spooled} | {
        Outcome.DUPLICATE}
    assert hook_answers.STATUS[Outcome.READ] == hook_protocol.CACHED
    assert hook_answers.STATUS[Outcome.MISSED] == hook_answers.STATUS[Outcome.NOT_NOVA] \
        == hook_protocol.IGNORED


def test_the_bus_acknowledges_every_outcome():
    assert bus.REPLY == dict.fromkeys(Outcome, oslo_messaging.NotificationResult.HANDLED)


def hook_request(action: str, instance_id: str) -> dict:
    legacy, _ = hook_protocol.ACTION_EVENTS[action]
    return {"v": hook_protocol.VERSION, "event_type": f"compute.instance.{legacy}",
            "publisher_id": f"compute.{HOST}", "request_id": f"req-{action}",
            "timestamp": "2026-11-22 01:00:00.000000",
            "payload": legacy_start_payload(instance_id, HOST)}


@pytest.mark.parametrize("action, instance_id, status, outcome", [
    ("delete", UUID, hook_protocol.CAPTURED, "final"),
    ("power_off", UUID, hook_protocol.CACHED, "read"),
    ("delete", NOT_NOVA, hook_protocol.IGNORED, "not_nova"),
])
def test_the_hook_answers_nova_from_the_cores_outcome(core, tmp_path, action, instance_id,
                                                       status, outcome):
    server = hook_server.HookServer(str(tmp_path / "hook.sock"), host=HOST, group="",
                                    on_trigger=core.door.announced, clock=lambda: NOW)
    answer = server.answer(hook_request(action, instance_id))
    assert (answer["status"], answer["outcome"]) == (status, outcome)


def test_the_bus_hands_announcements_to_the_core(core):
    endpoint = bus.DeleteStartEndpoint(host=HOST, on_trigger=core.door.announced,
                                       counters=core.counters, clock=lambda: NOW,
                                       allow_requeue=False)
    request = hook_request("delete", UUID)
    result = endpoint.info({}, request["publisher_id"], request["event_type"],
                           request["payload"], {"message_id": "m1"})
    assert result == oslo_messaging.NotificationResult.HANDLED
    core.door.lifecycle(undefined())
    assert core.spooled() == [payloads.DELETE_SAMPLES, EXISTS]


# -- one wiring ------------------------------------------------------------------------------

def constructed_parts(path: pathlib.Path) -> set[str]:
    """Names of the core's capture parts called (constructed) in a Python file."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Call):
            name = getattr(node.func, "attr", getattr(node.func, "id", None))
            if name in PARTS:
                found.add(name)
    return found


def test_nothing_but_the_pipeline_builds_the_cores_parts():
    """The agent, the player, every benchmark and tool build the core through Pipeline."""
    builders = {}
    for folder in ("lifecycle_stats", "listeners", "emitters", "benchmarks", "tools"):
        for path in sorted((ROOT / folder).rglob("*.py")):
            parts = constructed_parts(path)
            if parts:
                builders[str(path.relative_to(ROOT))] = parts
    assert builders == {"lifecycle_stats/capture/pipeline.py": {
        "Flusher", "ClosingReads", "DomainEventHandler", "Poller", "Observations",
        "LastReadings", "ExistsReporter"},
        "lifecycle_stats/capture/flush.py": {"DeleteReader"}}


def test_the_guard_sees_a_part_built_by_hand(tmp_path):
    sneaky = tmp_path / "sneaky.py"
    sneaky.write_text("from lifecycle_stats.capture import flush\nf = flush.Flusher(x=1)\n")
    assert constructed_parts(sneaky) == {"Flusher"}


def test_the_agent_routes_the_bus_and_the_hook_through_its_pipeline(tmp_path):
    from lifecycle_stats.agent import Agent
    from lifecycle_stats.cmd import demo
    from lifecycle_stats.emitters import memory

    conf = demo.build_conf(str(tmp_path))
    transport = oslo_messaging.get_notification_transport(conf, url="fake://")
    agent = Agent(conf, emitters={"memory": memory.MemoryConduit(conf)},
                  listen_transport=transport)
    try:
        assert isinstance(agent.pipeline, Pipeline) and agent.poller is agent.pipeline.poller
        request = hook_request("power_off", NOT_NOVA)  # a domain libvirt does not have
        payload = dict(request["payload"], host=conf.host)
        agent.bus.endpoint.info({}, request["publisher_id"], request["event_type"], payload,
                                {"message_id": "m1"})
        assert agent.counters.get("flush.action_missed") == 1
        answer = agent.hook.answer({**request, "payload": payload})
        assert answer["outcome"] == "missed" and agent.counters.get("flush.action_missed") == 2
    finally:
        agent.stop(timeout=5)
        transport.cleanup()


def test_the_player_and_the_flush_benchmark_build_a_pipeline(tmp_path):
    from benchmarks import flush_latency
    from lifecycle_stats.replay import player, standins

    clock = standins.VirtualClock(NOW)
    store = spool.Spool(str(tmp_path / "spool.sqlite"), conduits=["replay"])
    ledger = UsageLedger(str(tmp_path / "usage.sqlite"), periods.parse("hour"))
    core = flush_latency.Core("test:///default", str(tmp_path))
    try:
        state = player.AgentState(standins.RecordedHost(), store, ledger, clock,
                                  Settings.for_host(HOST), counters.Counters())
        assert isinstance(state.core, Pipeline)
        with core.fresh() as bench:
            assert isinstance(bench, Pipeline)
    finally:
        core.close()
        store.close()
        ledger.close()


def test_settings_for_a_host_are_the_agents_defaults():
    settings = Settings.for_host(HOST)
    assert settings.publisher_id == f"lifecycle-stats.{HOST}" and settings.legacy_meters
    assert dataclasses.replace(settings, legacy_meters=False).legacy_meters is False
