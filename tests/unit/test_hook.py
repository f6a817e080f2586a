"""The zero-race hook without libvirt or a broker: nova's Notifier (oslo.messaging, fake://)
loads the driver by name from a nova-like config, the agent's HookServer serves a real unix
socket, and the trigger handler is a recorder the test controls."""
from __future__ import annotations

import datetime
import grp
import logging
import os
import socket
import stat
import threading
import time
import uuid

import oslo_messaging
import pytest
from oslo_config import cfg
from oslo_context import context

from lifecycle_stats.exceptions import ConfigError
from lifecycle_stats.listeners import hook_server, socket_file
from lifecycle_stats.listeners.nova import driver as nova_driver, protocol as hook_protocol
from tests.support.nova import IDENTITY, legacy_start_payload, versioned_start_payload

HOST = "cmp1"
NOW = datetime.datetime(2026, 11, 22, 3, 0, tzinfo=datetime.timezone.utc)
MY_GROUP = grp.getgrgid(os.getegid()).gr_name
TIMEOUT = 0.3


def legacy(instance_id, host=HOST):
    return legacy_start_payload(instance_id, host)


def versioned(instance_id, host=HOST):
    return versioned_start_payload(instance_id, host)


@pytest.fixture
def server(sock_path, recorder):
    srv = hook_server.HookServer(sock_path, host=HOST, on_trigger=recorder, group=MY_GROUP,
                                 clock=lambda: NOW)
    srv.start()
    yield srv
    recorder.release.set()
    srv.stop()


class NovaSerializer(oslo_messaging.NoOpSerializer):
    """As nova/rpc.py's RequestContextSerializer: drivers get the context as a dict."""

    def serialize_context(self, ctxt):
        return ctxt.to_dict() if hasattr(ctxt, "to_dict") else ctxt


class Nova:
    """nova-compute's two Notifiers as nova/rpc.py builds them (notification_format=both),
    their drivers from a nova.conf with `driver = messagingv2` and `driver = lifecycle_stats`,
    and a consumer of what messagingv2 sends (fake:// exchanges are process-global: unique)."""

    def __init__(self, tmp_path, sock_path, host=HOST):
        self.exchange = "nova-" + uuid.uuid4().hex[:8]
        config = tmp_path / f"nova-{self.exchange}.conf"
        config.write_text(
            f"[DEFAULT]\nhost = {host}\ncontrol_exchange = {self.exchange}\n"
            "[oslo_messaging_notifications]\ndriver = messagingv2\ndriver = lifecycle_stats\n"
            f"[lifecycle_stats]\nsocket_path = {sock_path}\ntimeout = {TIMEOUT}\n")
        self.conf = cfg.ConfigOpts()
        self.conf.register_opt(cfg.StrOpt("host"))  # nova's own [DEFAULT] host
        self.conf(["--config-file", str(config)], project="nova", default_config_files=[])
        self.transport = oslo_messaging.get_notification_transport(self.conf, url="fake://")
        # nova's RequestContextSerializer: the context reaches drivers as its to_dict()
        serializer = NovaSerializer()
        self.legacy = oslo_messaging.Notifier(self.transport, publisher_id=f"compute.{host}",
                                              serializer=serializer)
        self.versioned = oslo_messaging.Notifier(
            self.transport, publisher_id=f"nova-compute:{host}",
            topics=["versioned_notifications"], serializer=serializer)
        self.received = []
        self._listener = oslo_messaging.get_notification_listener(
            self.transport, [oslo_messaging.Target(topic="notifications")], [self],
            executor="threading")
        self._listener.start()

    def info(self, ctxt, publisher_id, event_type, payload, metadata):
        self.received.append(event_type)

    def delete(self, instance_id, request_id="req-1", both=True):
        ctxt = context.RequestContext(request_id=request_id)
        self.legacy.info(ctxt, "compute.instance.delete.start", legacy(instance_id))
        if both:
            self.versioned.info(ctxt, "instance.delete.start", versioned(instance_id))

    def wait_received(self, count, timeout=10.0):
        deadline = time.monotonic() + timeout
        while len(self.received) < count and time.monotonic() < deadline:
            time.sleep(0.01)
        return list(self.received)

    def close(self):
        self._listener.stop()
        self._listener.wait()
        self.transport.cleanup()


@pytest.fixture
def nova(tmp_path, sock_path):
    n = Nova(tmp_path, sock_path)
    yield n
    n.close()


def new_id():
    return str(uuid.uuid4())


# -- the driver, loaded by name, talking to the real server -----------------------------------

def test_notify_returns_after_the_agent_handled_the_delete(server, recorder, nova):
    instance = new_id()
    nova.delete(instance, both=False)
    [trigger] = recorder.triggers  # handled before notify() returned
    assert (trigger.instance_id, trigger.action, trigger.host) == (instance, "delete", HOST)
    assert trigger.event_type == "compute.instance.delete.start"
    assert trigger.identity["tenant_id"] == IDENTITY["tenant_id"]
    assert server.counters.get("hook.triggers.delete") == 1
    assert nova.wait_received(1) == ["compute.instance.delete.start"]  # messagingv2 too


def test_both_formats_of_one_request_send_one_trigger(server, recorder, nova):
    instance = new_id()
    nova.delete(instance, request_id="req-a")
    nova.delete(instance, request_id="req-a")  # e.g. a retried call: same request
    assert len(recorder.triggers) == 1
    nova.delete(instance, request_id="req-b")  # a new request: sent again
    assert [t.event_type for t in recorder.triggers] == [
        "compute.instance.delete.start", "compute.instance.delete.start"]


@pytest.mark.parametrize("action", hook_protocol.ACTIONS)
def test_every_start_action_reaches_the_agent_with_its_action(server, recorder, nova, action):
    legacy_type = "compute.instance." + hook_protocol.ACTION_EVENTS[action][0]
    payload = legacy(new_id())
    if action in hook_protocol.ACTION_TASK_STATES:  # nova's exists, in that task_state
        payload = revert_exists(payload["instance_id"], hook_protocol.ACTION_TASK_STATES[action])
    nova.legacy.info(context.RequestContext(), legacy_type, payload)
    assert [t.action for t in recorder.triggers] == [action]


def revert_exists(instance_id, task_state):
    """nova's exists as revert_resize sends it (notify_usage_exists, current_period=True)."""
    return {**legacy(instance_id), "state": "resized", "state_description": task_state,
            "audit_period_beginning": "2026-11-22 02:00:00",
            "audit_period_ending": "2026-11-22 02:41:07"}


def test_defect_9_a_resize_revert_is_read_on_the_destination_before_nova_destroys(
        server, recorder, nova):
    """nova's revert_resize on the destination: notify_usage_exists, network teardown, then
    driver.destroy. The driver must have had the agent read while nova waited in that first
    notification: resize.revert.start comes later, from the source, with nothing left to
    read here."""
    instance = new_id()
    ctxt = context.RequestContext()
    nova.legacy.info(ctxt, "compute.instance.exists", revert_exists(instance,
                                                                   "resize_reverting"))
    assert [(t.instance_id, t.action) for t in recorder.triggers] == [
        (instance, "resize_revert")]  # before nova.info returned: before the destroy
    exists = revert_exists(instance, "resize_reverting")
    versioned_exists = versioned(instance)
    versioned_exists["nova_object.name"] = "InstanceExistsPayload"
    versioned_exists["nova_object.version"] = "2.1"
    versioned_exists["nova_object.data"]["task_state"] = exists["state_description"]
    nova.versioned.info(ctxt, "instance.exists", versioned_exists)
    assert len(recorder.triggers) == 1  # the same revert in its second format


@pytest.mark.parametrize("task_state", ["", None, "resize_migrating"])
def test_other_exists_never_make_nova_wait(server, recorder, nova, task_state):
    nova.legacy.info(context.RequestContext(), "compute.instance.exists",
                     revert_exists(new_id(), task_state))
    assert recorder.triggers == [] and server.counters.snapshot() == {}


@pytest.mark.parametrize("event_type,payload,publisher", [
    ("compute.instance.delete.start", legacy("a", host="other-host"), "compute.cmp1"),
    ("compute.instance.delete.start", legacy("a", host=None), "compute.cmp1"),  # nova-api
    ("instance.delete.start", versioned("a"), "nova-api:cmp1"),
    ("instance.delete.start", versioned("a", host=None), "nova-api:cmp1"),
    ("compute.instance.delete.end", legacy("a"), "compute.cmp1"),
    ("compute.instance.update", legacy("a"), "compute.cmp1"),
    ("instance.shutdown.start", versioned("a"), "nova-compute:cmp1"),
], ids=["other-host", "api-legacy", "api-versioned", "api-null-host", "end", "update",
        "not-listed"])
def test_other_hosts_nova_api_and_other_events_are_not_sent(server, recorder, nova,
                                                            event_type, payload, publisher):
    notifier = nova.legacy.prepare(publisher_id=publisher)
    notifier.info({}, event_type, payload)
    assert recorder.triggers == [] and server.counters.snapshot() == {}


@pytest.mark.parametrize("payload", [None, "text", [1, 2], {"nova_object.data": 7}, {}])
def test_garbage_never_raises_into_nova(server, recorder, nova, payload, caplog):
    nova.legacy.info({}, "compute.instance.delete.start", payload)
    nova.versioned.info(None, "instance.delete.start", payload)
    assert recorder.triggers == []


def test_a_malformed_payload_for_this_host_is_rejected_by_the_agent(server, recorder, nova,
                                                                   caplog):
    nova.legacy.info({}, "compute.instance.delete.start",
                     {"instance_id": "not-a-uuid", "host": HOST})
    assert recorder.triggers == [] and server.counters.get("hook.rejected") == 1
    assert "answered rejected" in caplog.text


# -- nova is never held past its timeout, never failed -----------------------------------------

def test_agent_down_socket_missing(sock_path, nova, caplog):
    caplog.set_level(logging.DEBUG, logger=nova_driver.LOG.name)
    nova.delete(new_id())
    assert "did not capture" in caplog.text and "FileNotFoundError" in caplog.text
    assert nova.wait_received(1) == ["compute.instance.delete.start"]


def test_agent_stopped_leaves_no_socket_behind(server, recorder, nova, sock_path, caplog):
    server.stop()
    assert not os.path.exists(sock_path)
    nova.delete(new_id())
    assert recorder.triggers == [] and "FileNotFoundError" in caplog.text


def test_a_slow_agent_is_left_behind_at_the_timeout(server, recorder, nova, caplog):
    recorder.release.clear()  # the capture blocks until the test lets it go
    started = time.monotonic()
    nova.delete(new_id(), both=False)
    waited = time.monotonic() - started
    assert recorder.entered.is_set() and not recorder.release.is_set()  # returned meanwhile
    assert waited >= TIMEOUT * 0.9, waited  # it did wait for the agent, up to the timeout
    assert "TimeoutError" in caplog.text or "timeout" in caplog.text
    recorder.release.set()
    assert nova.wait_received(1) == ["compute.instance.delete.start"]


def test_a_server_that_never_answers(sock_path, nova, caplog):
    os.makedirs(os.path.dirname(sock_path))
    with socket.socket(socket.AF_UNIX) as mute:  # listens, accepts nothing, says nothing
        mute.bind(sock_path)
        mute.listen(1)
        nova.delete(new_id(), both=False)
    assert "did not capture" in caplog.text
    assert nova.wait_received(1) == ["compute.instance.delete.start"]


@pytest.mark.allow_error_logs
def test_a_failing_handler_answers_error_and_nova_goes_on(server, recorder, nova, caplog):
    recorder.error = RuntimeError("boom")
    nova.delete(new_id(), both=False)
    assert server.counters.get("hook.handler_errors") == 1
    assert "answered error" in caplog.text


def test_warnings_are_rate_limited(sock_path, nova, caplog):
    for _ in range(5):
        nova.delete(new_id(), both=False)
    warnings = [r for r in caplog.records
                if r.name == nova_driver.LOG.name and r.levelno == logging.WARNING]
    assert len(warnings) == 1


# -- the server's socket file ----------------------------------------------------------------

def test_socket_is_0660_with_the_group_in_a_0750_directory(server, sock_path):
    info = os.stat(sock_path)
    assert stat.S_ISSOCK(info.st_mode) and stat.S_IMODE(info.st_mode) == 0o660
    assert info.st_gid == grp.getgrnam(MY_GROUP).gr_gid
    assert stat.S_IMODE(os.stat(os.path.dirname(sock_path)).st_mode) == 0o750
    assert os.listdir(os.path.dirname(sock_path)) == ["hook.sock"]  # no temporary left


def test_a_stale_socket_is_replaced(sock_path, recorder):
    os.makedirs(os.path.dirname(sock_path))
    with socket.socket(socket.AF_UNIX) as dead:
        dead.bind(sock_path)  # bound, then closed: a crashed agent's leftover
    srv = hook_server.HookServer(sock_path, host=HOST, on_trigger=recorder, group="")
    srv.start()
    try:
        reply = hook_protocol.request(sock_path, {"v": 1, "event_type": "x"}, 2.0)
        assert reply["status"] == hook_protocol.IGNORED
    finally:
        srv.stop()


def test_a_live_socket_is_not_taken_over(server, sock_path, recorder):
    second = hook_server.HookServer(sock_path, host=HOST, on_trigger=recorder, group="")
    with pytest.raises(ConfigError, match="another process is serving"):
        second.start()
    assert hook_protocol.request(sock_path, {"v": 1}, 2.0)["status"] == hook_protocol.IGNORED


def test_a_file_at_the_socket_path_is_kept_and_refused(sock_path, recorder):
    os.makedirs(os.path.dirname(sock_path))
    with open(sock_path, "w") as f:
        f.write("precious")
    srv = hook_server.HookServer(sock_path, host=HOST, on_trigger=recorder, group="")
    with pytest.raises(ConfigError, match="not a socket"):
        srv.start()
    assert open(sock_path).read() == "precious"


def test_a_world_writable_directory_is_refused(tmp_path, recorder):
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    srv = hook_server.HookServer(str(shared / "hook.sock"), host=HOST, on_trigger=recorder)
    with pytest.raises(ConfigError, match="writable by anyone"):
        srv.start()


def test_an_unknown_group_names_the_option():
    with pytest.raises(ConfigError, match=r"\[hook\] socket_group.*no such group"):
        hook_server.HookServer("/nonexistent/hook.sock", host=HOST, on_trigger=print,
                               group="no-such-group-" + uuid.uuid4().hex[:6])


def test_more_connections_than_slots_are_answered_busy(sock_path, recorder):
    srv = hook_server.HookServer(sock_path, host=HOST, on_trigger=recorder, group="",
                                 max_connections=1)
    srv.start()
    recorder.release.clear()
    try:
        message = {"v": 1, "event_type": "compute.instance.delete.start",
                   "publisher_id": "compute.cmp1", "payload": legacy(new_id())}
        first = threading.Thread(target=hook_protocol.request, args=(sock_path, message, 10))
        first.start()
        assert recorder.entered.wait(10)
        with socket.socket(socket.AF_UNIX) as second:  # answered before it even asks
            second.connect(sock_path)
            reply = hook_protocol.read_frame(second, time.monotonic() + 5)
        assert reply["status"] == hook_protocol.BUSY
        assert srv.counters.get("hook.busy") == 1
        recorder.release.set()
        first.join(10)
    finally:
        recorder.release.set()
        srv.stop()


@pytest.mark.parametrize("frame,reason", [
    (b"\x00\x00\x00\x03abc", "not a msgpack frame"),
    (b"\x00\x00\x00\x01\x01", "not a map"),
    (b"\x00\x00\x00\x01\x80", "protocol version None"),
    (b"\xff\xff\xff\xff", "more than"),
], ids=["not-msgpack", "not-map", "no-version", "too-long"])
def test_bad_frames_are_answered_rejected(server, sock_path, frame, reason, caplog):
    with socket.socket(socket.AF_UNIX) as client:
        client.settimeout(5)
        client.connect(sock_path)
        client.sendall(frame)
        reply = hook_protocol.read_frame(client, time.monotonic() + 5)
    assert reply["status"] == hook_protocol.REJECTED and reason in reply["detail"]
    assert server.counters.get("hook.rejected") == 1


def test_oversized_requests_are_not_sent():
    with pytest.raises(hook_protocol.ProtocolError, match="larger than"):
        hook_protocol.encode({"v": 1, "payload": "x" * (hook_protocol.MAX_FRAME + 1)})


def test_the_dedupe_window_and_size_are_bounded():
    now = [0.0]
    recent = nova_driver.RecentTriggers(window=10, limit=3, clock=lambda: now[0])
    assert recent.first_time("a") and not recent.first_time("a")
    now[0] = 11
    assert recent.first_time("a")  # the window passed
    for key in "bcd":
        assert recent.first_time(key)
    assert recent.first_time("a")  # pushed out by the size limit


def _conf(**hook):
    conf = cfg.ConfigOpts()
    hook_server.register_opts(conf)
    conf([], default_config_files=[])
    for key, value in hook.items():
        conf.set_override(key, value, group="hook")
    return conf


def test_from_conf_without_a_nova_group_left_at_default_serves_nothing(caplog, monkeypatch):
    # a host without one, also on a compute host (it skipped there: every real host has one)
    monkeypatch.setattr(socket_file, "group_exists", lambda name: False)
    assert hook_server.from_conf(_conf(), HOST, print) is None
    assert "no group 'nova'" in caplog.text


def test_from_conf_with_a_missing_explicit_group_is_an_error():
    with pytest.raises(ConfigError, match="socket_group"):
        hook_server.from_conf(_conf(socket_group="no-such-" + uuid.uuid4().hex[:6]), HOST,
                              print)


def test_from_conf_disabled_and_configured(sock_path):
    assert hook_server.from_conf(_conf(enabled=False, socket_group=MY_GROUP), HOST,
                                 print) is None
    server = hook_server.from_conf(_conf(socket_group=MY_GROUP, socket_path=sock_path), HOST,
                                   print)
    assert server.path == sock_path


class _Exploding(dict):
    """A payload whose look-ups fail as a parser bug would."""

    def get(self, key, default=None):
        raise KeyError("broken mapping")


@pytest.mark.allow_error_logs
def test_a_parse_bug_still_gets_an_answer(server):
    reply = server.answer({"v": 1, "event_type": "compute.instance.delete.start",
                           "publisher_id": "compute.cmp1", "payload": _Exploding(a=1)})
    assert reply["status"] == hook_protocol.ERROR
    assert server.counters.get("hook.handler_errors") == 1
