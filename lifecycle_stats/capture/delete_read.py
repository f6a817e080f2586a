"""What a deletion is reported with: the live domain if it still runs, else the newest known
reading, else nova's identity alone — or nothing, for a domain positively not nova's.

A read racing nova's destroy waits for the destroy to finish and then finds the domain
undefined and forgotten: the cache or the ledger (observations.newest_known) knows what it was.
"""
from __future__ import annotations

import dataclasses
import logging

from lifecycle_stats.capture.observations import GONE, Observations, read_live
from lifecycle_stats.counters import Counters
from lifecycle_stats.exceptions import DomainGone, HypervisorError
from lifecycle_stats.interfaces import Outcome, Reader, Registry
from lifecycle_stats.records import DomainReading, InstanceInfo

LOG = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class DeleteRead:
    outcome: Outcome  # FINAL, LAST_KNOWN, UNAVAILABLE or NOT_NOVA
    info: InstanceInfo | None
    reading: DomainReading | None
    state: str  # the domain's state now: its libvirt state, gone or unknown

    @property
    def live(self) -> bool:
        return self.outcome is Outcome.FINAL


class DeleteReader:
    def __init__(self, *, reader: Reader, registry: Registry, observations: Observations,
                 counters: Counters) -> None:
        self._reader = reader
        self._registry = registry
        self._observations = observations
        self._counters = counters

    def read(self, instance_id: str, *, may_retry: bool) -> DeleteRead:
        """may_retry: a read error with nothing known is raised (a later attempt may still
        read the domain) rather than reported as unavailable."""
        read_error, state = None, GONE
        try:
            reading = read_live(self._reader, instance_id)
        except HypervisorError as exc:
            self._counters.incr("flush.read_errors")
            LOG.warning("live read of %s failed: %s", instance_id, exc)
            reading, read_error, state = None, exc, "unknown"
        info = self._identify(instance_id, may_retry) if reading is not None else None
        state = reading.state if reading is not None else state
        if reading is not None and reading.active and info is not None:
            self._observations.observe_deletion(info, reading)  # the ledger's after nova's answer
            return DeleteRead(Outcome.FINAL, info, reading, state)
        known = self._observations.newest_known(instance_id)
        if known is not None:
            return DeleteRead(Outcome.LAST_KNOWN, known[0], known[1], state)
        if reading is not None and info is not None:  # off, never seen running: gauges only
            return DeleteRead(Outcome.FINAL, info, reading, state)
        if read_error is not None and may_retry:
            raise read_error
        return self._unread(instance_id, state)

    def _identify(self, instance_id: str, may_retry: bool) -> InstanceInfo | None:
        """Nova's identity of a domain just read live. A lookup that failed other than by
        the domain being gone (a domain new to the registry, its metadata read now) is raised
        while a later attempt may still read it: read live, the delete is `final` then, not
        `unavailable`."""
        try:
            return self._registry.identify(instance_id)
        except DomainGone:
            return None
        except HypervisorError as exc:
            self._counters.incr("flush.read_errors")
            LOG.warning("identifying %s failed: %s", instance_id, exc)
            if may_retry:
                raise
            return None

    def _unread(self, instance_id: str, state: str) -> DeleteRead:
        if self._registry.unusable(instance_id) is not None:
            # nova announced it, its metadata is broken: nova's word wins, identity from it
            self._counters.incr("flush.metadata_unusable")
            return DeleteRead(Outcome.UNAVAILABLE, None, None, state)
        if self._registry.is_known(instance_id) and self._registry.get(instance_id) is None:
            return DeleteRead(Outcome.NOT_NOVA, None, None, state)  # positively not nova's
        return DeleteRead(Outcome.UNAVAILABLE, self._registry.get(instance_id), None, state)
