"""lifecycle-stats-router: run one router replica until SIGTERM or SIGINT.

    lifecycle-stats-router --config-file /etc/lifecycle-stats/router.conf

Reads ``[router]`` and oslo.messaging's own options as its rabbit driver reads them: the
transport URL's query (``?ssl=true&ssl_ca_file=...``) overrides ``[oslo_messaging_rabbit]``;
``amqp_durable_queues`` / ``rabbit_quorum_queue`` (nova's exchange is declared exactly as nova
declares it, or RabbitMQ refuses it; host queues are durable unless ``[router]
durable_host_queues`` is off, as the agents in router mode declare them), ``ssl``,
``ssl_ca_file``, ``ssl_cert_file``, ``ssl_key_file``, ``ssl_version`` and
``heartbeat_timeout_threshold``. ``[metrics]`` serves Prometheus metrics (router_metrics).
Exit status 2: a configuration error (the unit does not restart on it).
"""
from __future__ import annotations

import os
import signal
import ssl
import sys
import threading
import urllib.parse

from oslo_config import cfg
from oslo_log import log

from lifecycle_stats.exceptions import ConfigError
from lifecycle_stats.listeners.router import relay
from lifecycle_stats.operations import exposition, router_metrics, sd_notify

LOG = log.getLogger(__name__)
GROUP = "router"
ROUTER_METRICS_PORT = 9892
TEXTFILE_SLICES = 30  # [metrics] textfile rewritten every 15 s

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
    cfg.BoolOpt("queue_durable", default=True,
                help="Declare the router's own queue durable (it survives a broker restart "
                     "with what it holds). Independent of amqp_durable_queues: only the "
                     "router declares this queue."),
    cfg.BoolOpt("durable_host_queues", default=True,
                help="Declare each host's queue and out_exchange durable: what waits for an "
                     "agent that is down survives a broker restart. Agents in router mode "
                     "declare them too: must equal their [notification_listener] "
                     "router_durable_queues. Quorum queues (rabbit_quorum_queue) are always "
                     "durable."),
    cfg.StrOpt("parking_queue", default="lifecycle-stats-parked",
               help="Durable queue for events a full host queue refused (a length bound "
                    "with overflow reject-publish); each keeps its host in the "
                    "x-lifecycle-stats-host header."),
    cfg.IntOpt("prefetch", default=64, min=1,
               help="Unacknowledged messages a replica holds at once."),
    cfg.IntOpt("consumer_check_interval", default=30, min=1,
               help="Seconds between checks that a host queue has a consumer; events "
                    "routed to one without are counted and logged."),
    cfg.IntOpt("stats_interval", default=60, min=0,
               help="Seconds between counter log lines (0: never)."),
]


def list_opts():
    """For the sample config: [metrics] as the router sets its defaults (parse_config)."""
    import copy

    metrics = [copy.copy(opt) for opt in exposition.OPTS]
    for opt in metrics:
        if opt.name == "port":
            opt.default = ROUTER_METRICS_PORT
            opt.help = "TCP port of the router's Prometheus endpoint (GET /metrics); 0: off."
    return [(GROUP, list(OPTS)), (exposition.GROUP, metrics)]


def parse_url(transport_url: str, conf: cfg.ConfigOpts):
    import oslo_messaging

    parsed = oslo_messaging.TransportURL.parse(conf, transport_url)
    if parsed.transport not in ("rabbit", "kombu"):
        raise ValueError(f"[{GROUP}] transport_url: only rabbit:// is supported, "
                         f"got {parsed.transport}://")
    return parsed


def kombu_url(transport_url: str, conf: cfg.ConfigOpts) -> str:
    """An oslo.messaging rabbit:// URL as kombu amqp:// URLs (';'-separated for failover)."""
    parsed = parse_url(transport_url, conf)
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


def rabbit_options(transport_url: str, conf: cfg.ConfigOpts):
    """[oslo_messaging_rabbit] with the URL's query on top, as oslo's rabbit driver sees it."""
    from oslo_messaging._drivers import common as driver_common

    proxy = driver_common.ConfigOptsProxy(conf, parse_url(transport_url, conf),
                                          "oslo_messaging_rabbit")
    return proxy.oslo_messaging_rabbit


def ssl_options(rabbit, transport_url: str, conf: cfg.ConfigOpts) -> bool | dict:
    """kombu's ``ssl`` argument, built as impl_rabbit's _fetch_ssl_params builds it: with a
    CA file the broker's certificate is required (and its host name checked when the URL
    names one host)."""
    if not rabbit.ssl:
        return False
    for option in ("ssl_ca_file", "ssl_cert_file", "ssl_key_file"):
        path = getattr(rabbit, option)
        if path and not os.access(path, os.R_OK):
            raise ValueError(f"[oslo_messaging_rabbit] {option} {path}: not readable")
    params: dict = {}
    if rabbit.ssl_version:
        from oslo_messaging._drivers.impl_rabbit import Connection

        params["ssl_version"] = Connection.validate_ssl_version(rabbit.ssl_version)
    if rabbit.ssl_key_file:
        params["keyfile"] = rabbit.ssl_key_file
    if rabbit.ssl_cert_file:
        params["certfile"] = rabbit.ssl_cert_file
    if rabbit.ssl_ca_file:
        hosts = parse_url(transport_url, conf).hosts
        params["ca_certs"] = rabbit.ssl_ca_file
        params["cert_reqs"] = ssl.CERT_REQUIRED
        params["server_hostname"] = hosts[0].hostname if len(hosts) == 1 else None
    return params or True


def settings_from_conf(conf: cfg.ConfigOpts) -> relay.RelaySettings:
    opts = conf[GROUP]
    url = opts.transport_url or conf.transport_url or "rabbit://"  # oslo's default
    rabbit = rabbit_options(url, conf)
    return relay.RelaySettings(
        url=kombu_url(url, conf), queue=opts.queue, nova_exchange=opts.nova_exchange,
        topics=tuple(opts.topics), out_exchange=opts.out_exchange,
        host_queue_prefix=opts.host_queue_prefix, durable=rabbit.amqp_durable_queues,
        quorum=rabbit.rabbit_quorum_queue, queue_durable=opts.queue_durable,
        host_durable=opts.durable_host_queues,
        parking_queue=opts.parking_queue, prefetch=opts.prefetch,
        heartbeat=float(rabbit.heartbeat_timeout_threshold),
        ssl=ssl_options(rabbit, url, conf), check_interval=float(opts.consumer_check_interval))


def parse_config(argv) -> cfg.ConfigOpts:
    import oslo_messaging.opts

    conf = cfg.ConfigOpts()
    conf.register_opts(OPTS, group=GROUP)
    for group, group_opts in oslo_messaging.opts.list_opts():
        conf.register_opts(group_opts, group=None if group in (None, "DEFAULT") else group)
    log.register_options(conf)
    exposition.register_opts(conf)
    # Not the agent's suggested 9891: a router may run on a host that also runs an agent.
    conf.set_default("port", ROUTER_METRICS_PORT, group=exposition.GROUP)
    conf(argv, project="lifecycle-stats", prog="lifecycle-stats-router")
    log.setup(conf, "lifecycle-stats")
    return conf


def start_metrics(conf: cfg.ConfigOpts, replica: relay.Relay) -> exposition.MetricsExporter:
    collector = router_metrics.RouterCollector(replica.counters, lambda: replica.connections)
    exporter = exposition.MetricsExporter(conf, exposition.make_registry(collector))
    exporter.start()
    return exporter


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    try:
        conf = parse_config(argv)
        replica = relay.Relay(settings_from_conf(conf))
        exporter = start_metrics(conf, replica)
    except (cfg.Error, ConfigError, ValueError, OSError) as exc:
        print(f"lifecycle-stats-router: configuration error: {exc}", file=sys.stderr)
        return 2
    stopping = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stopping.set())
    replica.start()
    sd_notify.notify("READY=1")  # the relay connects (and reconnects) on its own thread
    status = watch(conf, replica, exporter, stopping)
    sd_notify.notify("STOPPING=1")
    replica.stop()
    exporter.stop()
    LOG.info("router stopped; counters: %s", replica.counters.snapshot())
    return status


def watch(conf: cfg.ConfigOpts, replica: relay.Relay, exporter, stopping) -> int:
    """Until a signal: log counters, write the metrics textfile. 1 if the relay died."""
    interval, slices = conf[GROUP].stats_interval, 0
    # Wait in slices: a signal handed to another thread only runs its handler when the main
    # thread next executes Python code.
    while not stopping.wait(0.5):
        slices += 1
        if interval and slices % (interval * 2) == 0:
            LOG.info("router counters: %s", replica.counters.snapshot())
        if slices % TEXTFILE_SLICES == 0:
            exporter.write_textfile()
        if not replica.alive:
            LOG.error("the relay thread ended; exiting for a restart")
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
