"""The messaging conduit's batch on the real broker: the publisher confirms are pipelined
(emitters/rabbit_batch.py), and what a consumer gets is what emit() sends, in order."""
import threading
import uuid
import warnings

import oslo_messaging
from oslo_config import cfg

from lifecycle_stats import opts
from lifecycle_stats.emitters import rabbit_batch
from lifecycle_stats.emitters.messaging import MessagingConduit, MessagingV1Conduit
from lifecycle_stats.records import Notification
from tests.integration import conftest, harness

warnings.filterwarnings("ignore", message=r"\s*Eventlet is deprecated")


def note(n: int, run: str) -> Notification:
    return Notification("compute.instance.delete.samples", "INFO", "lifecycle-stats.h1",
                        {"n": n, "samples": [{"name": "cpu", "volume": n}]},
                        f"{run}-{n:03d}", "2026-11-21T12:00:00.000000+00:00")


class Consumer:
    def __init__(self, transport, exchange: str, topic: str):
        self.got, self._cond = [], threading.Condition()
        self.pool = f"batch-{uuid.uuid4().hex[:8]}"  # its queue's name
        self._server = oslo_messaging.get_notification_listener(
            transport, [oslo_messaging.Target(exchange=exchange, topic=topic)], [self],
            executor="threading", pool=self.pool)
        self._server.start()

    def info(self, ctxt, publisher_id, event_type, payload, metadata):
        with self._cond:
            self.got.append((publisher_id, event_type, payload, metadata["message_id"],
                             metadata["timestamp"]))
            self._cond.notify_all()

    def wait_for(self, count: int, timeout: float = 20.0) -> list:
        with self._cond:
            self._cond.wait_for(lambda: len(self.got) >= count, timeout)
            return list(self.got)

    def stop(self) -> None:
        self._server.stop()
        self._server.wait()


def _conf(rabbit_url: str, exchange: str, topic: str) -> cfg.ConfigOpts:
    conf = cfg.ConfigOpts()
    opts.register_all(conf)
    conf([], project="lifecycle-stats-test")
    conf.set_override("control_exchange", exchange)
    conf.set_override("transport_url", rabbit_url, group="oslo_messaging_notifications")
    conf.set_override("topics", [topic], group="oslo_messaging_notifications")
    return conf


def test_a_batch_arrives_complete_in_order_as_emit_sends_it(rabbit_url):
    run = uuid.uuid4().hex[:8]
    exchange, topic = f"batch-{run}", f"samples-{run}"
    pools = []
    for conduit_class in (MessagingConduit, MessagingV1Conduit):
        conf = _conf(rabbit_url, exchange, topic)
        conduit = conduit_class(conf)
        consumer = Consumer(conduit._transport, exchange, topic)
        pools.append(consumer.pool)
        try:
            assert rabbit_batch.available(conduit._transport)  # the pipelined path
            conduit.emit(note(0, run))  # one alone, the driver's way: the reference
            batch = [note(n, run) for n in range(1, 41)]
            conduit.emit_batch(batch)
            got = consumer.wait_for(41)
            assert [message_id for _, _, _, message_id, _ in got] == [
                f"{run}-{n:03d}" for n in range(41)]  # each once, in publish order
            for (publisher_id, event_type, payload, _, timestamp), sent in zip(
                    got, [note(0, run), *batch]):
                assert (publisher_id, event_type, payload, timestamp) == (
                    sent.publisher_id, sent.event_type, sent.payload, sent.timestamp)
        finally:
            consumer.stop()
            conduit.close()
    harness.delete_queues(conftest.amqp_url(rabbit_url), [f"{topic}.info", *pools],
                          exchanges=[exchange])
