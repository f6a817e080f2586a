"""Serve nova_driver's triggers on a local unix socket: the zero-race path beside the bus.

The driver inside nova-compute sends nova's own .start message (hook_protocol) and waits; what
the request becomes is hook_answers.py's (parsed as the bus listener parses it, handed to the
core's front door), and the server writes the answer as soon as the core knows the outcome: for
a delete, once its capture is spooled, before the senders are woken to publish it. Nova goes on
with the destroy after the answer (or after its own timeout).

Both paths may deliver one delete (nova keeps publishing to the bus through messagingv2): the
flush's per-instance lock and the spool's seen() make the second a DUPLICATE, one event.

Threads: one accept thread; one thread per connection, at most ``max_connections`` at a time
(nova deletes instances in parallel RPC workers); beyond that a connection is answered BUSY at
once, so nova never waits in a queue that no one works on. The driver keeps its connections
(listeners/nova/connections.py): a connection's thread answers one request after another
until the driver closes it or it has been idle ``idle_timeout`` seconds, which every reply
tells the driver (protocol.KEEP), so no delete pays for a connect, an accept and a new thread.
"""
from __future__ import annotations

import datetime
import logging
import socket
import threading
import time
from typing import Callable

from oslo_config import cfg

from lifecycle_stats.counters import Counters
from lifecycle_stats.interfaces import AnnouncementHandler
from lifecycle_stats.records import utcnow
from lifecycle_stats.listeners import hook_answers, socket_file
from lifecycle_stats.listeners.nova import protocol as hook_protocol

LOG = logging.getLogger(__name__)
GROUP = "hook"
ACCEPT_POLL = 0.5  # seconds: how soon the accept thread notices stop()
ACCEPT_JOIN = 1.0  # seconds stop() waits for the accept thread (woken at once by _wake)
# seconds stop() waits for answers in hand: nova stopped waiting after its own timeout
# (0.5 s by default); the flushes behind them are also the bus listener's to finish
STOP_TIMEOUT = 3.0
DEFAULT_GROUP = "nova"
OPTS = [
    cfg.BoolOpt("enabled", default=True,
                help="Serve the socket that lifecycle-stats' nova notifier driver "
                     "(nova.conf [oslo_messaging_notifications] driver = lifecycle_stats) "
                     "sends to. The bus listener works with or without it."),
    cfg.StrOpt("socket_path", default=hook_protocol.DEFAULT_SOCKET_PATH,
               help="Unix socket the driver inside nova-compute connects to; must equal "
                    "nova.conf [lifecycle_stats] socket_path."),
    cfg.StrOpt("socket_group", default=DEFAULT_GROUP,
               help="Group (name or gid) of the socket, mode 0660: nova-compute's group. "
                    "Empty: the agent's own group. Left at 'nova' on a host without that "
                    "group, the socket is not served (a warning says so); any other "
                    "missing group is a configuration error."),
    cfg.IntOpt("max_connections", default=16, min=1,
               help="Driver connections served at once (a kept one holds its place while "
                    "idle); more are answered 'busy' at once."),
    cfg.FloatOpt("request_timeout", default=5.0, min=0.1,
                 help="Seconds to wait for a newly connected driver's request, to read a "
                      "request once it began, and to write the answer."),
    cfg.FloatOpt("idle_timeout", default=300.0, min=1.0,
                 help="Seconds a driver's connection is kept open without a request (it "
                      "holds one of max_connections meanwhile); the driver stops reusing "
                      "it a little earlier."),
]


def register_opts(conf: cfg.ConfigOpts) -> None:
    conf.register_opts(OPTS, group=GROUP)


def list_opts() -> list[tuple[str, list[cfg.Opt]]]:
    return [(GROUP, list(OPTS))]


class HookServer:
    def __init__(self, path: str, *, host: str, on_trigger: AnnouncementHandler,
                 counters: Counters | None = None, group: str | None = None,
                 max_connections: int = 16, request_timeout: float = 5.0,
                 idle_timeout: float = 300.0,
                 clock: Callable[[], datetime.datetime] = utcnow) -> None:
        self.path = path
        self.host = host
        self.counters = counters if counters is not None else Counters()
        self._answers = hook_answers.HookAnswers(host=host, on_trigger=on_trigger,
                                                 counters=self.counters, clock=clock)
        self._gid = socket_file.group_id(group, f"[{GROUP}] socket_group")
        self._max_connections = max_connections
        self._in_flight = 0
        self._idle = threading.Condition()
        self._request_timeout = request_timeout
        self._idle_timeout = idle_timeout
        self._open: set[socket.socket] = set()  # under self._idle: what stop() wakes
        self._stopping = threading.Event()
        self._sock: socket.socket | None = None
        self._inode = 0
        self._accepter: threading.Thread | None = None

    def start(self) -> None:
        option = f"[{GROUP}] socket_path"
        socket_file.prepare_directory(self.path, self._gid, option)
        socket_file.remove_stale(self.path, option)
        self._sock, self._inode = socket_file.bind(self.path, self._gid)
        self._sock.settimeout(ACCEPT_POLL)
        self._stopping.clear()
        self._accepter = threading.Thread(target=self._accept_loop, name="hook-accept",
                                          daemon=True)
        self._accepter.start()
        LOG.info("serving nova's notifier driver on %s", self.path)

    def stop(self, timeout: float = STOP_TIMEOUT) -> None:
        """Stop accepting, remove the socket file, and wait (bounded) for answers in hand."""
        if self._sock is None:
            return
        self._stopping.set()
        _wake(self.path)
        self._accepter.join(ACCEPT_JOIN)
        self._sock.close()
        socket_file.remove_if_ours(self.path, self._inode)
        self._sock = None
        with self._idle:
            for conn in self._open:  # idle ones see EOF now; busy ones answer, then end
                _end_reading(conn)
            if not self._idle.wait_for(lambda: self._in_flight == 0, timeout):
                LOG.warning("%d hook triggers still in hand after %.1fs", self._in_flight,
                            timeout)

    def _take_slot(self, conn: socket.socket) -> bool:
        with self._idle:
            if self._in_flight >= self._max_connections:
                return False
            self._in_flight += 1
            self._open.add(conn)
            return True

    def _free_slot(self, conn: socket.socket) -> None:
        with self._idle:
            self._open.discard(conn)
            self._in_flight -= 1
            self._idle.notify_all()

    def _accept_loop(self) -> None:
        while not self._stopping.is_set():
            try:
                conn, _ = self._sock.accept()
            except socket.timeout:
                continue
            except OSError:
                if not self._stopping.is_set():
                    LOG.exception("hook socket %s failed; the bus listener remains", self.path)
                return
            if self._stopping.is_set():
                conn.close()
                return
            if not self._take_slot(conn):
                self.counters.incr("hook.busy")
                self._reply(conn, hook_answers.reply(hook_protocol.BUSY))
                conn.close()
                continue
            self.counters.incr("hook.connections")
            threading.Thread(target=self._serve, args=(conn,), name="hook-conn",
                             daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        """Answer the connection's requests one after another until it closes, idles out,
        sends garbage or the server stops."""
        try:
            if not _request_arrives(conn, self._request_timeout):  # sent at once on connect
                self.counters.incr("hook.read_errors")
                LOG.warning("no request on %s within %.1fs", self.path, self._request_timeout)
                return
            while self._serve_one(conn) and not self._stopping.is_set():
                if not _request_arrives(conn, self._idle_timeout):
                    return  # idle too long: the driver has stopped reusing it already
        finally:
            conn.close()
            self._free_slot(conn)

    def _serve_one(self, conn: socket.socket) -> bool:
        """Read one request and answer it; False when the connection is done."""
        try:
            request = hook_protocol.read_frame(conn, time.monotonic() + self._request_timeout)
        except hook_protocol.Closed:
            return False  # the driver closed it between requests: its right
        except hook_protocol.ProtocolError as exc:  # out of step: answered, then closed
            self.counters.incr("hook.rejected")
            LOG.warning("rejected a frame on %s: %s", self.path, exc)
            self._reply(conn, hook_answers.reply(hook_protocol.REJECTED, detail=str(exc)))
            return False
        except OSError as exc:
            self.counters.incr("hook.read_errors")
            LOG.warning("no request read on %s: %s", self.path, exc)
            return False
        read_at = time.monotonic()
        sent: list[bool] = []

        def reply_now(reply: dict) -> None:  # once, as soon as there is an answer
            if not sent:
                sent.append(self._reply(conn, self._stamped(reply, read_at)))

        reply_now(self.answer(request, early=reply_now))
        return sent[0]

    def _stamped(self, reply: dict, read_at: float) -> dict:
        # for nova's log: the agent's share of nova's wait, and (the same clock in every
        # process of the host) when the request arrived, so the driver can split the rest
        reply["agent_ms"] = round((time.monotonic() - read_at) * 1000, 2)
        reply["read_at"] = read_at
        reply[hook_protocol.KEEP] = self._idle_timeout
        return reply

    def _reply(self, conn: socket.socket, reply: dict) -> bool:
        """False when the answer could not be written (the connection is then done)."""
        try:
            hook_protocol.send_frame(conn, reply, time.monotonic() + self._request_timeout)
            return True
        except OSError as exc:  # nova stopped waiting (its timeout): the work is done anyway
            self.counters.incr("hook.late_replies")
            LOG.info("nova left before the answer %s: %s", reply.get("status"), exc)
            return False

    def answer(self, request: dict, early: Callable[[dict], None] | None = None) -> dict:
        """What the request becomes (hook_answers.py); never raises."""
        return self._answers.answer(request, early)


def _request_arrives(conn: socket.socket, wait: float) -> bool:
    """True once something arrives within ``wait`` seconds (a request, or the EOF that
    read_frame then reports as Closed); False when the connection stayed silent."""
    try:
        conn.settimeout(wait)
        conn.recv(1, socket.MSG_PEEK)
        return True
    except socket.timeout:
        return False
    except OSError:
        return True  # read_frame meets the same error and says what it was


def _end_reading(conn: socket.socket) -> None:
    try:
        conn.shutdown(socket.SHUT_RD)
    except OSError:
        pass  # already closed by its thread


def _wake(path: str) -> None:
    """Connect once, so a blocked accept() returns now rather than at its next poll."""
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(0.5)
            sock.connect(path)
    except OSError:
        pass


def from_conf(conf: cfg.ConfigOpts, host: str, on_trigger: AnnouncementHandler,
              counters: Counters | None = None) -> HookServer | None:
    """The server configured by ``[hook]``, or None when it is disabled."""
    register_opts(conf)
    opts = conf[GROUP]
    if not opts.enabled:
        return None
    if opts.socket_group == DEFAULT_GROUP and not socket_file.group_exists(DEFAULT_GROUP):
        LOG.warning("not serving %s: no group %r on this host to give nova access; set "
                    "[%s] socket_group (or enabled = false). Deletes are still heard on "
                    "the bus.", opts.socket_path, DEFAULT_GROUP, GROUP)
        return None
    return HookServer(opts.socket_path, host=host, on_trigger=on_trigger, counters=counters,
                      group=opts.socket_group, max_connections=opts.max_connections,
                      request_timeout=opts.request_timeout, idle_timeout=opts.idle_timeout)
