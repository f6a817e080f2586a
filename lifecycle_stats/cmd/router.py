"""lifecycle-stats-router: run one router replica until SIGTERM or SIGINT.

    lifecycle-stats-router --config-file /etc/lifecycle-stats/router.conf

Reads ``[router]`` and oslo.messaging's own options (``transport_url``,
``[oslo_messaging_rabbit] amqp_durable_queues`` / ``rabbit_quorum_queue``: the exchanges and
queues are declared exactly as nova and the agents declare them, or RabbitMQ refuses them).
"""
from __future__ import annotations

import signal
import sys
import threading
import urllib.parse

from oslo_config import cfg
from oslo_log import log

from lifecycle_stats.listeners.router import relay

LOG = log.getLogger(__name__)
GROUP = "router"

OPTS = [
    cfg.StrOpt("transport_url", secret=True, default=None,
               help="The broker nova publishes its notifications to. Unset: [DEFAULT] "
                    "transport_url. Only rabbit:// is supported."),
    cfg.StrOpt("queue", default="lifecycle-stats-router",
               help="The ONE queue every replica consumes (replicas compete on it)."),
    cfg.StrOpt("nova_exchange", default="nova", help="nova's control_exchange."),
    cfg.ListOpt("topics", default=["notifications", "versioned_notifications"],
                help="nova's notification topics; the router binds <topic>.info."),
    cfg.StrOpt("out_exchange", default="lifecycle_stats",
               help="Exchange the router republishes to; agents' [notification_listener] "
                    "router_exchange."),
    cfg.StrOpt("host_queue_prefix", default="lifecycle-stats.",
               help="Each host's agent queue is <prefix><host> (the agent's default pool); "
                    "the router declares it so events wait for an agent that is down."),
    cfg.IntOpt("prefetch", default=64, min=1,
               help="Unacknowledged messages a replica holds at once."),
    cfg.IntOpt("stats_interval", default=60, min=0,
               help="Seconds between counter log lines (0: never)."),
]


def list_opts():
    return [(GROUP, list(OPTS))]


def kombu_url(transport_url: str, conf: cfg.ConfigOpts) -> str:
    """An oslo.messaging rabbit:// URL as kombu amqp:// URLs (';'-separated for failover)."""
    import oslo_messaging

    parsed = oslo_messaging.TransportURL.parse(conf, transport_url)
    if parsed.transport not in ("rabbit", "kombu"):
        raise ValueError(f"[{GROUP}] transport_url: only rabbit:// is supported, "
                         f"got {parsed.transport}://")
    vhost = urllib.parse.quote(parsed.virtual_host or "", safe="")
    urls = []
    for host in parsed.hosts:
        auth = ""
        if host.username:
            auth = urllib.parse.quote(host.username, safe="")
            if host.password:
                auth += ":" + urllib.parse.quote(host.password, safe="")
            auth += "@"
        urls.append(f"amqp://{auth}{host.hostname}:{host.port or 5672}/{vhost}")
    # rabbit:// alone (oslo.messaging's default) means the local broker's defaults
    return ";".join(urls) or f"amqp://guest:guest@localhost:5672/{vhost}"


def settings_from_conf(conf: cfg.ConfigOpts) -> relay.RelaySettings:
    opts = conf[GROUP]
    url = opts.transport_url or conf.transport_url  # oslo.messaging's default: rabbit://
    rabbit = conf.oslo_messaging_rabbit
    return relay.RelaySettings(
        url=kombu_url(url, conf), queue=opts.queue, nova_exchange=opts.nova_exchange,
        topics=tuple(opts.topics), out_exchange=opts.out_exchange,
        host_queue_prefix=opts.host_queue_prefix, durable=rabbit.amqp_durable_queues,
        quorum=rabbit.rabbit_quorum_queue, prefetch=opts.prefetch)


def parse_config(argv) -> cfg.ConfigOpts:
    import oslo_messaging.opts

    conf = cfg.ConfigOpts()
    conf.register_opts(OPTS, group=GROUP)
    for group, group_opts in oslo_messaging.opts.list_opts():
        conf.register_opts(group_opts, group=None if group in (None, "DEFAULT") else group)
    log.register_options(conf)
    conf(argv, project="lifecycle-stats", prog="lifecycle-stats-router")
    log.setup(conf, "lifecycle-stats")
    return conf


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    try:
        conf = parse_config(argv)
        replica = relay.Relay(settings_from_conf(conf))
    except (cfg.Error, ValueError) as exc:
        print(f"lifecycle-stats-router: configuration error: {exc}", file=sys.stderr)
        return 2
    stopping = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stopping.set())
    replica.start()
    interval, slices = conf[GROUP].stats_interval, 0
    # Wait in slices: a signal handed to another thread only runs its handler when the main
    # thread next executes Python code.
    while not stopping.wait(0.5):
        slices += 1
        if interval and slices % (interval * 2) == 0:
            LOG.info("router counters: %s", replica.counters.snapshot())
    replica.stop()
    LOG.info("router stopped; counters: %s", replica.counters.snapshot())
    return 0


if __name__ == "__main__":
    sys.exit(main())
