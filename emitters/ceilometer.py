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

from lifecycle_stats.emitters.messaging import MessagingConduit
from lifecycle_stats.publishing import meter_messages, samples, signing
from lifecycle_stats.records import Notification

# The sample config's block for a stock Ceilometer (tests/interop/test_ceilometer_defaults.py
# copies it from the generated sample between the two markers and runs it).
GROUP = cfg.OptGroup("ceilometer_emitter", help=(
    "The `ceilometer` conduit feeds a stock Ceilometer, with no change on Ceilometer's side. "
    "Out of the box a stock Ceilometer stores none of this agent's meters: the default "
    "conduit, messagingv2, sends delete.samples into [DEFAULT] control_exchange "
    "(`openstack`), an exchange Ceilometer does not listen on. (On RabbitMQ they still reach "
    "it through the `notifications.info` queue both sides bind, but its stock definitions "
    "make only memory, vcpus, disk.root.size and disk.ephemeral.size of them: no cpu, disk "
    "or network sample.) To make a stock Ceilometer receive every sample, with all its "
    "metadata, copy this block into this file:\n"
    "\n"
    "--- begin: stock Ceilometer ---\n"
    "[oslo_messaging_notifications]\n"
    "driver = messagingv2\n"
    "driver = ceilometer\n"
    "--- end: stock Ceilometer ---\n"
    "\n"
    "messagingv2 keeps publishing delete.samples and usage exists for billing. Leave "
    "control_exchange as it is: with it set to `ceilometer` and etc/ceilometer/meters.d "
    "installed, Ceilometer counts every capture twice. The options below only matter where "
    "Ceilometer is configured away from its defaults."))

OPTS = [
    cfg.StrOpt("exchange", default="ceilometer",
               help="Exchange Ceilometer's notification agent reads telemetry.polling from "
                    "(its [notification] notification_control_exchanges has `ceilometer`)."),
    cfg.ListOpt("topics", default=["notifications"],
                help="Ceilometer's [oslo_messaging_notifications] topics."),
]


class CeilometerConduit(MessagingConduit):
    name = "ceilometer"

    def __init__(self, conf: cfg.ConfigOpts, transport=None) -> None:
        conf.register_opts(OPTS, group=GROUP)
        signing.register_opts(conf)
        super().__init__(conf, transport)
        self._exchange = conf.ceilometer_emitter.exchange
        self._secret = conf.publisher.telemetry_secret

    def _configured_topics(self, conf: cfg.ConfigOpts) -> tuple[str, list[str]]:
        return f"[{GROUP.name}] topics", list(conf.ceilometer_emitter.topics)

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
