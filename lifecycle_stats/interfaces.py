"""The seams of the core, as typing Protocols: what listeners call, what the core calls in
emitters, and what the core's own services promise each other.

Listeners import only these and records.py to hand triggers in; emitters implement Conduit.
The agent (agent.py, the composition root) is the one place that picks the implementations.
"""
from __future__ import annotations

import abc
import datetime
import enum
from typing import Callable, Iterable, Mapping, Protocol, TypeVar

from lifecycle_stats.records import (
    StopAnnouncement,
    DomainReading,
    InstanceInfo,
    LatestUsage,
    LifecycleEvent,
    Notification,
)

T = TypeVar("T")


class Conduit(Protocol):
    """Publishes notifications through one conduit (emitters/: a conduit may subclass this
    for the default close()).

    emit() returns only when the conduit has confirmed the notification (the broker's publisher
    confirm, a flushed file, ...). On any failure it raises lifecycle_stats.exceptions.EmitError;
    the caller keeps the notification spooled and retries, so a conduit never retries or buffers
    on its own.

    A conduit may also offer emit_batch(notifications): publish them in order, return when
    all are confirmed, or raise BatchEmitError (an EmitError) whose `delivered` says how many
    were confirmed before the failure. The sender uses it when present (publishing/sender.py).
    """

    @abc.abstractmethod
    def emit(self, notification: Notification) -> None: ...

    def close(self) -> None:
        """Release connections; the default has none."""


class Outcome(enum.Enum):
    """What became of one nova stop announcement (capture.pipeline.Pipeline.announced): the
    one answer the core gives; the bus and the hook map it to their own replies."""

    # a deletion: its delete.samples is durably spooled as ...
    FINAL = "final"  # read from the live domain
    LAST_KNOWN = "last_known"  # the domain was gone: the newest known reading, with its age
    UNAVAILABLE = "unavailable"  # nothing ever read: identity only
    FLAGGED = "flagged"  # could not be published as captured: kept in rejects, sent flagged
    DUPLICATE = "duplicate"  # this delete attempt was spooled before: nothing new
    NOT_NOVA = "not_nova"  # a domain nova does not own: never reported
    # another stop (reboot, power-off, shelve, ...): nothing is published
    READ = "read"  # the closing reading was taken
    MISSED = "missed"  # the domain was not running any more (or not nova's)

    @property
    def spooled(self) -> bool:
        """A new delete.samples went into the spool."""
        return self in (Outcome.FINAL, Outcome.LAST_KNOWN, Outcome.UNAVAILABLE, Outcome.FLAGGED)


class AnnouncementHandler(Protocol):
    """What a listener hands a nova stop announcement to (capture.pipeline.Pipeline.announced).
    It returns once a deletion's capture is durably spooled; ``answer``, when given, hears a
    deletion's outcome before anything that follows the capture."""

    def __call__(self, trigger: StopAnnouncement,
                 answer: Callable[[Outcome], None] | None = None) -> Outcome: ...


LifecycleHandler = Callable[[LifecycleEvent], None]
"""What the libvirt lifecycle listener hands each event to (capture.domain_events)."""


class Connection(Protocol):
    """One libvirt connection with errors translated (reading.hypervisor.Hypervisor)."""

    def call(self, fn: Callable[..., T], instance_id: str | None = None) -> T: ...

    def is_alive(self) -> bool: ...

    def close(self) -> None: ...


class Reader(Protocol):
    """Reads domain counters (reading.inspector.Inspector)."""

    def poll(self) -> Mapping[str, DomainReading]: ...

    def read(self, instance_id: str) -> DomainReading: ...


class Registry(Protocol):
    """Which domains are nova's (reading.registry.DomainRegistry)."""

    def get(self, instance_id: str) -> InstanceInfo | None: ...

    def identify(self, instance_id: str) -> InstanceInfo | None: ...

    def is_known(self, instance_id: str) -> bool: ...

    def unusable(self, instance_id: str) -> str | None: ...

    def refresh_by_uuid(self, instance_id: str) -> InstanceInfo | None: ...

    def forget(self, instance_id: str) -> None: ...

    def sync(self) -> set[str]:
        """Re-list every domain; returns the uuids libvirt has now."""
        ...


class ReadingCache(Protocol):
    """The newest reading of every nova instance (capture.last_readings.LastReadings)."""

    def update(self, info: InstanceInfo, reading: DomainReading) -> None: ...

    def get(self, instance_id: str) -> tuple[InstanceInfo, DomainReading] | None: ...

    def domain_gone(self, instance_id: str) -> None: ...

    def domain_present(self, instance_id: str) -> None: ...

    def reconcile(self, present: set[str]) -> None: ...

    def prune(self) -> int: ...


class UsageSink(Protocol):
    """Where every reading the agent takes also goes: the usage ledger
    (usage.ledger.UsageLedger). closing=True marks a reading taken because the QEMU
    process is about to end (nova's .start of a stop, libvirt's SHUTDOWN)."""

    def record(self, info: InstanceInfo, reading: DomainReading, *,
               closing: bool = False) -> None: ...

    def record_all(self, items: Iterable[tuple[InstanceInfo, DomainReading]], *,
                   closing: bool = False) -> None: ...

    def process_ended(self, instance_id: str, at: datetime.datetime, *,
                      stopped_event: bool = False) -> None: ...

    def domain_gone(self, instance_id: str, at: datetime.datetime) -> bool: ...

    def domains_present(self, present: set[str], at: datetime.datetime) -> list[str]: ...


class UsageAccounts(UsageSink, Protocol):
    """The usage ledger as the flush sees it: it also answers for the newest reading (after
    an agent restart, when the in-memory cache is empty) and hears nova's delete
    announcements (an instance ends only once its domain is gone as well)."""

    def latest(self, instance_id: str) -> LatestUsage | None: ...

    def delete_announced(self, instance_id: str, at: datetime.datetime, *,
                         sent_by: datetime.datetime | None = None,
                         gone: bool = False) -> bool: ...

    def stop_announced(self, instance_id: str, sent_by: datetime.datetime) -> bool: ...


class NoUsage:
    """A UsageAccounts that keeps nothing (tests and tools that do not account usage)."""

    def latest(self, instance_id):
        return None

    def delete_announced(self, instance_id, at, *, sent_by=None, gone=False) -> bool:
        return False

    def stop_announced(self, instance_id, sent_by) -> bool:
        return False

    def domain_gone(self, instance_id, at) -> bool:
        return False

    def domains_present(self, present, at) -> list:
        return []

    def record(self, info, reading, *, closing=False) -> None:
        pass

    def record_all(self, items, *, closing=False) -> None:
        pass

    def process_ended(self, instance_id, at, *, stopped_event=False) -> None:
        pass


class NotificationStore(Protocol):
    """The durable spool as the flush sees it (publishing.spool.Spool)."""

    def seen(self, message_id: str) -> bool: ...

    def put(self, notification: Notification, tier: str) -> object: ...

    def put_capture(self, message_id: str, instance_id: str, body: bytes) -> object: ...

    def last_capture(self, instance_id: str) -> str | None: ...

    def put_flagged(self, flagged: Notification, rejected: Notification,
                    reason: str) -> object: ...
