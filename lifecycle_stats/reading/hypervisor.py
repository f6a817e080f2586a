"""One libvirt connection, with libvirtError translated at this boundary.

A Hypervisor owns exactly one virConnect to one URI, opened lazily. `call(fn)` runs fn(conn);
a libvirtError becomes one of our exceptions (exceptions.py), and a lost connection is closed,
reopened and fn retried with exponential backoff (tenacity; only ConnectionLost is retried).
There is no module state: the flush path and the poller each build their own Hypervisor, so a
flush never queues behind a long bulk poll on a shared connection.
"""
from __future__ import annotations

import contextlib
import logging
import threading
import time
from typing import Callable, Iterator, TypeVar

import libvirt
import tenacity
from oslo_config import cfg

from lifecycle_stats.exceptions import ConnectionLost, DomainGone, HypervisorError

LOG = logging.getLogger(__name__)
T = TypeVar("T")

GROUP = "libvirt"
OPTS = [
    cfg.StrOpt("uri", default="qemu:///system",
               help="libvirt connection URI of the local hypervisor."),
    cfg.IntOpt("connection_retry_attempts", default=5, min=1,
               help="Attempts (the first included) at a libvirt call when the connection "
                    "drops; the connection is reopened before each retry."),
    cfg.FloatOpt("connection_retry_max_wait", default=2.0, min=0.0,
                 help="Upper bound in seconds of the exponential wait between reconnects."),
    # the agent's pool of readers at nova's announcements (reader_pool.py)
    cfg.IntOpt("read_connections", default=4, min=1, max=64,
               help="libvirt connections for the reads at nova's announcements (bus workers "
                    "and the hook read at once). libvirtd serves at most its "
                    "max_client_requests (default 5) calls of one connection at once; each "
                    "connection costs the daemon one client slot (max_clients)."),
    # the event connection's (listeners/libvirt_events.py): one [libvirt] group, defined here
    cfg.IntOpt("keepalive_interval", default=5, min=1,
               help="Seconds between keepalive probes on the event connection."),
    cfg.IntOpt("keepalive_count", default=3, min=1,
               help="Unanswered keepalive probes before the connection counts as dead."),
    cfg.FloatOpt("reconnect_max_wait", default=10.0, min=0.1,
                 help="Longest wait, in seconds, between two reconnect attempts."),
]

# Transport failures: the socket to libvirtd broke ("Cannot write data: Broken pipe" is
# SYSTEM_ERROR/RPC, "client socket is closed" is INTERNAL_ERROR/RPC, both measured).
_TRANSPORT_CODES = frozenset({libvirt.VIR_ERR_SYSTEM_ERROR, libvirt.VIR_ERR_INTERNAL_ERROR})
_TRANSPORT_DOMAINS = frozenset({libvirt.VIR_FROM_REMOTE, libvirt.VIR_FROM_RPC})
# Connection objects that are no longer usable whatever the domain reporting it.
_CONNECTION_CODES = frozenset({libvirt.VIR_ERR_NO_CONNECT, libvirt.VIR_ERR_INVALID_CONN})
_CLOSED_PHRASES = ("client socket is closed", "connection closed", "end of file while reading")

FIRST_WAIT_S = 0.1  # backoff: 0.1, 0.2, 0.4 ... capped at retry_max_wait


def translate(exc: libvirt.libvirtError, instance_id: str | None = None) -> HypervisorError:
    """Our exception for a libvirtError (the caller raises it `from exc`)."""
    message = exc.get_error_message() or str(exc)
    if exc.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
        error: HypervisorError = DomainGone(instance_id or "<unknown>")
    elif _is_connection_failure(exc, message):
        error = ConnectionLost(message)
    else:
        error = HypervisorError(message)
    error.__cause__ = exc
    return error


@contextlib.contextmanager
def translated(instance_id: str | None = None) -> Iterator[None]:
    """Run the block with any libvirtError re-raised as our exception (see translate())."""
    try:
        yield
    except libvirt.libvirtError as exc:
        raise translate(exc, instance_id) from exc


def open_connection(uri: str,
                    open_fn: Callable[[str], libvirt.virConnect] = libvirt.open
                    ) -> libvirt.virConnect:
    """A new connection to uri. ConnectionLost when the daemon is down or restarting (worth
    retrying), HypervisorError when retrying cannot help (e.g. no driver for the URI)."""
    try:
        conn = open_fn(uri)
    except libvirt.libvirtError as exc:
        message = exc.get_error_message() or str(exc)
        if _is_transport_failure(exc):
            raise ConnectionLost(f"cannot connect to {uri}: {message}") from exc
        raise HypervisorError(f"cannot connect to {uri}: {message}") from exc
    if conn is None:
        raise ConnectionLost(f"cannot connect to {uri}")
    return conn


def reconnect_policy(*, stop, max_wait: float, sleep: Callable[[float], None],
                     before_sleep: Callable[[tenacity.RetryCallState], None]
                     ) -> tenacity.Retrying:
    """The one retry policy for lost libvirt connections, used by every connection the agent
    holds (Hypervisor.call and the lifecycle listener's reconnect thread): only ConnectionLost
    is retried, with exponential backoff from FIRST_WAIT_S capped at max_wait."""
    return tenacity.Retrying(
        retry=tenacity.retry_if_exception_type(ConnectionLost),
        stop=stop,
        wait=tenacity.wait_exponential(multiplier=FIRST_WAIT_S, max=max_wait),
        sleep=sleep,
        before_sleep=before_sleep,
        reraise=True,
    )


def _is_transport_failure(exc: libvirt.libvirtError) -> bool:
    return (exc.get_error_code() in _TRANSPORT_CODES
            and exc.get_error_domain() in _TRANSPORT_DOMAINS)


def _is_connection_failure(exc: libvirt.libvirtError, message: str) -> bool:
    if exc.get_error_code() in _CONNECTION_CODES or _is_transport_failure(exc):
        return True
    lowered = message.lower()
    return any(phrase in lowered for phrase in _CLOSED_PHRASES)


class Hypervisor:
    def __init__(
        self,
        uri: str,
        *,
        open_fn: Callable[[str], libvirt.virConnect] = libvirt.open,
        retry_attempts: int = 5,
        retry_max_wait: float = 2.0,
        sleep: Callable[[float], None] = time.sleep,
    ):
        if retry_attempts < 1:
            raise ValueError(f"retry_attempts must be >= 1, got {retry_attempts!r}")
        if retry_max_wait < 0:
            raise ValueError(f"retry_max_wait must be >= 0, got {retry_max_wait!r}")
        self.uri = uri
        self._open_fn = open_fn
        self._attempts = retry_attempts
        self._max_wait = retry_max_wait
        self._sleep = sleep
        self._lock = threading.Lock()
        self._conn: libvirt.virConnect | None = None

    @classmethod
    def from_conf(cls, conf: cfg.ConfigOpts, **kwargs) -> "Hypervisor":
        """Build from the [libvirt] options of conf (registered on conf here if needed)."""
        conf.register_opts(OPTS, group=GROUP)
        group = conf[GROUP]
        return cls(group.uri, retry_attempts=group.connection_retry_attempts,
                   retry_max_wait=group.connection_retry_max_wait, **kwargs)

    def connection(self) -> libvirt.virConnect:
        """The live connection, opened on first use (or after a loss)."""
        with self._lock:
            if self._conn is None:
                self._conn = self._open()
            return self._conn

    def call(self, fn: Callable[[libvirt.virConnect], T], instance_id: str | None = None) -> T:
        """fn(conn) with libvirtError translated; reconnects and retries on ConnectionLost."""
        retrying = reconnect_policy(stop=tenacity.stop_after_attempt(self._attempts),
                                    max_wait=self._max_wait, sleep=self._sleep,
                                    before_sleep=self._log_retry)
        return retrying(self._attempt, fn, instance_id)

    def is_alive(self) -> bool:
        """True when a connection is open and libvirt still considers it usable."""
        conn = self._conn
        if conn is None:
            return False
        try:
            return conn.isAlive() == 1
        except libvirt.libvirtError:
            return False

    def close(self) -> None:
        with self._lock:
            conn, self._conn = self._conn, None
        _close_quietly(conn)

    def _attempt(self, fn: Callable[[libvirt.virConnect], T], instance_id: str | None) -> T:
        conn = self.connection()
        try:
            with translated(instance_id):
                return fn(conn)
        except ConnectionLost:
            self._discard(conn)
            raise

    def _open(self) -> libvirt.virConnect:
        return open_connection(self.uri, self._open_fn)

    def _discard(self, conn: libvirt.virConnect) -> None:
        """Forget conn unless another thread has already replaced it."""
        with self._lock:
            if self._conn is not conn:
                return
            self._conn = None
        _close_quietly(conn)

    def _log_retry(self, state: tenacity.RetryCallState) -> None:
        LOG.warning("libvirt connection to %s lost (%s); reconnect attempt %d of %d",
                    self.uri, state.outcome.exception(), state.attempt_number + 1,
                    self._attempts)


def _close_quietly(conn: libvirt.virConnect | None) -> None:
    if conn is None:
        return
    try:
        conn.close()
    except libvirt.libvirtError as exc:  # closing a broken connection may itself fail
        LOG.debug("closing libvirt connection failed: %s", exc)
