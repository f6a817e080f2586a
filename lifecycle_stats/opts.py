"""Every option the agent defines, for oslo-config-generator (entry point oslo.config.opts)
and for registering them all on one ConfigOpts."""
from __future__ import annotations

import itertools

from oslo_config import cfg


def list_opts():
    from lifecycle_stats.emitters import ceilometer, file, messaging, udp
    from lifecycle_stats import agent
    from lifecycle_stats.operations import exposition
    from lifecycle_stats.reading import hypervisor
    from lifecycle_stats.capture import flush, poller, publication
    from lifecycle_stats.usage import closer
    from lifecycle_stats.publishing import samples, signing, spool_options
    from lifecycle_stats.listeners import bus, hook_server

    return [
        ("DEFAULT", agent.OPTS),
        ("libvirt", hypervisor.OPTS),
        ("poller", poller.OPTS),
        ("flush", flush.OPTS),
        ("publication", publication.OPTS),
        ("usage", closer.OPTS),
        ("spool", spool_options.OPTS),
        ("notification_listener", bus.OPTS),
        ("hook", hook_server.OPTS),
        ("messaging_emitter", messaging.OPTS),
        ("metrics", exposition.OPTS),
        (ceilometer.GROUP, ceilometer.OPTS),
        ("udp_emitter", udp.OPTS),
        ("file_emitter", file.OPTS),
        ("meters", samples.OPTS),
        ("publisher", signing.OPTS),
    ]


def register_all(conf: cfg.ConfigOpts) -> None:
    """Ours, and oslo.messaging's (transport_url, control_exchange,
    [oslo_messaging_notifications]) which it would otherwise register only on first use."""
    import oslo_messaging.opts

    for group, opts in itertools.chain(list_opts(), oslo_messaging.opts.list_opts()):
        conf.register_opts(opts, group=None if group in (None, "DEFAULT") else group)
