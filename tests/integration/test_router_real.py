"""The fan-out router (listeners.router) on the real RabbitMQ, with agents' listeners bound in
``source = router`` mode and nova publishing through oslo.messaging Notifiers.

Every test uses its own exchanges, topics, router queue and host names, and deletes what it
declared (nova's default ``<topic>.info`` queues included).
"""
from __future__ import annotations

import asyncio
import datetime
import json
import logging
import os
import pathlib
import queue
import shutil
import signal
import ssl
import subprocess
import threading
import time
import uuid

import kombu
import oslo_messaging
import pytest
from oslo_config import cfg

from lifecycle_stats.listeners.router import relay
from tests.integration import harness
from tests.integration.conftest import amqp_url
from tests.integration.harness import delete_queues
from tests.integration.router_site import WAIT, Site, wait_for
from tests.support.nova import legacy_start_payload, versioned_start_payload

pytestmark = pytest.mark.integration


@pytest.fixture
def site(rabbit_url):
    made = Site(rabbit_url)
    yield made
    made.close()


def drain(listener, timeout=1.0) -> list:
    """Triggers received until none came for ``timeout`` seconds."""
    got = []
    while True:
        try:
            got.append(listener.received.get(timeout=timeout))
        except queue.Empty:
            return got


def test_each_delete_reaches_only_its_own_host(site):
    replica = site.replica()
    one, two = site.host("one"), site.host("two")
    agent_one, agent_two = site.agent(one), site.agent(two)
    nova_one, nova_two = site.nova(one), site.nova(two)
    sent_one = {nova_one.legacy(), nova_one.versioned()}
    sent_two = {nova_two.legacy()}
    assert {t.instance_id for t in drain(agent_one)} == sent_one
    assert {t.instance_id for t in drain(agent_two)} == sent_two
    # the other host's deletes never reached these queues at all (direct mode: 'ignored')
    for listener in (agent_one, agent_two):
        assert listener.counters.get("bus.ignored") == 0
        assert listener.counters.get("bus.rejected") == 0
    assert replica.counters.get("router.routed") == 3
    assert site.queue_state(site.router_queue) == (0, 1)


def test_other_events_are_dropped_and_counted_lifecycle_starts_routed(site):
    replica = site.replica()
    host = site.host("mix")
    agent = site.agent(host)
    nova = site.nova(host)
    for _ in range(5):
        nova.legacy("compute.instance.update")
        nova.versioned("instance.update")
    nova.exists()
    nova.legacy("compute.instance.delete.end")
    power_off = nova.versioned("instance.power_off.start")
    delete = nova.legacy()
    wait_for(lambda: replica.counters.get("router.routed") == 3)
    wait_for(lambda: replica.counters.get("router.dropped") == 11)
    # power_off.start is routed and parsed too: a closing read for the usage ledger (issue 9)
    got = drain(agent)
    assert [(t.instance_id, t.action) for t in got] == [(power_off, "power_off"),
                                                        (delete, "delete")]
    assert agent.counters.get("bus.ignored") == 1  # nova's exists: this agent does not enrich
    assert power_off != delete


def test_novas_exists_reach_their_hosts_agent_for_enrichment(site):
    """Router mode + [usage] enrich_nova_exists (issue 18 item 4): both forms of this host's
    exists arrive as audit windows; another host's do not, nor a non-compute publisher's.
    Before: the router dropped every exists, so an enriching agent sent no period exists."""
    replica = site.replica()
    host, other = site.host("enrich"), site.host("other")
    audits: queue.Queue = queue.Queue()
    agent = site.agent(host, on_audit=audits.put)
    mine = {site.nova(host).exists(), site.nova(host).exists(versioned=True)}
    site.nova(other).exists()
    wait_for(lambda: replica.counters.get("router.routed") == 3)
    got = [audits.get(timeout=WAIT) for _ in mine]
    assert {w.instance_id for w in got} == mine
    assert all(w.host == host and w.end - w.begin == datetime.timedelta(hours=1) for w in got)
    assert drain(agent, 0.5) == [] and audits.empty()
    assert agent.counters.get("bus.audits.legacy") == agent.counters.get(
        "bus.audits.versioned") == 1


def test_novas_null_host_delete_is_ignored_not_malformed(site, caplog):
    """nova-api's delete.start of a never-scheduled instance carries host null: nobody's.
    Before: counted malformed with a WARNING each time."""
    replica = site.replica()
    host = site.host("api")
    agent = site.agent(host)
    for form in ("legacy", "versioned"):
        payload = (legacy_start_payload(str(uuid.uuid4()), None) if form == "legacy"
                   else versioned_start_payload(str(uuid.uuid4()), None))
        event = "compute.instance.delete.start" if form == "legacy" else "instance.delete.start"
        message = {"event_type": event, "publisher_id": "api.ctl-1" if form == "legacy"
                   else "nova-api:ctl-1", "payload": payload, "priority": "INFO"}
        site.publish_raw(json.dumps(message).encode(), topic_index=int(form != "legacy"))
    good = site.nova(host).legacy()
    assert [t.instance_id for t in drain(agent)] == [good]
    assert replica.counters.get("router.ignored") == 2
    assert replica.counters.get("router.malformed") == 0
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING
                and r.name.startswith("lifecycle_stats.listeners.router")]


def test_host_name_mismatch_is_counted_and_warned(site, caplog):
    """nova names the host compute-1.example.com, the agent's [DEFAULT] host is compute-1:
    the events wait in a queue nobody consumes. Before: silently."""
    replica = site.replica()
    short = site.host("c1")
    fqdn = site.host("c1") + ".example.com"
    site.hosts.add(fqdn)
    agent = site.agent(short)
    nova = site.nova(fqdn)
    sent = [nova.legacy(), nova.versioned()]
    wait_for(lambda: replica.counters.get("router.routed") == 2)
    assert replica.counters.get("router.no_consumer") == 2
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING
                and r.name.endswith("host_queues")]
    assert len(warnings) == 1 and f"lifecycle-stats.{fqdn}" in warnings[0]
    assert "[DEFAULT] host" in warnings[0]
    assert site.queue_state(f"lifecycle-stats.{fqdn}") == (2, 0)  # kept, not dropped
    assert drain(agent, 0.5) == []
    assert len(sent) == 2


def test_a_deleted_host_queue_is_declared_again_and_loses_nothing(site):
    """An operator (or an ``expires`` policy) deletes a host queue the router already
    declared: the broker returns the mandatory publish, the router counts it, declares the
    queue again and republishes. Before: not mandatory, the event vanished silently."""
    replica = site.replica()
    host = site.host("gone")
    name = f"lifecycle-stats.{host}"
    nova = site.nova(host)
    first = nova.legacy()
    wait_for(lambda: replica.counters.get("router.routed") == 1)
    delete_queues(amqp_url(site.url), [name])
    second = nova.legacy()
    wait_for(lambda: replica.counters.get("router.routed") == 2)
    assert replica.counters.get("router.returned") == 1
    assert site.queue_state(name)[0] == 1
    agent = site.agent(host)
    assert [t.instance_id for t in drain(agent)] == [second]
    assert first != second


def test_a_quiet_publishing_connection_keeps_its_heartbeats(site):
    """heartbeat 2 s, then 8 s without any event (4 heartbeat intervals): the publishing
    connection must still be up. Before: it sent no heartbeat, the broker closed it, and the
    next event cost a reconnect."""
    replica = site.replica(heartbeat=2.0)
    host = site.host("quiet")
    agent = site.agent(host)
    nova = site.nova(host)
    sent = [nova.legacy()]
    wait_for(lambda: replica.counters.get("router.routed") == 1)
    time.sleep(8.0)
    sent.append(nova.legacy())
    wait_for(lambda: replica.counters.get("router.routed") == 2)
    assert replica.counters.get("router.reconnects") == 0
    assert [t.instance_id for t in drain(agent)] == sent


def test_malformed_messages_are_counted_acknowledged_and_block_nothing(site):
    replica = site.replica()
    host = site.host("bad")
    agent = site.agent(host)
    site.publish_raw(b"{not json")
    site.publish_raw(b"[1, 2, 3]")
    site.publish_raw(b'{"oslo.version": "2.0", "oslo.message": "{broken"}', topic_index=1)
    no_host = {"event_type": "compute.instance.delete.start", "publisher_id": "api.x",
               "payload": {"instance_id": str(uuid.uuid4())}}
    star_host = {"event_type": "compute.instance.delete.start", "publisher_id": "compute.x",
                 "payload": {"instance_id": str(uuid.uuid4()), "host": "a.*"}}
    for message in (no_host, star_host):
        site.publish_raw(json.dumps(message).encode())
    good = site.nova(host).legacy()
    assert [t.instance_id for t in drain(agent)] == [good]
    wait_for(lambda: replica.counters.get("router.malformed") == 5)
    assert replica.counters.get("router.routed") == 1
    assert site.queue_state(site.router_queue)[0] == 0  # all acknowledged, none redelivered


def test_two_replicas_share_one_queue_and_lose_nothing(site):
    first, second = site.replica(), site.replica()
    assert site.queue_state(site.router_queue)[1] == 2
    host = site.host("pair")
    agent = site.agent(host)
    nova = site.nova(host)
    sent = {nova.legacy() if n % 2 else nova.versioned() for n in range(60)}
    wait_for(lambda: first.counters.get("router.routed")
             + second.counters.get("router.routed") == 60)
    assert {t.instance_id for t in drain(agent)} == sent
    assert first.counters.get("router.routed") > 0 and second.counters.get("router.routed") > 0


@pytest.mark.allow_error_logs
def test_a_host_queue_declared_otherwise_still_gets_its_events(site):
    """An agent whose queue is transient ([notification_listener] router_durable_queues =
    false) while the router declares durable host queues (the default): the router's declare
    is refused; it counts, logs, and publishes."""
    replica = site.replica()
    host, other = site.host("transient"), site.host("durable")
    queue_name = f"lifecycle-stats.{host}"
    with kombu.Connection(amqp_url(site.url)) as conn:
        routed = kombu.Exchange(site.out_exchange, "topic", durable=True)
        kombu.Queue(queue_name, exchange=routed, routing_key=f"lifecycle_stats.{host}.info",
                    durable=False)(conn.channel()).declare()
    site.nova(host).legacy()
    site.nova(other).legacy()
    wait_for(lambda: replica.counters.get("router.routed") == 2)
    assert replica.counters.get("router.host_queue_mismatch") == 1
    assert site.queue_state(queue_name)[0] == 1
    assert site.queue_state(f"lifecycle-stats.{other}")[0] == 1


def test_events_wait_in_the_host_queue_for_an_agent_not_yet_started(site):
    site.replica()
    host = site.host("late")
    sent = site.nova(host).legacy()
    wait_for(lambda: site.queue_state(f"lifecycle-stats.{host}")[0] == 1)
    agent = site.agent(host)
    assert [t.instance_id for t in drain(agent)] == [sent]


def test_router_killed_mid_stream_loses_nothing(site, tmp_path):
    """kill -9 of the router process while nova publishes; a new replica takes over the queue
    and every delete.start reaches the agent (at-least-once: duplicates allowed)."""
    host = site.host("kill")
    agent = site.agent(host)
    first = site.router_process(tmp_path)
    nova = site.nova(host)
    sent: list[str] = []
    done = threading.Event()

    def publish():
        for _ in range(400):
            sent.append(nova.legacy())
            time.sleep(0.002)
        done.set()

    publisher = threading.Thread(target=publish)
    publisher.start()
    received = []
    while len(received) < 80:
        received.append(agent.received.get(timeout=WAIT).instance_id)
    os.kill(first.pid, signal.SIGKILL)
    first.wait(10)
    killed_at = len(received)
    site.router_process(tmp_path)
    publisher.join(WAIT)
    assert done.is_set()
    deadline = time.monotonic() + WAIT
    while set(received) != set(sent) and time.monotonic() < deadline:
        try:
            received.append(agent.received.get(timeout=0.5).instance_id)
        except queue.Empty:
            pass
    missing = set(sent) - set(received)
    assert not missing, f"{len(missing)} of {len(sent)} lost (killed after {killed_at})"
    assert killed_at < len(sent)  # the kill really was mid-stream
    assert site.queue_state(site.router_queue)[0] == 0
    print(f"killed after {killed_at} received; {len(received) - len(set(received))} "
          f"redelivered twice; {len(sent)} sent")


def test_the_router_process_serves_its_metrics(site, tmp_path):
    """lifecycle-stats-router's Prometheus endpoint: every family from the first scrape (at
    zero), label values as labels, the alert-worthy no-consumer counter once an event goes to
    a queue nobody consumes."""
    from tests.integration import prom

    port = prom.free_port()
    site.router_process(tmp_path, metrics_port=port)
    first = prom.scrape(port)
    for outcome in ("routed", "parked", "dropped", "ignored", "malformed"):
        assert ("lifecycle_stats_router_messages_total",
                frozenset({("outcome", outcome)})) in first
    assert prom.value(first, "lifecycle_stats_router_no_consumer_events_total") == 0
    host = site.host("scraped")
    site.nova(host).legacy()
    site.nova(host).legacy("compute.instance.update")

    def scraped():
        return prom.scrape(port)

    wait_for(lambda: prom.value(scraped(), "lifecycle_stats_router_messages_total",
                                outcome="dropped") == 1)
    samples = scraped()
    assert prom.value(samples, "lifecycle_stats_router_messages_total", outcome="routed") == 1
    assert prom.value(samples, "lifecycle_stats_router_no_consumer_events_total") == 1
    for connection in ("consuming", "publishing"):
        assert prom.value(samples, "lifecycle_stats_router_connection_up",
                          connection=connection) == 1


def test_the_agent_process_in_router_mode_captures_a_real_guest(
        rabbit_url, libvirt_uri, guest_factory, tmp_path):
    """nova → router → the real lifecycle-stats-agent (source = router) reading a real QEMU
    guest → delete.samples consumed by billing; other hosts' deletes never reach it."""
    names = harness.BusNames()
    host = f"lst-router-e2e-{names.nova_exchange[-8:]}"
    out_exchange, router_queue = f"lst-routed-{names.nova_exchange[-8:]}", f"lst-router-{host}"
    replica = relay.Relay(relay.RelaySettings(
        url=amqp_url(rabbit_url), queue=router_queue, nova_exchange=names.nova_exchange,
        topics=(names.legacy_topic, names.versioned_topic), out_exchange=out_exchange))
    conf = cfg.ConfigOpts()
    conf([], project="lifecycle-stats-test", default_config_files=[])
    transport = oslo_messaging.get_notification_transport(conf, url=rabbit_url)
    agent = harness.AgentProcess(
        tmp_path, host=host, transport_url=rabbit_url, names=names, libvirt_uri=libvirt_uri,
        extra={"notification_listener": {"source": "router", "router_exchange": out_exchange}})
    billing = None
    try:
        replica.start()
        assert replica.ready.wait(WAIT)
        billing = harness.BillingConsumer(transport, names)
        agent.start()
        guest, _ = guest_factory.create(paused=True)
        other, _ = guest_factory.create(paused=True)
        nova = harness.Nova(transport, names)
        nova.delete_start(other, f"{host}-elsewhere")
        nova.delete_start(guest, host, versioned=True)
        # generous: the agent may still be connecting its listener (the events wait for it)
        events = billing.wait_for_instances([guest.instance_id], 4 * WAIT)[guest.instance_id]
        assert events[0]["payload"]["capture"]["kind"] == "final"
        agent.wait_for(lambda s: s["counters"].get("flush.final") == 1, WAIT, "flush counted")
        assert replica.counters.get("router.routed") == 2
        assert agent.counter("bus.ignored") == 0  # the other host's delete never came here
        assert other.instance_id not in billing.by_instance()
    finally:
        try:
            if billing is not None:
                billing.stop()
            assert agent.stop() == 0, agent.log_tail()
        finally:
            replica.stop()
            transport.cleanup()
            harness.delete_queues(
                amqp_url(rabbit_url),
                names.queues([host, f"{host}-elsewhere"]) + [router_queue],
                [names.nova_exchange, names.control_exchange, out_exchange])


ON_TEST_HOST = (os.environ.get("CI", "").lower() == "true"
                or os.environ.get("LIFECYCLE_STATS_TEST_HOST") == "1")


def restart_broker_app() -> float:
    """Stop and start the RabbitMQ application (the node stays up): every connection drops,
    transient queues vanish, durable ones come back. Seconds it took."""
    started = time.monotonic()
    for action in ("stop_app", "start_app"):
        subprocess.run(["rabbitmqctl", "-q", action], check=True, timeout=120,
                       capture_output=True)
    return time.monotonic() - started


@pytest.mark.allow_error_logs
@pytest.mark.timeout(240)
@pytest.mark.skipif(not ON_TEST_HOST, reason="restarts the shared RabbitMQ: only on a test "
                    "host (CI=true or LIFECYCLE_STATS_TEST_HOST=1)")
def test_broker_restart_loses_nothing_waiting_and_the_router_reconnects(rabbit_url):
    """The one broker restart of the router tests, with the default settings (the router's
    own queue and the host queues durable, nova's exchange transient): events routed before
    the restart wait in the durable host queue of an agent that is down, the router
    reconnects on its own and binds its queue to nova's exchange again, events after the
    restart are routed, and the agent, started last, receives them all."""
    site = Site(rabbit_url)  # nova's exchange transient, as nova declares it by default
    try:
        replica = site.replica()
        host = site.host("restart")
        nova = site.nova(host)
        before = [nova.legacy(), nova.versioned()]
        wait_for(lambda: replica.counters.get("router.routed") == 2)
        took = restart_broker_app()
        wait_for(lambda: replica.counters.get("router.reconnects") >= 1, timeout=60)
        wait_for(replica.ready.is_set, timeout=60)
        after = [nova.legacy(), nova.versioned()]  # oslo's notifier reconnects by itself
        wait_for(lambda: replica.counters.get("router.routed") == 4, timeout=60)
        agent = site.agent(host)
        got = [agent.received.get(timeout=30).instance_id for _ in before + after]
        assert sorted(got) == sorted(before + after)
        assert site.queue_state(site.router_queue) == (0, 1)
        print(f"\nbroker application restarted in {took:.1f} s; router reconnects "
              f"{replica.counters.get('router.reconnects')}")
    finally:
        site.close()


class TlsFront:
    """A TLS listener in front of the test broker (which speaks plain AMQP): asyncio
    terminates TLS with a certificate for ``localhost`` and pipes the bytes to 5672, so the
    router's TLS handshake and certificate check are real."""

    def __init__(self, workdir: pathlib.Path, broker=("127.0.0.1", 5672)):
        self.cert, self.key = self_signed(workdir, "broker")
        self.broker = broker
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(self.cert, self.key)
        self.server = asyncio.run_coroutine_threadsafe(
            asyncio.start_server(self._pipe, "127.0.0.1", 0, ssl=context), self.loop).result(10)
        self.port = self.server.sockets[0].getsockname()[1]

    async def _pipe(self, client_reader, client_writer):
        reader, writer = await asyncio.open_connection(*self.broker)

        async def copy(source, sink):
            try:
                while data := await source.read(65536):
                    sink.write(data)
                    await sink.drain()
            except (ConnectionError, ssl.SSLError):
                pass
            finally:
                sink.close()

        await asyncio.gather(copy(client_reader, writer), copy(reader, client_writer))

    def close(self):
        async def shutdown():
            self.server.close()
            pipes = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in pipes:
                task.cancel()
            await asyncio.gather(*pipes, return_exceptions=True)

        asyncio.run_coroutine_threadsafe(shutdown(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


def self_signed(workdir: pathlib.Path, name: str) -> tuple[pathlib.Path, pathlib.Path]:
    """A self-signed certificate for ``localhost`` (its own CA): (cert, key)."""
    cert, key = workdir / f"{name}.pem", workdir / f"{name}.key"
    openssl = shutil.which("openssl")
    assert openssl, "openssl missing (Debian: apt-get install openssl)"
    subprocess.run([openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost",
                    "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True, timeout=60)
    return cert, key


def tls_settings(site: Site, tmp_path: pathlib.Path, front: TlsFront, ca: pathlib.Path):
    """RelaySettings from a router config file that asks for TLS as oslo.messaging's rabbit
    driver does: ssl = true and a CA in [oslo_messaging_rabbit]."""
    from lifecycle_stats.cmd import router as router_cmd

    vhost = site.url.rsplit("/", 1)[1]
    config = tmp_path / "router-tls.conf"
    config.write_text(
        f"[DEFAULT]\ntransport_url = rabbit://guest:guest@localhost:{front.port}/{vhost}\n"
        f"[oslo_messaging_rabbit]\nssl = true\nssl_ca_file = {ca}\n"
        f"[router]\nqueue = {site.router_queue}\nnova_exchange = {site.exchange}\n"
        f"topics = {','.join(site.topics)}\nout_exchange = {site.out_exchange}\n"
        f"parking_queue = {site.parking_queue}\n")
    return router_cmd.settings_from_conf(router_cmd.parse_config(["--config-file",
                                                                  str(config)]))


@pytest.mark.allow_error_logs
def test_tls_to_the_broker_with_its_certificate_checked(site, tmp_path):
    """Before: [oslo_messaging_rabbit] ssl was ignored and the router spoke plain AMQP to a
    TLS port. Now it routes through TLS, and refuses a broker whose certificate its CA file
    did not sign (it keeps retrying, never consuming)."""
    front = TlsFront(tmp_path)
    replica = None
    try:
        other_ca, _ = self_signed(tmp_path, "other")
        stranger = relay.Relay(tls_settings(site, tmp_path, front, other_ca))
        stranger.start()
        try:
            assert not stranger.ready.wait(3.0)
            assert stranger.counters.get("router.reconnects") >= 1
        finally:
            stranger.stop()
        replica = relay.Relay(tls_settings(site, tmp_path, front, front.cert))
        replica.start()
        assert replica.ready.wait(WAIT), "no TLS connection to the broker"
        host = site.host("tls")
        agent = site.agent(host)
        sent = site.nova(host).legacy()
        assert [t.instance_id for t in drain(agent)] == [sent]
        assert replica.counters.get("router.routed") == 1
    finally:
        if replica is not None:
            replica.stop()
        front.close()
