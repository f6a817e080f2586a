"""Defaults: what a stock Ceilometer receives from an agent left at its defaults, and with the
one block the sample config gives (copied from etc/lifecycle-stats/lifecycle-stats.conf.sample,
between its `--- begin: stock Ceilometer ---` / `--- end` markers).

Both sides use their real default exchanges and topics (`openstack`, `ceilometer`,
`notifications`), so the run gets a RabbitMQ vhost of its own, deleted afterwards. Ceilometer is
the stock `ceilometer-agent-notification` with no configuration but its broker and a file
publisher (where it publishes is not what it receives); nova's announcements come on the run's
own exchange, so Ceilometer hears only the agent.
1. The agent at its defaults: billing gets delete.samples; Ceilometer publishes none of our
   samples. (It does read delete.samples: oslo.messaging's publisher binds the shared
   `notifications.info` queue to `openstack` too, so Ceilometer's stock definitions make
   memory, vcpus, disk.root.size and disk.ephemeral.size of it and of the final exists.)
2. The agent with the block: Ceilometer publishes every sample of the capture, with our ids,
   volumes and all resource_metadata.
"""
from __future__ import annotations

import pathlib
import re
import secrets
import subprocess
import time

import oslo_messaging
import pytest
from oslo_config import cfg

from lifecycle_stats.publishing import payloads
from tests.integration import harness
from tests.interop.stock_ceilometer import (
    CEILOMETER_PYTHON, ROOT, RUN, STOCK_FROM_DELETE, CeilometerAgent,
)

pytestmark = [pytest.mark.integration, pytest.mark.interop, pytest.mark.timeout(420)]

SAMPLE_CONFIG = ROOT / "etc" / "lifecycle-stats" / "lifecycle-stats.conf.sample"
VHOST = f"lst-defaults-{RUN}"
# what the harness sets and a default agent must not: the conduits and where they publish
HARNESS_PUBLISHING = re.compile(r"^(control_exchange|topics|driver) = .*\n", re.MULTILINE)


def sample_config_block() -> str:
    text = SAMPLE_CONFIG.read_text()
    match = re.search(r"^# --- begin: stock Ceilometer ---\n(.*?)^# --- end: stock Ceilometer",
                      text, re.MULTILINE | re.DOTALL)
    assert match, f"{SAMPLE_CONFIG}: no stock Ceilometer block"
    return "".join(line[2:] + "\n" for line in match.group(1).splitlines())


def rabbitmqctl(*args: str) -> None:
    subprocess.run(["rabbitmqctl", "-q", *args], check=True, capture_output=True, timeout=60)


@pytest.fixture(scope="module")
def vhost_url(rabbit_url):
    base = rabbit_url.rsplit("/", 1)[0]
    rabbitmqctl("add_vhost", VHOST)
    try:
        rabbitmqctl("set_permissions", "-p", VHOST, "guest", ".*", ".*", ".*")
        yield f"{base}/{VHOST}"
    finally:
        rabbitmqctl("delete_vhost", VHOST)


@pytest.fixture(scope="module")
def ceilometer(vhost_url, tmp_path_factory):
    if not CEILOMETER_PYTHON.exists():
        pytest.fail(f"{CEILOMETER_PYTHON} missing: run tools/ceilometer_venv.sh", pytrace=False)
    agent = CeilometerAgent(tmp_path_factory.mktemp("stock"), vhost_url, secrets.token_hex(8),
                            exchanges=(), topics=(), definitions=())
    try:
        # its definitions take ~40 s to load on a busy 2-core machine
        agent.wait_listening(harness_amqp(vhost_url), timeout=240)
        yield agent
    finally:
        agent.stop()


def harness_amqp(url: str) -> str:
    from tests.integration.conftest import amqp_url

    return amqp_url(url)


def agent_at_defaults(workdir: pathlib.Path, host: str, url: str, names, libvirt_uri,
                      block: str = "") -> harness.AgentProcess:
    agent = harness.AgentProcess(workdir, host=host, transport_url=url, names=names,
                                 libvirt_uri=libvirt_uri, poll_interval=1.0)
    config = HARNESS_PUBLISHING.sub("", agent.config_file.read_text())
    agent.config_file.write_text(config + block)
    return agent


def delete_one(agent, nova, billing, guest_factory, host: str) -> dict:
    guest, _ = guest_factory.create(paused=False)
    agent.wait_for(lambda s: s.get("counters", {}).get("poller.polls", 0) >= 2, 45, "polls")
    nova.delete_start(guest, host)
    time.sleep(0.1)  # nova's own gap before driver.destroy
    guest_factory.destroy(guest)
    [event] = billing.wait_for_instances([guest.instance_id], 30)[guest.instance_id]
    assert event["payload"]["capture"]["kind"] == payloads.FINAL
    return event


def wait_for_ours(ceilometer, before: int, ours: dict, timeout: float = 60.0) -> list[dict]:
    deadline = time.monotonic() + timeout
    while True:
        got = [s for s in ceilometer.published(0)[before:] if s["id"] in ours]
        if len(got) >= len(ours) or time.monotonic() > deadline:
            return got
        time.sleep(0.5)


@pytest.fixture
def bus(vhost_url):
    names = harness.BusNames()
    names.control_exchange, names.samples_topic = "openstack", "notifications"  # the defaults
    conf = cfg.ConfigOpts()
    conf([], project="lifecycle-stats-defaults", default_config_files=[])
    transport = oslo_messaging.get_notification_transport(conf, url=vhost_url)
    billing = harness.BillingConsumer(transport, names)
    try:
        yield names, harness.Nova(transport, names), billing
    finally:
        billing.stop()
        transport.cleanup()


@pytest.mark.parametrize("with_block", [False, True], ids=["defaults", "sample-config-block"])
def test_a_stock_ceilometer_receives_everything_only_with_the_sample_configs_block(
        with_block, ceilometer, bus, vhost_url, libvirt_uri, guest_factory, tmp_path):
    names, nova, billing = bus
    host = f"lst-defaults-{RUN}-{int(with_block)}"
    block = sample_config_block() if with_block else ""
    if with_block:
        assert "driver = ceilometer" in block
    agent = agent_at_defaults(tmp_path, host, vhost_url, names, libvirt_uri, block)
    before = len(ceilometer.published(0))
    agent.start()
    try:
        event = delete_one(agent, nova, billing, guest_factory, host)
    finally:
        agent.stop(timeout=20)
        agent.kill()
    ours = {s["message_id"]: s for s in event["payload"]["samples"]}
    if not with_block:
        time.sleep(5)  # billing has had it for a while; Ceilometer would have by now
        got = ceilometer.published(0)[before:]
        assert not [s for s in got if s["id"] in ours or s["name"] not in STOCK_FROM_DELETE]
        assert {s["name"] for s in got} <= set(STOCK_FROM_DELETE)
        return
    published = wait_for_ours(ceilometer, before, ours)
    assert sorted(s["id"] for s in published) == sorted(ours)
    for theirs in published:
        mine = ours[theirs["id"]]
        for field in ("name", "type", "unit", "volume", "resource_id", "user_id",
                      "project_id", "resource_metadata"):
            assert theirs[field] == mine[field], (field, theirs, mine)
    print(f"\nstock Ceilometer published all {len(published)} samples with the sample "
          "config's block; without it none of ours, only its stock memory/vcpus/disk sizes")
