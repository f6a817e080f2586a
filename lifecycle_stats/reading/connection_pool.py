"""Several libvirt connections to one URI, for reads that run at once.

libvirtd serves at most `max_client_requests` (default 5) calls of one client connection at
once and queues the rest, so the bus workers and the hook's connections, all reading at nova's
announcements, would wait for each other on one connection in a burst of deletes. A call here
takes a free connection (waiting for one when every connection is busy) and gives it back
after; each connection is a Hypervisor, so errors are translated and a lost connection is
reopened and the call retried on it as everywhere else. Connections open on first use, and the
one given back last is taken first: a quiet host keeps one connection open.
"""
from __future__ import annotations

import queue
from typing import Callable, Sequence, TypeVar

from oslo_config import cfg

from lifecycle_stats.reading.hypervisor import GROUP, OPTS, Hypervisor

T = TypeVar("T")


class ConnectionPool:
    def __init__(self, connections: Sequence[Hypervisor]) -> None:
        if not connections:
            raise ValueError("a connection pool needs at least one connection")
        uris = {c.uri for c in connections}
        if len(uris) != 1:
            raise ValueError(f"a connection pool's connections share one URI, got {uris}")
        self.uri = connections[0].uri
        self._all = tuple(connections)
        self._free: queue.LifoQueue[Hypervisor] = queue.LifoQueue()
        for connection in reversed(self._all):  # the first is taken first
            self._free.put(connection)

    @classmethod
    def from_conf(cls, conf: cfg.ConfigOpts, **kwargs) -> "ConnectionPool":
        """[libvirt] read_connections Hypervisors built from conf's [libvirt] options."""
        conf.register_opts(OPTS, group=GROUP)
        return cls([Hypervisor.from_conf(conf, **kwargs)
                    for _ in range(conf[GROUP].read_connections)])

    def __len__(self) -> int:
        return len(self._all)

    def call(self, fn: Callable[..., T], instance_id: str | None = None) -> T:
        """fn(conn) on a free connection (Hypervisor.call: translated, reconnect and retry)."""
        connection = self._free.get()
        try:
            return connection.call(fn, instance_id)
        finally:
            self._free.put(connection)

    def is_alive(self) -> bool:
        """True when a connection is open and usable (the others open when needed)."""
        return any(connection.is_alive() for connection in self._all)

    def close(self) -> None:
        for connection in self._all:
            connection.close()
