"""Several readers, each on a libvirt connection of its own, for reads that run at once.

libvirtd serves at most `max_client_requests` (default 5) calls of one client connection at
once and queues the rest, so the bus workers and the hook's connections, all reading at nova's
announcements, would wait for each other on one connection in a burst of deletes. A read here
takes a free reader (waiting for one when every reader is busy) and gives it back after. Each
reader is a whole Inspector with its own Hypervisor: its connection's domain handles, errors
translated, a lost connection reopened and the read retried, as with a single reader. The
reader given back last is taken first, so a quiet host reads on one connection.
"""
from __future__ import annotations

import queue
from typing import Mapping, Sequence

from lifecycle_stats.exceptions import HypervisorError
from lifecycle_stats.interfaces import Reader
from lifecycle_stats.records import DomainReading


class ReaderPool:
    def __init__(self, readers: Sequence[Reader]) -> None:
        if not readers:
            raise ValueError("a reader pool needs at least one reader")
        self._all = tuple(readers)
        self._free: queue.LifoQueue[Reader] = queue.LifoQueue()
        for reader in reversed(self._all):  # the first is taken first
            self._free.put(reader)

    def __len__(self) -> int:
        return len(self._all)

    def read(self, instance_id: str) -> DomainReading:
        reader = self._free.get()
        try:
            return reader.read(instance_id)
        finally:
            self._free.put(reader)

    def poll(self) -> Mapping[str, DomainReading]:
        """The first reader's bulk poll (the agent polls through a reader of its own)."""
        return self._all[0].poll()

    def learn_domains(self) -> int:
        """Every reader keeps its connection's handles (a handle is one connection's); how many
        domains. A reader that fails does not stop the others; the first failure is raised."""
        learned, failure = 0, None
        for reader in self._all:
            learn = getattr(reader, "learn_domains", None)
            if learn is None:
                continue
            try:
                learned = learn()
            except HypervisorError as exc:
                failure = failure or exc
        if failure is not None:
            raise failure
        return learned
