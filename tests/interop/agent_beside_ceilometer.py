"""What both interop tests start: on the run's own bus names, the stock Ceilometer agent, the
real lifecycle-stats-agent publishing to it (the `ceilometer` conduit, signed with a
per-run telemetry secret) and to billing, and the teardown that stops them all and removes
the run's queues and exchanges. Shared by test_ceilometer_interop.py and test_gnocchi.py."""
from __future__ import annotations

import contextlib
import pathlib
import secrets
from typing import Any, Callable, Iterator

import oslo_messaging
from oslo_config import cfg

from tests.integration import harness
from tests.integration.conftest import amqp_url
from tests.interop.stock_ceilometer import CEILOMETER_EXCHANGE, CEILOMETER_TOPIC, CeilometerAgent


def notification_transport(url: str, project: str,
                           control_exchange: str | None = None) -> oslo_messaging.Transport:
    conf = cfg.ConfigOpts()
    conf([], project=project, default_config_files=[])
    transport = oslo_messaging.get_notification_transport(conf, url=url)
    if control_exchange is not None:  # the option is registered by the call above
        conf.set_override("control_exchange", control_exchange)
    return transport


class AgentBesideCeilometer:
    def __init__(self, rabbit_url: str, workdir: pathlib.Path, names: harness.BusNames):
        self.rabbit_url, self.workdir, self.names = rabbit_url, workdir, names
        self.secret = secrets.token_hex(16)
        self.transport = notification_transport(rabbit_url, "lifecycle-stats-interop")
        self.ceilometer: CeilometerAgent | None = None
        self.billing: harness.BillingConsumer | None = None
        self.agent: harness.AgentProcess | None = None
        self._closing: list[Callable[[], Any]] = []

    def on_close(self, cleanup: Callable[[], Any]) -> None:
        """Run cleanup at close, after the agent, Ceilometer and billing stopped (the last
        registered first), before the transport is cleaned up."""
        self._closing.append(cleanup)

    def start_ceilometer(self, timeout: float = 60.0, **options) -> CeilometerAgent:
        """options: CeilometerAgent's (exchanges, topics, gnocchi, archive_policy)."""
        self.ceilometer = CeilometerAgent(self.workdir, self.rabbit_url, self.secret, **options)
        self.ceilometer.wait_listening(amqp_url(self.rabbit_url), timeout=timeout)
        return self.ceilometer

    def start_agent(self, host: str, libvirt_uri: str, drivers: list[str],
                    **sections: dict[str, str]) -> harness.AgentProcess:
        """Billing's consumer, then the agent publishing through drivers; sections: more
        config sections (a conduit's options)."""
        self.billing = harness.BillingConsumer(self.transport, self.names)
        self.agent = harness.AgentProcess(
            self.workdir, host=host, transport_url=self.rabbit_url, names=self.names,
            libvirt_uri=libvirt_uri, poll_interval=1.0, extra={
                "oslo_messaging_notifications": {"driver": drivers},
                "ceilometer_emitter": {"exchange": CEILOMETER_EXCHANGE,
                                       "topics": CEILOMETER_TOPIC},
                "publisher": {"telemetry_secret": self.secret},
                **sections,
            })
        self.agent.start()
        return self.agent

    def close(self) -> None:
        if self.agent is not None:
            self.agent.stop(timeout=20)
            self.agent.kill()
        if self.ceilometer is not None:
            self.ceilometer.stop()
        if self.billing is not None:
            self.billing.stop()
        for cleanup in reversed(self._closing):
            cleanup()
        self.transport.cleanup()


@contextlib.contextmanager
def started(rabbit_url: str, workdir: pathlib.Path, names: harness.BusNames, *,
            queues: list[str], exchanges: list[str]) -> Iterator[AgentBesideCeilometer]:
    """An AgentBesideCeilometer, closed on the way out; the run's queues and exchanges are
    deleted even when closing fails."""
    world = AgentBesideCeilometer(rabbit_url, workdir, names)
    try:
        yield world
    finally:
        try:
            world.close()
        finally:
            harness.delete_queues(amqp_url(rabbit_url), queues, exchanges)
