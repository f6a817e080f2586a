"""lifecycle_stats.listeners.bus on oslo.messaging's in-memory fake:// transport, published to by a Notifier."""
from __future__ import annotations

import datetime
import logging
import queue
import threading
import time
import uuid

import oslo_messaging
import pytest

from lifecycle_stats.counters import Counters
from lifecycle_stats.exceptions import CaptureDeferred, ConfigError
from lifecycle_stats.listeners import bus
from tests.support.nova import legacy_start_payload, messaging_conf, versioned_start_payload

HOST = "compute-1"
NOW = datetime.datetime(2024, 5, 1, 12, 0, tzinfo=datetime.timezone.utc)
WAIT = 5.0
LOADED_WAIT = 30.0  # 12 messages through 3 workers timed out at 5 s on a machine at load 20
HANDLED = oslo_messaging.NotificationResult.HANDLED
REQUEUE = oslo_messaging.NotificationResult.REQUEUE


class Bus:
    """A fake:// transport in a fresh exchange, with nova-like notifiers and listeners."""

    def __init__(self):
        self.exchange = "nova-" + uuid.uuid4().hex[:8]  # fake exchanges are process-global
        self.conf = messaging_conf(self.exchange)
        self.transport = oslo_messaging.get_notification_transport(self.conf, url="fake://")
        self.listeners = []

    def legacy(self, host, instance_id=None, payload=None):
        instance_id = instance_id or str(uuid.uuid4())
        notifier = oslo_messaging.Notifier(self.transport, publisher_id=f"compute.{host}",
                                           driver="messaging", topics=["notifications"])
        notifier.info({}, "compute.instance.delete.start",
                      payload if payload is not None else legacy_start_payload(instance_id, host))
        return instance_id

    def versioned(self, host, instance_id=None):
        instance_id = instance_id or str(uuid.uuid4())
        notifier = oslo_messaging.Notifier(self.transport, publisher_id=f"nova-compute:{host}",
                                           driver="messagingv2",
                                           topics=["versioned_notifications"])
        notifier.info({}, "instance.delete.start", versioned_start_payload(instance_id, host))
        return instance_id

    def listen(self, host=HOST, on_trigger=None, **heard):
        received: queue.Queue = queue.Queue()
        listener = bus.NotificationListener(
            self.transport, host=host, on_trigger=on_trigger or received.put,
            subscription=bus.Subscription(exchange=self.exchange, **heard), clock=lambda: NOW)
        listener.received = received
        listener.start()
        self.listeners.append(listener)
        return listener

    def close(self):
        for listener in self.listeners:
            assert listener.stop()
        self.transport.cleanup()


@pytest.fixture
def fake_bus():
    fake = Bus()
    yield fake
    fake.close()


def wait_for(condition, timeout=WAIT):
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.01)


def test_legacy_and_versioned_delete_start_reach_on_trigger(fake_bus):
    listener = fake_bus.listen()
    legacy_id = fake_bus.legacy(HOST)
    versioned_id = fake_bus.versioned(HOST)
    got = {t.instance_id: t for t in (listener.received.get(timeout=WAIT) for _ in range(2))}
    assert set(got) == {legacy_id, versioned_id}
    assert got[legacy_id].event_type == "compute.instance.delete.start"
    assert got[versioned_id].event_type == "instance.delete.start"
    assert got[versioned_id].identity["instance_type"] == "m1.tiny"
    assert all(t.host == HOST and t.received_at == NOW for t in got.values())
    # nova's send time (oslo.messaging's envelope timestamp) rides along for the sample times
    real_now = datetime.datetime.now(datetime.timezone.utc)
    assert all(abs(real_now - t.announced_at) < datetime.timedelta(minutes=1)
               for t in got.values())
    counts = listener.counters.snapshot()
    assert counts["bus.triggers.legacy"] == 1 and counts["bus.triggers.versioned"] == 1


def test_other_hosts_and_other_events_are_ignored(fake_bus):
    listener = fake_bus.listen()
    fake_bus.legacy("compute-2")
    fake_bus.versioned("compute-2")
    notifier = oslo_messaging.Notifier(fake_bus.transport, publisher_id=f"compute.{HOST}",
                                       driver="messaging", topics=["notifications"])
    notifier.info({}, "compute.instance.update", {"instance_id": "x"})
    mine = fake_bus.legacy(HOST)
    assert listener.received.get(timeout=WAIT).instance_id == mine
    wait_for(lambda: listener.counters.get("bus.ignored") == 3)
    assert listener.received.empty()


def test_each_host_hears_everything_in_its_own_pool_and_keeps_its_own(fake_bus):
    one = fake_bus.listen("compute-1")
    two = fake_bus.listen("compute-2")
    assert (one.pool, two.pool) == ("lifecycle-stats.compute-1", "lifecycle-stats.compute-2")
    first = fake_bus.legacy("compute-1")
    second = fake_bus.versioned("compute-2")
    assert one.received.get(timeout=WAIT).instance_id == first
    assert two.received.get(timeout=WAIT).instance_id == second
    wait_for(lambda: one.counters.get("bus.ignored") == 1 and two.counters.get("bus.ignored") == 1)


def test_rejects_are_counted_and_logged_with_a_truncated_payload(fake_bus, caplog):
    listener = fake_bus.listen()
    caplog.set_level(logging.WARNING, logger="lifecycle_stats.listeners.bus")
    fake_bus.legacy(HOST, payload={"instance_id": "not-a-uuid", "blob": "z" * 100_000})
    wait_for(lambda: listener.counters.get("bus.rejected") == 1)
    warning = next(r for r in caplog.records if r.name == "lifecycle_stats.listeners.bus"
                   and r.levelno == logging.WARNING)
    assert "instance_id is not a UUID: 'not-a-uuid'" in warning.getMessage()
    assert len(warning.getMessage()) < 600
    mine = fake_bus.legacy(HOST)
    assert listener.received.get(timeout=WAIT).instance_id == mine


def test_a_deferred_capture_is_redelivered_not_dropped(fake_bus):
    """The flush raises CaptureDeferred when nothing could be spooled (database locked, disk
    full): the message must come back, whatever allow_requeue says (it is off here)."""
    received = []

    def on_trigger(trigger):
        received.append(trigger.instance_id)
        if len(received) == 1:
            raise CaptureDeferred("spool full")

    listener = fake_bus.listen(on_trigger=on_trigger)
    first = fake_bus.legacy(HOST)
    wait_for(lambda: len(received) == 2)
    second = fake_bus.legacy(HOST)
    wait_for(lambda: len(received) == 3)
    assert received == [first, first, second]
    assert listener.counters.get("bus.requeued") == 1
    assert listener.counters.get("bus.handler_errors") == 0


@pytest.mark.allow_error_logs
def test_an_unexpected_handler_error_does_not_stop_the_next_message(fake_bus, caplog):
    received = []

    def on_trigger(trigger):
        received.append(trigger.instance_id)
        if len(received) == 1:
            raise RuntimeError("a bug")

    listener = fake_bus.listen(on_trigger=on_trigger)
    first = fake_bus.legacy(HOST)
    wait_for(lambda: listener.counters.get("bus.handler_errors") == 1)
    second = fake_bus.legacy(HOST)
    wait_for(lambda: len(received) == 2)
    assert received == [first, second]
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1 and "a bug" in str(errors[0].exc_info[1])


def test_a_delete_start_for_a_domain_held_here_but_naming_another_host_is_reported(caplog):
    counters = Counters()
    held = str(uuid.uuid4())
    endpoint = bus.DeleteStartEndpoint(host=HOST, on_trigger=pytest.fail, counters=counters,
                                       clock=lambda: NOW, allow_requeue=False,
                                       holds=lambda instance_id: instance_id == held)
    for instance_id in (held, str(uuid.uuid4())):
        assert endpoint.info({}, "compute.compute-9", "compute.instance.delete.start",
                             legacy_start_payload(instance_id, "compute-9"), {}) == HANDLED
    assert endpoint.info({}, f"compute.{HOST}", "compute.instance.delete.start",
                         legacy_start_payload(held, None), {}) == HANDLED  # host null: nobody's
    assert counters.get("bus.host_mismatch") == 1 and counters.get("bus.ignored") == 3
    [warning] = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert held in warning.getMessage() and "'compute-9'" in warning.getMessage()
    assert "[DEFAULT] host" in warning.getMessage()


@pytest.mark.allow_error_logs
def test_allow_requeue_redelivers_a_failed_message(fake_bus):
    received = []

    def on_trigger(trigger):
        received.append(trigger.instance_id)
        if len(received) == 1:
            raise RuntimeError("emitter down")

    listener = fake_bus.listen(on_trigger=on_trigger, allow_requeue=True)
    first = fake_bus.legacy(HOST)
    wait_for(lambda: len(received) == 2)
    assert received == [first, first]
    assert listener.counters.get("bus.handler_errors") == 1
    assert listener.counters.get("bus.triggers.legacy") == 2


def test_listen_flags_choose_the_topics(fake_bus):
    listener = fake_bus.listen(listen_legacy=False)
    assert [t.topic for t in listener.targets] == ["versioned_notifications"]
    fake_bus.legacy(HOST)
    versioned_id = fake_bus.versioned(HOST)
    assert listener.received.get(timeout=WAIT).instance_id == versioned_id
    time.sleep(0.2)
    assert listener.received.empty() and listener.counters.get("bus.triggers.legacy") == 0


def test_stop_is_bounded_when_a_handler_hangs(fake_bus, caplog):
    release = threading.Event()
    entered = threading.Event()

    def on_trigger(trigger):
        entered.set()
        release.wait(WAIT)

    listener = bus.NotificationListener(
        fake_bus.transport, host=HOST, on_trigger=on_trigger,
        subscription=bus.Subscription(exchange=fake_bus.exchange, stop_timeout=0.3))
    listener.start()
    fake_bus.legacy(HOST)
    assert entered.wait(WAIT)
    started = time.monotonic()
    try:
        assert listener.stop() is False
        assert time.monotonic() - started < 2.0
        assert any("did not stop within" in r.getMessage() for r in caplog.records)
    finally:
        release.set()


class _Exploding(dict):
    def get(self, key, default=None):
        raise KeyError("broken mapping")


@pytest.mark.allow_error_logs
@pytest.mark.parametrize("allow_requeue,outcome", [(False, HANDLED), (True, REQUEUE)])
def test_endpoint_outcomes(allow_requeue, outcome):
    counters = Counters()

    def on_trigger(trigger):
        raise RuntimeError("boom")

    endpoint = bus.DeleteStartEndpoint(host=HOST, on_trigger=on_trigger, counters=counters,
                                       clock=lambda: NOW, allow_requeue=allow_requeue)
    assert endpoint.failure_outcome() == outcome
    legacy = legacy_start_payload(str(uuid.uuid4()), HOST)
    assert endpoint.info({}, f"compute.{HOST}", "compute.instance.delete.start", legacy,
                         {}) == outcome
    # an unexpected parse failure is acknowledged: requeueing it would only loop
    assert endpoint.info({}, f"compute.{HOST}", "compute.instance.delete.start",
                         _Exploding(legacy), {}) == HANDLED
    assert endpoint.info({}, "x", "compute.instance.update", {}, {}) == HANDLED
    assert counters.snapshot() == {"bus.triggers.legacy": 1, "bus.handler_errors": 2,
                                   "bus.ignored": 1}
    deferring = bus.DeleteStartEndpoint(
        host=HOST, on_trigger=lambda t: (_ for _ in ()).throw(CaptureDeferred("locked")),
        counters=counters, clock=lambda: NOW, allow_requeue=allow_requeue)
    assert deferring.info({}, f"compute.{HOST}", "compute.instance.delete.start", legacy,
                          {}) == REQUEUE  # always: nothing was spooled


@pytest.mark.parametrize("kwargs,option", [
    ({"host": ""}, "host"),
    ({"host": None}, "host"),
    ({"pool": " "}, "[notification_listener] pool"),
    ({"exchange": ""}, "[notification_listener] exchange"),
    ({"listen_legacy": False, "listen_versioned": False}, "listen_legacy/listen_versioned"),
    ({"legacy_topic": ""}, "[notification_listener] topic"),
])
def test_bad_configuration_fails_in_the_constructor(fake_bus, kwargs, option):
    host = kwargs.pop("host", HOST)
    with pytest.raises(ConfigError) as info:
        bus.NotificationListener(fake_bus.transport, host=host, on_trigger=print,
                                 subscription=bus.Subscription(**kwargs))
    assert option in str(info.value)


def test_from_conf_defaults_and_notifications_transport_fallback():
    exchange = "nova-" + uuid.uuid4().hex[:8]
    conf = messaging_conf(exchange)
    bus.register_opts(conf)
    conf.set_override("transport_url", "fake://", group="oslo_messaging_notifications")
    conf.set_override("exchange", exchange, group="notification_listener")
    received: queue.Queue = queue.Queue()
    listener = bus.from_conf(conf, HOST, received.put, Counters())
    assert listener.pool == "lifecycle-stats." + HOST
    assert [(t.exchange, t.topic) for t in listener.targets] == [
        (exchange, "notifications"), (exchange, "versioned_notifications")]
    listener.start()
    try:
        publisher = oslo_messaging.get_notification_transport(conf, url="fake://")
        oslo_messaging.Notifier(publisher, publisher_id=f"compute.{HOST}", driver="messaging",
                                topics=["notifications"]).info(
            {}, "compute.instance.delete.start", legacy_start_payload(str(uuid.uuid4()), HOST))
        assert received.get(timeout=WAIT).host == HOST
    finally:
        assert listener.stop()


def test_options_are_listed_for_the_sample_config():
    from lifecycle_stats import opts as all_opts

    [opts] = [o for group, o in all_opts.list_opts() if group == "notification_listener"]
    names = {opt.name: opt for opt in opts}
    assert set(names) == {"transport_url", "exchange", "legacy_topic", "versioned_topic",
                          "listen_legacy", "listen_versioned", "pool", "allow_requeue",
                          "source", "router_exchange", "router_durable_queues", "workers"}
    assert names["workers"].default == 8
    assert names["source"].default == "direct"
    assert names["transport_url"].secret and names["pool"].default is None
    assert names["allow_requeue"].default is False


@pytest.mark.parametrize("allow_requeue", [False, True])
def test_a_trigger_refused_at_stop_is_requeued_never_acknowledged(allow_requeue):
    from lifecycle_stats.exceptions import ShuttingDown

    counters = Counters()

    def on_trigger(trigger):
        raise ShuttingDown("stopping")

    endpoint = bus.DeleteStartEndpoint(host=HOST, on_trigger=on_trigger, counters=counters,
                                       clock=lambda: NOW, allow_requeue=allow_requeue)
    legacy = legacy_start_payload(str(uuid.uuid4()), HOST)
    assert endpoint.info({}, f"compute.{HOST}", "compute.instance.delete.start", legacy,
                         {}) == REQUEUE
    assert counters.get("bus.requeued_at_stop") == 1 and counters.get("bus.handler_errors") == 0


def test_a_refused_trigger_comes_back_on_the_bus(fake_bus):
    from lifecycle_stats.exceptions import ShuttingDown

    received = []

    def on_trigger(trigger):
        received.append(trigger.instance_id)
        if len(received) == 1:
            raise ShuttingDown("stopping")

    fake_bus.listen(on_trigger=on_trigger)  # allow_requeue off: only a stop requeues
    first = fake_bus.legacy(HOST)
    wait_for(lambda: len(received) == 2)
    assert received == [first, first]
def test_nova_exists_reaches_on_audit_only_when_enrichment_is_on():
    exists = {**legacy_start_payload(str(uuid.uuid4()), HOST),
              "audit_period_beginning": "2024-05-01 11:00:00",
              "audit_period_ending": "2024-05-01 12:00:00"}
    heard, counters = [], Counters()
    endpoint = bus.DeleteStartEndpoint(host=HOST, on_trigger=heard.append, counters=counters,
                                       clock=lambda: NOW, allow_requeue=False,
                                       on_audit=heard.append)
    assert endpoint.info({}, f"compute.{HOST}", "compute.instance.exists", exists, {}) == HANDLED
    assert endpoint.info({}, f"compute.{HOST}", "compute.instance.power_off.start", exists,
                         {}) == HANDLED
    assert [type(h).__name__ for h in heard] == ["AuditWindow", "StopAnnouncement"]
    assert heard[1].action == "power_off"
    off = bus.DeleteStartEndpoint(host=HOST, on_trigger=heard.append, counters=counters,
                                  clock=lambda: NOW, allow_requeue=False)
    off.info({}, f"compute.{HOST}", "compute.instance.exists", exists, {})
    assert len(heard) == 2
    assert counters.snapshot() == {"bus.audits.legacy": 1, "bus.triggers.legacy": 1,
                                   "bus.ignored": 1}


@pytest.mark.parametrize("enrich", [True, False])
def test_a_resize_revert_s_exists_is_read_first_then_its_window_heard(enrich):
    """nova's revert_resize on the destination sends its exists before destroying: the
    closing read goes first (it races the destroy), the window after, only if enriching."""
    exists = {**legacy_start_payload(str(uuid.uuid4()), HOST),
              "state_description": "resize_reverting",
              "audit_period_beginning": "2024-05-01 11:00:00",
              "audit_period_ending": "2024-05-01 11:41:07"}
    heard, counters = [], Counters()
    endpoint = bus.DeleteStartEndpoint(host=HOST, on_trigger=heard.append, counters=counters,
                                       clock=lambda: NOW, allow_requeue=False,
                                       on_audit=heard.append if enrich else None)
    assert endpoint.info({}, f"compute.{HOST}", "compute.instance.exists", exists, {}) == HANDLED
    assert [type(h).__name__ for h in heard] == ["StopAnnouncement"] + ["AuditWindow"] * enrich
    assert heard[0].action == "resize_revert"
    assert counters.snapshot() == {"bus.triggers.legacy": 1,
                                   ("bus.audits.legacy" if enrich else "bus.ignored"): 1}


def test_the_listener_handles_at_most_workers_messages_at_once_and_starts_no_more_threads(
        fake_bus):
    """oslo.messaging's threading executor starts a thread per message up to its pool size
    and keeps them all (64 by default): a burst left them behind. The listener's is bounded."""
    running, most, lock, release = [], [0], threading.Lock(), threading.Event()

    def slow(trigger):
        with lock:
            running.append(threading.current_thread())
            most[0] = max(most[0], len(running))
        release.wait(LOADED_WAIT)
        with lock:
            running.remove(threading.current_thread())
        return trigger

    before = threading.active_count()
    fake_bus.listen(on_trigger=slow, workers=3)
    for _ in range(12):
        fake_bus.legacy(HOST)
    wait_for(lambda: most[0] == 3, LOADED_WAIT)
    time.sleep(0.2)  # nothing more starts while the three are busy
    assert most[0] == 3 and threading.active_count() - before <= 3 + 2  # + the poll thread(s)
    release.set()
    counters = fake_bus.listeners[0].counters
    wait_for(lambda: counters.snapshot().get("bus.triggers.legacy", 0) >= 12, LOADED_WAIT)
    time.sleep(0.2)  # a message handled again would show here
    # exactly once each: the handler's answer (not an Outcome, and unhashable) raised in the
    # endpoint, oslo requeued every message and they came back for ever (a flake: == 12 held
    # only when the poll caught the count on its way up)
    assert counters.get("bus.triggers.legacy") == 12
    assert most[0] == 3
