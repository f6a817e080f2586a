"""Start and stop under faults, with the real agent process, the real libvirtd and RabbitMQ:
a broker that cannot be reached at start must not keep the agent from starting, hearing
libvirt, writing its status, or stopping on SIGTERM; it joins the bus once the broker answers.
"""
from __future__ import annotations

import signal
import time

import pytest

from lifecycle_stats.exceptions import ShuttingDown
from tests.integration import harness

pytestmark = pytest.mark.integration

STOP_WITHIN = 10.0  # seconds from SIGTERM to exit


@pytest.fixture
def bus(rabbit_url):
    made = harness.Bus(rabbit_url)
    yield made
    made.close()


@pytest.fixture
def gate():
    made = harness.TcpGate()
    yield made
    made.close()


def _stop_timed(agent: harness.AgentProcess) -> float:
    started = time.monotonic()
    agent.proc.send_signal(signal.SIGTERM)
    try:
        agent.proc.wait(STOP_WITHIN + 20)
    except Exception:
        agent.kill()
        raise AssertionError(f"agent still running {STOP_WITHIN + 20} s after SIGTERM")
    return time.monotonic() - started


def test_unreachable_broker_at_start_then_the_bus_comes(bus, gate, guest_factory, tmp_path):
    host = bus.host()
    agent = harness.AgentProcess(tmp_path, host=host, names=bus.names,
                                 transport_url=harness.through_gate(bus.url, gate.port))
    agent.start(timeout=30)  # the status file is written although the broker refuses us
    try:
        status = agent.wait_for(lambda s: s.get("threads", {}).get("bus") == "connecting", 10,
                                "the bus listener to be connecting in the background")
        assert status["connections"]["libvirt_events"] == "connected"
        guest, _ = guest_factory.create()  # libvirt is heard and polled meanwhile
        polled = status.get("last_poll_at") or ""
        agent.wait_for(lambda s: (s.get("last_poll_at") or "") > polled
                       and s["threads"]["bus"] == "connecting", 15, "a poll while connecting")

        billing = bus.billing()
        gate.open()  # the broker answers now: the bus listener connects by itself
        agent.wait_for(lambda s: s.get("threads", {}).get("bus") == "alive", 60,
                       "the bus listener to connect")
        deadline = time.monotonic() + 30  # its queue is declared by its first connection
        while bus.consumers_of(f"lifecycle-stats.{host}") == 0:
            assert time.monotonic() < deadline, "no consumer on the agent's queue"
            time.sleep(0.2)
        bus.nova.delete_start(guest, host)
        [event] = billing.wait_for(1, 30)
        assert event["payload"]["instance_id"] == guest.instance_id
        assert event["payload"]["capture"]["kind"] == "final"
    finally:
        took = _stop_timed(agent)
    assert agent.proc.returncode == 0 and took < STOP_WITHIN, took


def test_sigterm_while_the_broker_is_unreachable_stops_within_bound(bus, gate, tmp_path):
    agent = harness.AgentProcess(tmp_path, host=bus.host(), names=bus.names,
                                 transport_url=harness.through_gate(bus.url, gate.port))
    agent.start(timeout=30)
    agent.wait_for(lambda s: s.get("threads", {}).get("bus") == "connecting", 10,
                   "the bus listener to be connecting in the background")
    took = _stop_timed(agent)
    assert agent.proc.returncode == 0 and took < STOP_WITHIN, took


def test_a_flush_cut_by_the_stop_leaves_its_delete_start_on_the_broker(rabbit_url, tmp_path):
    """The agent's stop sequence on the real broker: the listener stops (its bound expires
    with a flush in hand), the flusher closes, the spool closes; the flush then ends, writes
    nothing, and its message is requeued: the next run of the agent receives it."""
    from lifecycle_stats.capture.pipeline import Pipeline, Readers, Settings
    from lifecycle_stats.publishing import spool as spool_mod
    from lifecycle_stats.usage import periods
    from lifecycle_stats.usage.ledger import UsageLedger
    from tests.support.fakes import FakeRegistry, GatedInspector

    broker = harness.Broker(rabbit_url)
    host = broker.host("cut")
    path = str(tmp_path / "spool.sqlite")
    spool = spool_mod.Spool(path, conduits=["test"])
    inspector = GatedInspector({})
    ledger = UsageLedger(str(tmp_path / "usage.sqlite"), periods.parse("hour"))
    core = Pipeline(readers=Readers.one(inspector), registry=FakeRegistry(), spool=spool,
                    ledger=ledger, settings=Settings(host, "p"))
    outcomes = []

    def on_trigger(trigger):
        try:
            return core.announced(trigger)
        except BaseException as exc:
            outcomes.append(exc)
            raise

    try:
        first = broker.listen(host, on_trigger=on_trigger)
        instance_id = broker.nova(host).legacy()
        assert inspector.entered.acquire(timeout=10)  # the flush is reading the domain
        assert first.stop(timeout=0.3) is False  # as Agent.stop: bounded, a flush in hand
        assert core.close(0.1) is False
        spool.close()
        inspector.gates[0].set()
        deadline = time.monotonic() + 10
        while not outcomes:
            assert time.monotonic() < deadline, "the cut flush never ended"
            time.sleep(0.02)
        assert isinstance(outcomes[0], ShuttingDown) and outcomes[0].__cause__ is None
        time.sleep(0.5)  # the executor requeues, then the process would exit:
        first._transport.cleanup()  # its connection closes
        broker.listeners.remove(first)
        second = broker.listen(host)  # the agent's next run, same queue
        assert second.received.get(timeout=10).instance_id == instance_id
        reopened = spool_mod.Spool(path, conduits=["test"])
        assert reopened.depth() == 0  # nothing was written after the close
        reopened.close()
    finally:
        inspector.gates[0].set()
        broker.close()
        ledger.close()
