"""Ceilometer's UDP publisher wire format (entry point `udp`).

One msgpack datagram (use_bin_type) per sample, each a signed meter message, sent to
`[udp_emitter] target` = udp://host:port (default port 4952, as Ceilometer's). UDP confirms
nothing: emit() succeeds once the kernel accepted every datagram. A sample too large for one
datagram cannot ever be sent; it is logged and counted (`oversized`) instead of blocking the
conduit, and the others still go.
"""
from __future__ import annotations

import logging
import socket
import urllib.parse

import msgpack
from oslo_config import cfg

from lifecycle_stats.interfaces import Conduit
from lifecycle_stats.publishing import meter_messages, signing
from lifecycle_stats.exceptions import ConfigError, EmitError
from lifecycle_stats.records import Notification

LOG = logging.getLogger(__name__)

DEFAULT_PORT = 4952
MAX_DATAGRAM = 65507  # IPv4 UDP payload limit

OPTS = [
    cfg.StrOpt("target", default=f"udp://127.0.0.1:{DEFAULT_PORT}",
               help="udp://host:port the samples are sent to (Ceilometer's publisher URL)."),
]


def parse_target(url: str, option: str = "[udp_emitter] target") -> tuple[str, int]:
    parts = urllib.parse.urlsplit(url)
    try:
        port = parts.port or DEFAULT_PORT
    except ValueError as exc:
        raise ConfigError(option, url, f"bad port: {exc}") from exc
    if parts.scheme != "udp" or not parts.hostname:
        raise ConfigError(option, url, "expected udp://host[:port]")
    return parts.hostname, port


class UdpConduit(Conduit):
    name = "udp"

    def __init__(self, conf: cfg.ConfigOpts) -> None:
        conf.register_opts(OPTS, group="udp_emitter")
        signing.register_opts(conf)
        self._secret = conf.publisher.telemetry_secret
        host, port = parse_target(conf.udp_emitter.target)
        try:
            family, _, _, _, self._address = socket.getaddrinfo(
                host, port, type=socket.SOCK_DGRAM)[0]
        except socket.gaierror as exc:
            raise ConfigError("[udp_emitter] target", conf.udp_emitter.target,
                              f"cannot resolve {host}: {exc}") from exc
        self._socket = socket.socket(family, socket.SOCK_DGRAM)
        self.oversized = 0

    def emit(self, notification: Notification) -> None:
        for message in meter_messages.from_notification(notification, self._secret):
            datagram = msgpack.packb(message, use_bin_type=True)
            if len(datagram) > MAX_DATAGRAM:
                self.oversized += 1
                LOG.error("sample %s (%s) is %d bytes, over one UDP datagram: not sent",
                          message["message_id"], message["counter_name"], len(datagram))
                continue
            try:
                self._socket.sendto(datagram, self._address)
            except OSError as exc:
                raise EmitError(f"udp send to {self._address} failed: {exc}") from exc

    def close(self) -> None:
        self._socket.close()
