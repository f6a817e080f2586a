"""Conduit a stock Ceilometer ingests with zero configuration (entry point `ceilometer`).

Publishes each capture's samples the way Ceilometer's own polling agent does: one
`telemetry.polling` notification, priority SAMPLE, in exchange `ceilometer` on
`notifications.sample`, payload {"samples": [meter messages]}. Ceilometer's notification agent
listens there by default and its TelemetryIpc endpoint rebuilds every sample with all its
resource_metadata and our deterministic message_id as the sample id, then publishes it on
(Gnocchi, ...). Confirmation, failure and envelope are the messagingv2 conduit's.
"""
from __future__ import annotations

from oslo_config import cfg

from lifecycle_stats.emitters.messaging import MessagingEmitter
from lifecycle_stats.publishing import meter_messages, samples, signing
from lifecycle_stats.records import Notification

OPTS = [
    cfg.StrOpt("exchange", default="ceilometer",
               help="Exchange Ceilometer's notification agent reads telemetry.polling from "
                    "(its [notification] notification_control_exchanges has `ceilometer`)."),
    cfg.ListOpt("topics", default=["notifications"],
                help="Ceilometer's [oslo_messaging_notifications] topics."),
]


class CeilometerEmitter(MessagingEmitter):
    name = "ceilometer"

    def __init__(self, conf: cfg.ConfigOpts, transport=None) -> None:
        super().__init__(conf, transport)
        conf.register_opts(OPTS, group="ceilometer_emitter")
        signing.register_opts(conf)
        self._exchange = conf.ceilometer_emitter.exchange
        self._topics = list(conf.ceilometer_emitter.topics)
        self._secret = conf.publisher.telemetry_secret

    def emit(self, notification: Notification) -> None:
        messages = list(meter_messages.from_notification(notification, self._secret))
        if not messages:  # an `unavailable` capture has nothing to meter
            return
        self._publish({
            "message_id": samples.deterministic_id(notification.message_id,
                                                   meter_messages.TELEMETRY_POLLING),
            "publisher_id": notification.publisher_id,
            "event_type": meter_messages.TELEMETRY_POLLING,
            "priority": "SAMPLE",
            "payload": {"samples": messages},
            "timestamp": notification.timestamp,
        }, exchange=self._exchange)
