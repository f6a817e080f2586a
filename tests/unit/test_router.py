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


def test_an_exists_is_a_closing_read_only_on_a_resize_revert_s_destination():
    """nova's revert_resize sends its exists on the destination before destroying: the
    agent there reads then (the one table: hook_protocol.ACTION_EVENTS). Every exists is
    routed all the same (is_routed: enrichment)."""
    reverting = {"host": HOST, "state_description": "resize_reverting"}
    assert events.is_lifecycle_start("compute.instance.exists", reverting)
    assert events.is_lifecycle_start("instance.exists", {"nova_object.data": {
        "host": HOST, "task_state": "resize_reverting"}})
    assert not events.is_lifecycle_start("compute.instance.exists", {"host": HOST,
                                                                     "state_description": ""})
    assert not events.is_lifecycle_start("instance.exists", {"nova_object.data": {
        "host": HOST, "task_state": None}})


@pytest.mark.parametrize("event_type", ["compute.instance.update", "instance.update",
                                        "compute.instance.delete.end", "instance.delete.end",
                                        "compute.instance.create.start", None, 3, ["x"]])
def test_everything_else_is_not(event_type):
    assert not events.is_lifecycle_start(event_type)
    assert not events.is_routed(event_type)


def test_novas_exists_is_routed_for_enrichment_but_is_no_lifecycle_start():
    for event_type in ("compute.instance.exists", "instance.exists"):
        assert events.is_routed(event_type) and not events.is_lifecycle_start(event_type)
    legacy = {"host": HOST, "instance_id": str(uuid.uuid4())}
    assert events.origin_host("compute.instance.exists", f"compute.{HOST}", legacy) == HOST
    assert events.origin_host("instance.exists", f"nova-compute:{HOST}", versioned(HOST)) == HOST
    # the agent trusts only nova-compute's exists: another publisher's is nobody's
    assert events.origin_host("compute.instance.exists", "api.x", legacy) is None
    assert events.origin_host("instance.exists", "nova-api:x", versioned(HOST)) is None


def test_host_from_the_payload_first_then_the_publisher():
    legacy = "compute.instance.delete.start"
    assert events.origin_host(legacy, "compute.other", {"host": HOST}) == HOST
    assert events.origin_host(legacy, f"compute.{HOST}", {}) == HOST
    assert events.origin_host("instance.delete.start", "x", versioned(HOST)) == HOST
    assert events.origin_host("instance.delete.start", f"nova-compute:{HOST}",
                              versioned()) == HOST


def test_a_null_host_is_nobodys_not_malformed():
    """nova-api's delete.start of a never-scheduled (or shelved-offloaded) instance: host
    null. The agent's parse says nobody's; so does the router (before: RejectedMessage)."""
    assert events.origin_host("compute.instance.delete.start", "api.ctl-1",
                              {"host": None, "instance_id": str(uuid.uuid4())}) is None
    assert events.origin_host("instance.delete.start", "nova-api:ctl-1",
                              versioned(host=None) | {"nova_object.data": {"host": None}}) is None


@pytest.mark.parametrize("event_type,publisher,payload", [
    ("compute.instance.delete.start", "api.x", {}),
    ("compute.instance.delete.start", f"compute.{HOST}", ["not", "a", "dict"]),
    ("compute.instance.delete.start", f"compute.{HOST}", {"host": ""}),
    ("compute.instance.delete.start", f"compute.{HOST}", {"host": 7}),
    ("instance.delete.start", f"nova-compute:{HOST}", {"nova_object.data": "x"}),
    ("instance.delete.start", None, versioned()),
    ("compute.instance.delete.start", "api.x", {"host": "  "}),
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


def test_tls_and_heartbeat_as_oslo_messagings_rabbit_driver_reads_them(tmp_path):
    """[oslo_messaging_rabbit] ssl options, overridden by the transport URL's query as
    impl_rabbit does; a CA file makes the broker's certificate (and name) required."""
    import ssl

    ca = tmp_path / "ca.pem"
    ca.write_text("not read here")
    config = tmp_path / "router.conf"
    config.write_text(f"[DEFAULT]\ntransport_url = rabbit://u:p@broker.example:5671/v\n"
                      f"[oslo_messaging_rabbit]\nssl = true\nssl_ca_file = {ca}\n"
                      f"heartbeat_timeout_threshold = 20\n")
    settings = cmd.settings_from_conf(cmd.parse_config(["--config-file", str(config)]))
    assert settings.ssl == {"ca_certs": str(ca), "cert_reqs": ssl.CERT_REQUIRED,
                            "server_hostname": "broker.example"}
    assert settings.heartbeat == 20.0
    plain = tmp_path / "plain.conf"
    plain.write_text("[DEFAULT]\ntransport_url = rabbit://u:p@h:5671/v?ssl=true\n")
    assert cmd.settings_from_conf(cmd.parse_config(["--config-file", str(plain)])).ssl is True
    plain.write_text("[DEFAULT]\ntransport_url = rabbit://u:p@h:5672/v\n")
    assert cmd.settings_from_conf(cmd.parse_config(["--config-file", str(plain)])).ssl is False


def test_an_unreadable_tls_file_is_a_configuration_error(tmp_path, capsys):
    config = tmp_path / "router.conf"
    config.write_text(f"[DEFAULT]\ntransport_url = rabbit://u:p@h:5671/v\n"
                      f"[oslo_messaging_rabbit]\nssl = true\n"
                      f"ssl_ca_file = {tmp_path / 'missing.pem'}\n")
    assert cmd.main(["--config-file", str(config)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "ssl_ca_file" in err[0] and "not readable" in err[0]


def test_router_defaults_durable_own_queue_and_its_own_metrics_port(tmp_path):
    empty = tmp_path / "empty.conf"
    empty.write_text("")
    conf = cmd.parse_config(["--config-file", str(empty)])
    settings = cmd.settings_from_conf(conf)
    assert settings.queue_durable and settings.host_durable
    assert not settings.durable  # nova's exchange: as nova declares it
    assert settings.parking_queue == "lifecycle-stats-parked"
    assert conf.metrics.port == cmd.ROUTER_METRICS_PORT != 9891


def test_router_metrics_every_family_from_the_start_with_labels():
    from prometheus_client import generate_latest

    from lifecycle_stats.counters import Counters
    from lifecycle_stats.operations import exposition, router_metrics

    counters = Counters()
    collector = router_metrics.RouterCollector(
        counters, lambda: {"consuming": "connected", "publishing": "disconnected"})
    text = generate_latest(exposition.make_registry(collector, process=False)).decode()
    for outcome in ("routed", "parked", "dropped", "ignored", "malformed"):
        assert f'lifecycle_stats_router_messages_total{{outcome="{outcome}"}} 0.0' in text
    for family in ("no_consumer_events", "returned", "reconnects", "host_queue_mismatch"):
        assert f"lifecycle_stats_router_{family}_total 0.0" in text
    assert 'lifecycle_stats_router_connection_up{connection="consuming"} 1.0' in text
    assert 'lifecycle_stats_router_connection_up{connection="publishing"} 0.0' in text
    counters.incr("router.routed", 3)
    counters.incr("router.no_consumer")
    text = generate_latest(exposition.make_registry(collector, process=False)).decode()
    assert 'lifecycle_stats_router_messages_total{outcome="routed"} 3.0' in text
    assert "lifecycle_stats_router_no_consumer_events_total 1.0" in text


@pytest.mark.allow_error_logs
def test_the_command_exits_1_for_a_restart_when_the_relay_thread_dies(tmp_path):
    """Restart=on-failure can only help if the process ends: a dead relay thread ends it."""
    import threading

    empty = tmp_path / "empty.conf"
    empty.write_text("[router]\nstats_interval = 0\n")
    conf = cmd.parse_config(["--config-file", str(empty)])
    replica = relay.Relay(cmd.settings_from_conf(conf))
    replica._thread = threading.Thread(target=lambda: None)  # a relay thread that ended
    replica._thread.start()
    replica._thread.join()
    written = []

    class Exporter:
        def write_textfile(self):
            written.append(1)

    assert cmd.watch(conf, replica, Exporter(), threading.Event()) == 1
    stopping = threading.Event()
    stopping.set()
    assert cmd.watch(conf, replica, Exporter(), stopping) == 0


def test_router_mode_listener_asks_for_durable_queues_on_its_own_transport_only():
    """The router declares host queues durable by default; the agent's listener must declare
    its queue the same way, without changing amqp_durable_queues for its conduits: the URL's
    query overrides [oslo_messaging_rabbit] for that one transport (oslo's rabbit driver)."""
    import oslo_messaging

    from lifecycle_stats.listeners.router.transport import durable_listener_url

    conf = cfg.ConfigOpts()
    conf([], project="lifecycle-stats-test", default_config_files=[])
    url = durable_listener_url(conf, "rabbit://u:p@h:5672/v?ssl=true")
    assert url.query == {"ssl": "true", "amqp_durable_queues": "true"}
    assert str(url).startswith("rabbit://u:p@h:5672/v?")
    assert durable_listener_url(conf, "fake://") == "fake://"
    conf.set_override("transport_url", "rabbit://u:p@default:5672/")
    resolved = durable_listener_url(conf, None)
    assert [h.hostname for h in resolved.hosts] == ["default"]
    transport = oslo_messaging.get_notification_transport(conf, url=url)
    try:
        rabbit = transport._driver.conf.oslo_messaging_rabbit  # what its connections read
        assert rabbit.amqp_durable_queues is True
        assert conf.oslo_messaging_rabbit.amqp_durable_queues is False  # the conduits' own
    finally:
        transport.cleanup()
