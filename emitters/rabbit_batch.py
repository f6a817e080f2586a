"""Publish a batch of notifications on RabbitMQ with the publisher confirms pipelined.

oslo.messaging's rabbit driver confirms each message before it sends the next (py-amqp's
basic_publish_confirm waits for the broker's basic.ack every time): one round trip per
message, the tail of a burst of deletes (doc/benchmarks.md). Here the batch goes out on a
confirm-mode channel of its own, opened on the transport's pooled connection (under that
connection's lock, which its heartbeat thread also takes), and the acks are awaited once for
the whole batch. The message is the one the driver builds (envelope, unique id, an empty
context, kombu's JSON), to the same exchange and routing key; the exchange and the default
queue exist already because the caller sends the batch's first message through the driver.

One channel keeps the order of the batch. A broker's basic.ack may cover several messages
(`multiple`); a nack, a closed channel or the timeout ends the wait: confirmed() is how many
leading messages the broker acknowledged, and only those count as delivered.

Only the rabbit driver is pipelined (available() says so); other drivers send one by one.
"""
from __future__ import annotations

import time
from typing import Sequence

import kombu

from lifecycle_stats.records import Notification


class NotConfirmed(Exception):
    def __init__(self, message: str, confirmed: int) -> None:
        super().__init__(message)
        self.confirmed = confirmed


def available(transport) -> bool:
    try:
        from oslo_messaging._drivers import impl_rabbit
    except ImportError:  # pragma: no cover - oslo.messaging always ships it
        return False
    return isinstance(getattr(transport, "_driver", None), impl_rabbit.RabbitDriver)


def _message(notification: Notification, envelope: bool) -> dict:
    """What amqpdriver._send makes of a notification (notify=True, no context)."""
    from oslo_messaging._drivers import amqp as rpc_amqp
    from oslo_messaging._drivers import common as rpc_common

    msg = {"message_id": notification.message_id, "publisher_id": notification.publisher_id,
           "event_type": notification.event_type, "priority": notification.priority,
           "payload": dict(notification.payload), "timestamp": notification.timestamp}
    rpc_amqp._add_unique_id(msg)
    rpc_amqp.pack_context(msg, {})
    return rpc_common.serialize_msg(msg) if envelope else msg


def publish(transport, topics: Sequence[str], notifications: Sequence[Notification], *,
            envelope: bool, timeout: float = 30.0) -> None:
    """Publish every notification to every topic's `<topic>.<priority>`, then wait for the
    broker's confirms; NotConfirmed(confirmed=leading notifications acknowledged) otherwise."""
    from oslo_messaging._drivers import common as rpc_common

    driver = transport._driver
    per = len(topics)
    with driver._get_connection(rpc_common.PURPOSE_SEND) as pooled:
        conn = pooled.connection  # impl_rabbit.Connection
        with conn._connection_lock:
            channel = conn.connection.channel()
            acked = _Acks()
            try:
                channel.confirm_select()
                channel.basic_publish = channel._basic_publish  # no wait per message
                channel.events["basic_ack"].add(acked.ack)
                channel.events["basic_nack"].add(acked.nack)
                exchange = kombu.Exchange(driver._default_exchange, type="topic",
                                          durable=conn.durable,
                                          auto_delete=conn.amqp_auto_delete)
                producer = kombu.Producer(channel, auto_declare=False)
                for notification in notifications:
                    msg = _message(notification, envelope)
                    for topic in topics:
                        producer.publish(msg, exchange=exchange,
                                         routing_key=f"{topic}.{notification.priority.lower()}",
                                         mandatory=False,
                                         compression=conn.kombu_compression)
                total = len(notifications) * per
                deadline = time.monotonic() + timeout
                while acked.upto(total) < total and not acked.nacked:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        break
                    conn.connection.drain_events(timeout=left)
            except Exception as exc:  # socket.timeout, a closed channel, a lost connection
                raise NotConfirmed(f"{type(exc).__name__}: {exc}",
                                   acked.upto(len(notifications) * per) // per) from exc
            finally:
                try:
                    channel.close()
                except Exception:  # noqa: BLE001 - the connection may be gone: nothing to free
                    pass
    confirmed = acked.upto(len(notifications) * per) // per
    if confirmed < len(notifications):
        raise NotConfirmed("the broker nacked or did not confirm in time", confirmed)


class _Acks:
    """The delivery tags the broker confirmed on one channel (1, 2, ... in publish order)."""

    def __init__(self) -> None:
        self._single: set[int] = set()
        self._below = 0  # every tag <= this is confirmed (a `multiple` ack)
        self.nacked = False

    def ack(self, tag: int, multiple: bool) -> None:
        if multiple:
            self._below = max(self._below, tag)
        else:
            self._single.add(tag)

    def nack(self, tag: int, multiple: bool) -> None:
        self.nacked = True

    def upto(self, total: int) -> int:
        """How many leading tags (of 1..total) are confirmed."""
        done = min(self._below, total)
        while done < total and done + 1 in self._single:
            done += 1
        return done
