"""Where the metrics go: an HTTP endpoint for Prometheus and/or a textfile for node_exporter.

The endpoint is on by default, as exporters are: `[metrics] port` DEFAULT_PORT on `[metrics]
listen` 127.0.0.1 (a scrape reveals the host's delete rate: widen it to a management
address, not to every interface). 0 turns it off. The exporters' registry (Prometheus wiki,
"Default port allocations") has allocated all of 9100-9999; 9891 is on none of the exporters
an OpenStack compute host runs (node 9100, libvirt 9177, openstack 9180/9198, process 9256,
smartctl 9633, rabbitmq 9419/15692, haproxy 9101, mysqld 9104, ovn 9476, systemd 9558).
Tests and demos that start several agents on one machine give each port 0 or a free port.
"""
from __future__ import annotations

import logging

import prometheus_client
from oslo_config import cfg
from prometheus_client import CollectorRegistry, ProcessCollector

from lifecycle_stats import threads
from lifecycle_stats.exceptions import ConfigError
from lifecycle_stats.operations import files
from lifecycle_stats.operations.metrics import AgentCollector

LOG = logging.getLogger(__name__)
GROUP = "metrics"
DEFAULT_PORT = 9891

OPTS = [
    cfg.HostAddressOpt("listen", default="127.0.0.1",
                       help="Address the Prometheus endpoint binds. Keep it on loopback (or a "
                            "management network): a scrape reveals this host's delete rate."),
    cfg.PortOpt("port", default=DEFAULT_PORT,
                help="TCP port of the Prometheus endpoint (GET /metrics); 0 turns it off."),
    cfg.StrOpt("textfile", default=None, mutable=True,
               help="Also write the metrics to this file (node_exporter's textfile "
                    "collector, e.g. /var/lib/prometheus/node-exporter/lifecycle_stats.prom "
                    "on Debian/Ubuntu: the shipped unit makes that folder writable), at every "
                    "status write. Unset: no file."),
]


def register_opts(conf: cfg.ConfigOpts) -> None:
    conf.register_opts(OPTS, group=GROUP)


def make_registry(collector: AgentCollector, *, process: bool = True) -> CollectorRegistry:
    """A registry of our own (not prometheus_client's global one): one per agent."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)
    if process:
        ProcessCollector(namespace="lifecycle_stats", registry=registry)
    return registry


def write_textfile(path: str, registry: CollectorRegistry) -> None:
    """Atomically replace path, mode 0644 so node_exporter (another user) can read it."""
    files.write_atomically(path, prometheus_client.generate_latest(registry), 0o644)


class MetricsExporter:
    """Serves the registry over HTTP when a port is set; writes the textfile on demand."""

    def __init__(self, conf: cfg.ConfigOpts, registry: CollectorRegistry) -> None:
        register_opts(conf)
        self._conf = conf
        self.textfile = conf[GROUP].textfile  # mutable: the agent's reload hook sets it
        self.registry = registry
        self._server = None
        self._thread = None

    @property
    def address(self) -> tuple[str, int] | None:
        """(host, port) actually bound, None when the endpoint is off."""
        return None if self._server is None else self._server.server_address[:2]

    @property
    def thread_state(self) -> str | None:
        """The HTTP server thread's state (threads.state); None when the endpoint is off."""
        if self._thread is None:
            return None
        return threads.state(self._thread, stopping=self._server is None)

    def start(self) -> None:
        opts = self._conf[GROUP]
        if not opts.port:
            return
        try:
            self._server, self._thread = prometheus_client.start_http_server(
                opts.port, addr=opts.listen, registry=self.registry)
        except OSError as exc:
            raise ConfigError(f"[{GROUP}] listen/port", f"{opts.listen}:{opts.port}",
                              f"cannot listen: {exc}") from exc
        LOG.info("Prometheus metrics on http://%s:%d/metrics", *self.address)

    def write_textfile(self) -> None:
        """Never raises: a textfile that cannot be written must not stop the status file."""
        path = self.textfile
        if not path:
            return
        try:
            write_textfile(path, self.registry)
        except OSError as exc:
            LOG.warning("[%s] textfile %s not written: %s", GROUP, path, exc)

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._thread.join(5)
            self._server = None
