"""The driver's connections to the agent, kept open between nova's actions: a delete then
pays one frame each way, not a connect, the agent's accept and a new thread in the agent.

Runs INSIDE nova-compute (native threads, or eventlet with green sockets and locks): the
standard library and protocol.py only. The rules, each for a reason:

- A connection carries one request at a time: it is taken out of the idle list for the whole
  exchange and given back only after its answer was read whole, so two of nova's workers
  never interleave frames on one socket.
- Any failure during an exchange (the timeout included) closes that connection: an answer
  that arrives late must never be read as the next request's.
- The agent keeps an idle connection only ``keep`` seconds (its reply says so; an agent
  without keep-alive closes after one answer and says nothing); the driver retires one
  earlier, and before each reuse checks that the agent has not closed it meanwhile.
- A kept connection found dead while sending is retried ONCE on a new connection, within
  the same deadline, only when the failure proves the agent never read the request: EPIPE
  (the agent had closed before the frame arrived) or ECONNRESET (Linux resets a unix socket
  closed with unread data). A plain EOF after sending means the agent read it: no resend.
  (A resend would be harmless for a delete, which the agent dedupes by its message_id, and
  for a closing read, which only adds a reading; it is still not done where not needed.)
"""
from __future__ import annotations

import os
import socket
import threading
import time
from typing import Callable

from lifecycle_stats.listeners.nova import protocol

MAX_IDLE = 4  # connections kept idle: nova's usual concurrent actions on one host
# seconds before the agent's ``keep`` that the driver stops reusing a connection, so it never
# sends on one the agent is closing for idleness at the same moment
KEEP_MARGIN = 5.0
_UNREAD = (BrokenPipeError, ConnectionResetError)


class _Kept:
    __slots__ = ("sock", "usable_until")

    def __init__(self, sock: socket.socket, usable_until: float) -> None:
        self.sock = sock
        self.usable_until = usable_until


class _NeverRead(Exception):
    """A kept connection died before the agent read the request."""


class AgentConnections:
    """Idle connections to one agent socket, most recently used first (LIFO: the warmest is
    the least likely to have been closed for idleness; the others age out)."""

    def __init__(self, path: str, max_idle: int = MAX_IDLE,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.path = path
        self._max_idle = max_idle
        self._clock = clock
        self._lock = threading.Lock()
        self._idle: list[_Kept] = []
        self._pid = os.getpid()

    def request(self, message: dict, timeout: float) -> dict:
        """Send ``message``, return the agent's answer; everything within ``timeout``
        seconds. Raises OSError (incl. socket.timeout) or protocol.ProtocolError."""
        deadline = time.monotonic() + timeout  # protocol's clock; self._clock ages idle ones
        frame = protocol.encode(message)
        kept = self._take()
        if kept is not None:
            try:
                return self._exchange(kept, frame, deadline, reused=True)
            except _NeverRead:
                pass  # the agent restarted or closed it for idleness: once more, new
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            protocol.set_remaining(sock, deadline)
            sock.connect(self.path)
        except BaseException:
            sock.close()
            raise
        return self._exchange(sock, frame, deadline, reused=False)

    def idle(self) -> int:
        return len(self._idle)

    def close(self) -> None:
        with self._lock:
            idle, self._idle = self._idle, []
        for kept in idle:
            kept.sock.close()

    def _exchange(self, sock: socket.socket, frame: bytes, deadline: float,
                  reused: bool) -> dict:
        try:
            protocol.set_remaining(sock, deadline)
            try:
                sock.sendall(frame)
                reply = protocol.read_frame(sock, deadline)
            except _UNREAD as exc:
                if reused:
                    raise _NeverRead() from exc
                raise
        except BaseException:  # the timeout too: a late answer must not meet the next request
            sock.close()
            raise
        self._give_back(sock, reply.get(protocol.KEEP))
        return reply

    def _take(self) -> socket.socket | None:
        """An idle connection the agent still holds open, or None."""
        while True:
            with self._lock:
                if self._pid != os.getpid():  # forked: these sockets are the parent's
                    self._idle, self._pid = [], os.getpid()
                kept = self._idle.pop() if self._idle else None
            if kept is None:
                return None
            if kept.usable_until > self._clock() and _open(kept.sock):
                return kept.sock
            kept.sock.close()

    def _give_back(self, sock: socket.socket, keep: object) -> None:
        if not isinstance(keep, (int, float)) or keep <= 0:  # an agent without keep-alive
            sock.close()
            return
        kept = _Kept(sock, self._clock() + keep - min(KEEP_MARGIN, keep / 2))
        with self._lock:
            if len(self._idle) < self._max_idle:
                self._idle.append(kept)
                return
        sock.close()


def _open(sock: socket.socket) -> bool:
    """False when the agent closed the connection (EOF) or wrote on it unasked; one
    non-blocking peek, which a green socket with timeout 0 passes straight to the OS."""
    try:
        sock.settimeout(0.0)
        sock.recv(1, socket.MSG_PEEK)
    except BlockingIOError:
        return True  # nothing to read: open and quiet, as it should be
    except OSError:
        return False
    return False  # b"": the agent closed it; bytes: nothing we asked for


_POOLS: dict[str, AgentConnections] = {}
_POOLS_LOCK = threading.Lock()


def shared(path: str) -> AgentConnections:
    """The one set of connections to ``path`` in this process: nova's legacy and versioned
    Notifiers each load their own driver object."""
    with _POOLS_LOCK:
        pool = _POOLS.get(path)
        if pool is None:
            pool = _POOLS[path] = AgentConnections(path)
        return pool
