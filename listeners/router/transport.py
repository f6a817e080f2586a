"""The agent's side of router mode: its listener declares the host queue durable, as the router
does by default (``[router] durable_host_queues``), whatever the site's ``amqp_durable_queues``.

oslo.messaging's rabbit driver lets a transport URL's query override ``[oslo_messaging_rabbit]``
for that transport alone, so the listener's transport gets ``amqp_durable_queues=true`` and the
agent's conduits keep the site's setting (their exchanges are declared by others too).
"""
from __future__ import annotations

import oslo_messaging
from oslo_config import cfg

NOTIFICATIONS_GROUP = "oslo_messaging_notifications"
RABBIT = ("rabbit", "kombu")


def durable_listener_url(conf: cfg.ConfigOpts, url: str | None):
    """The listener's transport URL as get_notification_transport resolves it (``url``, else
    [oslo_messaging_notifications] transport_url, else [DEFAULT] transport_url), with durable
    queues asked for in its query. Other drivers (fake:// in tests and the demo): unchanged."""
    for group, opts in oslo_messaging.opts.list_opts():
        if group == NOTIFICATIONS_GROUP:
            conf.register_opts(opts, group=group)  # as get_notification_transport does
    url = url or conf[NOTIFICATIONS_GROUP].transport_url
    parsed = oslo_messaging.TransportURL.parse(conf, url)
    if parsed.transport not in RABBIT:
        return url
    parsed.query = {**parsed.query, "amqp_durable_queues": "true"}
    return parsed
