"""listeners.router's pure parts (which events, which host, which routing key, envelopes),
its configuration, and the agent's ``[notification_listener] source`` option."""
from __future__ import annotations

import json
import uuid

import pytest
from oslo_config import cfg

from lifecycle_stats.exceptions import RejectedMessage
from lifecycle_stats.listeners import bus
from lifecycle_stats.cmd import router as cmd
from lifecycle_stats.listeners.router import events, relay
from tests.support.fakes import UUID
from tests.support.nova import DROP, versioned_start_payload

HOST = "compute-1.example.org"


def versioned(host=DROP):
    return versioned_start_payload(UUID, host)


@pytest.mark.parametrize("action", ["delete", "power_off", "reboot", "shelve", "rescue",
                                    "resize", "suspend"])
def test_both_forms_of_every_lifecycle_start_are_kept(action):
    assert events.is_lifecycle_start(f"compute.instance.{action}.start")
    assert events.is_lifecycle_start(f"instance.{action}.start")


@pytest.mark.parametrize("action", ["soft_delete"])
def test_soft_delete_is_kept_in_both_forms(action):
    assert events.is_lifecycle_start(f"compute.instance.{action}.start")
    assert events.is_lifecycle_start(f"instance.{action}.start")


def test_an_exists_is_kept_only_on_a_resize_revert_s_destination():
    """nova's revert_resize sends its exists on the destination before destroying: the
    agent there reads then (the one table: hook_protocol.ACTION_EVENTS)."""
    reverting = {"host": HOST, "state_description": "resize_reverting"}
    assert events.is_lifecycle_start("compute.instance.exists", reverting)
    assert events.is_lifecycle_start("instance.exists", {"nova_object.data": {
        "host": HOST, "task_state": "resize_reverting"}})
    assert not events.is_lifecycle_start("compute.instance.exists", {"host": HOST,
                                                                     "state_description": ""})
    assert not events.is_lifecycle_start("instance.exists", {"nova_object.data": {
        "host": HOST, "task_state": None}})


@pytest.mark.parametrize("event_type", ["compute.instance.update", "instance.update",
                                        "compute.instance.exists", "instance.exists",
                                        "compute.instance.delete.end", "instance.delete.end",
                                        "compute.instance.create.start", None, 3, ["x"]])
def test_everything_else_is_not(event_type):
    assert not events.is_lifecycle_start(event_type)


def test_host_from_the_payload_first_then_the_publisher():
    legacy = "compute.instance.delete.start"
    assert events.origin_host(legacy, "compute.other", {"host": HOST}) == HOST
    assert events.origin_host(legacy, f"compute.{HOST}", {"host": None}) == HOST
    assert events.origin_host("instance.delete.start", "x", versioned(HOST)) == HOST
    assert events.origin_host("instance.delete.start", f"nova-compute:{HOST}",
                              versioned()) == HOST


@pytest.mark.parametrize("event_type,publisher,payload", [
    ("compute.instance.delete.start", "api.x", {}),
    ("compute.instance.delete.start", f"compute.{HOST}", ["not", "a", "dict"]),
    ("compute.instance.delete.start", f"compute.{HOST}", {"host": ""}),
    ("compute.instance.delete.start", f"compute.{HOST}", {"host": 7}),
    ("instance.delete.start", f"nova-compute:{HOST}", {"nova_object.data": "x"}),
    ("instance.delete.start", None, versioned()),
])
def test_no_trustworthy_host_is_rejected(event_type, publisher, payload):
    with pytest.raises(RejectedMessage):
        events.origin_host(event_type, publisher, payload)


def test_routing_key_is_the_agents_topic_plus_priority():
    assert events.routing_key(HOST) == f"lifecycle_stats.{HOST}.info"
    for bad in ("a*b", "a.#", "x" * 250):
        with pytest.raises(RejectedMessage):
            events.routing_key(bad)


def test_decode_both_envelopes_and_reject_garbage():
    message = {"event_type": "instance.delete.start", "publisher_id": "p", "payload": {"a": 1}}
    wrapped = {"oslo.version": "2.0", "oslo.message": json.dumps(message)}
    for body in (json.dumps(message).encode(), json.dumps(wrapped).encode()):
        assert relay.decode(body) == ("instance.delete.start", "p", {"a": 1})
    for body in (b"{", b"[]", b"\xff", json.dumps({"oslo.message": "{"}).encode(),
                 json.dumps({"oslo.message": 5}).encode()):
        with pytest.raises(RejectedMessage):
            relay.decode(body)


def test_router_settings_follow_oslo_messaging_options(tmp_path):
    config = tmp_path / "router.conf"
    config.write_text("[DEFAULT]\ntransport_url = rabbit://u:p%40ss@h1:5672,u:p%40ss@h2:5673/v\n"
                      "[oslo_messaging_rabbit]\namqp_durable_queues = true\n"
                      "[router]\nqueue = q1\nprefetch = 8\n")
    conf = cmd.parse_config(["--config-file", str(config)])
    settings = cmd.settings_from_conf(conf)
    assert settings.url == "amqp://u:p%40ss@h1:5672/v;amqp://u:p%40ss@h2:5673/v"
    assert (settings.queue, settings.prefetch, settings.durable) == ("q1", 8, True)
    assert settings.topics == ("notifications", "versioned_notifications")


def test_router_defaults_to_the_local_broker_and_refuses_a_foreign_transport(tmp_path):
    empty = tmp_path / "empty.conf"
    empty.write_text("")
    conf = cmd.parse_config(["--config-file", str(empty)])
    assert cmd.settings_from_conf(conf).url == "amqp://guest:guest@localhost:5672/"
    conf.set_override("transport_url", "kafka://h:9092/", group="router")
    with pytest.raises(ValueError, match="only rabbit"):
        cmd.settings_from_conf(conf)


def listener_for(source: str):
    conf = cfg.ConfigOpts()
    bus.register_opts(conf)
    conf([], project="lifecycle-stats-test", default_config_files=[])
    conf.set_override("transport_url", "fake://", group=bus.GROUP)
    conf.set_override("source", source, group=bus.GROUP)
    return bus.from_conf(conf, HOST, lambda trigger: None)


def test_agent_in_router_mode_binds_only_its_own_routing_key():
    listener = listener_for("router")
    try:
        assert [(t.exchange, t.topic) for t in listener.targets] == [
            ("lifecycle_stats", f"lifecycle_stats.{HOST}")]
        assert listener.pool == f"lifecycle-stats.{HOST}"  # the queue the router declares
    finally:
        listener.stop()


def test_agent_in_direct_mode_binds_novas_topics():
    listener = listener_for("direct")
    try:
        assert [(t.exchange, t.topic) for t in listener.targets] == [
            ("nova", "notifications"), ("nova", "versioned_notifications")]
    finally:
        listener.stop()


def test_unknown_source_is_a_config_error():
    with pytest.raises(ValueError):
        listener_for(str(uuid.uuid4()))
