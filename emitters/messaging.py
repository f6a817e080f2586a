"""oslo.messaging conduit (entry points `messaging`, `messagingv2`).

Why not oslo_messaging.Notifier: its drivers log and swallow send failures, and the agent
must know that the broker confirmed a notification before it may drop it from the spool. So
this conduit builds the same message a Notifier builds and hands it to the transport, whose
rabbit driver publishes with publisher confirms and raises when delivery failed. The envelope
message_id is the notification's deterministic id, so consumers can drop redeliveries.

emit_batch publishes a batch in order, each message confirmed by the broker (the rabbit
driver waits for every publisher confirm), and stops at the first one not confirmed; the
sender then retires the confirmed ones in one spool transaction.
"""
from __future__ import annotations

import logging
from typing import Sequence

import oslo_messaging
from oslo_config import cfg

from lifecycle_stats.interfaces import Conduit
from lifecycle_stats.exceptions import BatchEmitError, ConfigError, EmitError
from lifecycle_stats.records import Notification

LOG = logging.getLogger(__name__)

OPTS = [
    cfg.IntOpt("send_retry", default=0, min=-1,
               help="Reconnection attempts inside one send (-1: forever). Keep 0: the spool's "
                    "sender already retries with backoff, and a send that blocks forever "
                    "would hold up shutdown."),
]


class MessagingConduit(Conduit):
    envelope_version = 2.0

    def __init__(self, conf: cfg.ConfigOpts, transport=None) -> None:
        conf.register_opts(OPTS, group="messaging_emitter")
        option, self._topics = self._configured_topics(conf)
        if not self._topics:  # every emit would "succeed" with nothing sent
            raise ConfigError(option, [], "no topic: this conduit would publish nothing")
        self._transport = transport or oslo_messaging.get_notification_transport(conf)
        self._owns_transport = transport is None
        self._retry = conf.messaging_emitter.send_retry

    def _configured_topics(self, conf: cfg.ConfigOpts) -> tuple[str, list[str]]:
        """(the option, the topics it names) this conduit publishes to."""
        return ("[oslo_messaging_notifications] topics",
                list(conf.oslo_messaging_notifications.topics))

    def emit_batch(self, notifications: Sequence[Notification]) -> None:
        """Publish in order; BatchEmitError (with how many went before) at the first failure."""
        for delivered, notification in enumerate(notifications):
            try:
                self.emit(notification)
            except EmitError as exc:
                raise BatchEmitError(str(exc), delivered) from exc

    def emit(self, notification: Notification) -> None:
        self._publish({
            "message_id": notification.message_id,
            "publisher_id": notification.publisher_id,
            "event_type": notification.event_type,
            "priority": notification.priority,
            "payload": dict(notification.payload),
            "timestamp": notification.timestamp,
        })

    def _publish(self, message: dict, exchange: str | None = None) -> None:
        """Send to every topic's `<topic>.<priority>` queue; None: [DEFAULT] control_exchange."""
        for topic in self._topics:
            target = oslo_messaging.Target(topic=f"{topic}.{message['priority'].lower()}",
                                           exchange=exchange)
            try:
                self._transport._send_notification(target, {}, message,
                                                   version=self.envelope_version,
                                                   retry=self._retry)
            except Exception as exc:  # any failure means: not confirmed
                raise EmitError(f"{message['event_type']} {message['message_id']} "
                                f"not confirmed on topic {topic}: {exc}") from exc

    def close(self) -> None:
        if self._owns_transport:
            self._transport.cleanup()


class MessagingV1Conduit(MessagingConduit):
    """The 1.0 envelope (no oslo.message wrapper), as the `messaging` notifier driver sends."""

    envelope_version = 1.0
