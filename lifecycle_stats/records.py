"""Plain data passed between listeners, the core and emitters.

Nothing here holds a libvirt or oslo.messaging object, so each side can be built and tested
alone. Timestamps are timezone-aware UTC datetimes; they are formatted only at the edges.
"""
from __future__ import annotations

import dataclasses
import datetime
from typing import Any, Iterable, Mapping

UTC = datetime.timezone.utc


def utcnow() -> datetime.datetime:
    return datetime.datetime.now(UTC)


def isotime(moment: datetime.datetime) -> str:
    """UTC with microseconds, the form Ceilometer and nova notifications use."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f+00:00")


@dataclasses.dataclass(frozen=True)
class Flavor:
    name: str
    memory_mb: int
    root_gb: int
    swap_mb: int
    ephemeral_gb: int
    vcpus: int
    id: str | None = None  # <nova:flavor id=...>, written by nova >= 2025.2 only


@dataclasses.dataclass(frozen=True)
class InstanceInfo:
    """What nova wrote into a domain's <metadata>: who owns it and what it is."""

    instance_id: str  # libvirt domain uuid == nova instance uuid
    domain_name: str  # libvirt name, e.g. instance-0000002a
    display_name: str
    flavor: Flavor
    user_id: str
    user_name: str
    project_id: str
    project_name: str
    image_ref: str | None
    root_type: str | None  # "image" or "volume"
    creation_time: str | None
    metadata_version: str  # "1.1", or "1.0" from older hosts
    # From the domain XML, as Ceilometer's discovery reads them (None / {}: not read).
    architecture: str | None = None  # <os><type arch=...>
    os_type: str | None = None  # <os><type>hvm</type>
    # {tap: {"mac", "fref", "parameters"}}: what Ceilometer's vNIC samples carry in metadata
    vnic_facts: Mapping[str, Mapping[str, Any]] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class DiskStats:
    device: str  # target dev, e.g. vda
    read_requests: int
    read_bytes: int
    write_requests: int
    write_bytes: int
    # Ceilometer's extra per-disk meters; None where the driver does not report them.
    read_time_ns: int | None = None  # block.N.rd.times: total time spent reading
    write_time_ns: int | None = None
    capacity: int | None = None  # bytes; max(capacity, physical), as Ceilometer reports it
    allocation: int | None = None
    physical: int | None = None


@dataclasses.dataclass(frozen=True)
class VnicStats:
    device: str  # host-side tap, e.g. tap1a2b3c4d-5e
    rx_bytes: int
    rx_packets: int
    rx_errors: int
    rx_drops: int
    tx_bytes: int
    tx_packets: int
    tx_errors: int
    tx_drops: int


@dataclasses.dataclass(frozen=True)
class DomainReading:
    """One read of one domain's counters.

    cpu_time_ns and the device lists are only meaningful for an active domain: a shut-off
    domain's cpu figure is the daemon's own CPU time, so inactive readings carry None / ().
    """

    instance_id: str
    domain_name: str
    state: str  # running, paused, shutoff, ... (see inspector.STATE_NAMES)
    active: bool
    cpu_time_ns: int | None
    vcpus: int | None
    memory_kib: int | None  # current balloon size
    memory_max_kib: int | None
    disks: tuple[DiskStats, ...]
    vnics: tuple[VnicStats, ...]
    read_at: datetime.datetime  # when the read was requested
    path: str  # how it was read: "bulk", "single" or "fallback"
    state_code: int | None = None  # virDomainState, what Ceilometer's power.state reports
    # libvirt's memoryStats names (actual, available, usable, unused, rss, swap_in, swap_out),
    # KiB, only those the guest's balloon driver reported.
    memory_stats: Mapping[str, int] = dataclasses.field(default_factory=dict)
    # perf events enabled on the domain: cpu_cycles, instructions, cache_references, cache_misses
    perf: Mapping[str, int] = dataclasses.field(default_factory=dict)
    process_id: int | None = None  # libvirt's domain id: a new one for every QEMU process
    # Σ(vcpu.N.time + vcpu.N.wait) over every vCPU, Ceilometer 27's `cpu`; None when a vCPU
    # lacks them (then Ceilometer, and we, fall back to cpu_time_ns, libvirt's cpu.time)
    vcpu_time_ns: int | None = None
    # When the domain's QEMU process started (epoch seconds; libvirt's pid file and /proc):
    # with the domain id it names the process; None where the agent cannot see the process.
    process_started_at: float | None = None


@dataclasses.dataclass(frozen=True)
class Sample:
    """One meter value, shaped as Ceilometer samples are (plus the historical keys)."""

    name: str
    type: str  # cumulative | gauge | delta
    unit: str
    volume: int | float
    resource_id: str
    timestamp: str
    user_id: str | None
    project_id: str | None
    message_id: str
    source: str
    resource_metadata: Mapping[str, Any]

    def as_dict(self) -> dict[str, Any]:
        # Not dataclasses.asdict: its recursive deepcopy of the metadata was half of a
        # delete.samples build (doc/benchmarks.md); a copy of the plain containers is the same.
        out = {name: getattr(self, name) for name in _SAMPLE_FIELDS}
        out["resource_metadata"] = plain_copy(self.resource_metadata)
        return out


_LEAVES = frozenset({str, int, float, bool, type(None)})


def plain_copy(value: Any) -> Any:
    """A copy of nested mappings and lists (as dicts and lists); leaves are shared (immutable).
    Plain leaves are taken without a call: this runs over every sample's metadata."""
    if value is None or isinstance(value, (str, int, float)):
        return value
    if isinstance(value, (dict, Mapping)):
        return {k: v if type(v) in _LEAVES else plain_copy(v) for k, v in value.items()}
    if isinstance(value, list):
        return [v if type(v) in _LEAVES else plain_copy(v) for v in value]
    return value


_SAMPLE_FIELDS = tuple(f.name for f in dataclasses.fields(Sample))


def sample_dicts(samples: Iterable[Sample]) -> list[dict[str, Any]]:
    """as_dict() of each sample; samples that share one metadata mapping (one resource's)
    share one copy of it, so signing.signed_all makes its text once."""
    copies: dict[int, Any] = {}  # the samples keep their mappings alive: ids stay theirs
    out = []
    for sample in samples:
        metadata = sample.resource_metadata
        copied = copies.get(id(metadata))
        if copied is None:
            copied = copies[id(metadata)] = plain_copy(metadata)
        row = {name: getattr(sample, name) for name in _SAMPLE_FIELDS}
        row["resource_metadata"] = copied
        out.append(row)
    return out


DELETE = "delete"  # the stop action that ends the instance (StopAnnouncement.action)


@dataclasses.dataclass(frozen=True)
class StopAnnouncement:
    """Someone announced that an instance is about to be deleted."""

    instance_id: str
    event_type: str  # compute.instance.delete.start | instance.delete.start | ...
    host: str | None
    received_at: datetime.datetime
    identity: Mapping[str, Any] = dataclasses.field(default_factory=dict)  # from the payload
    # Names one delete attempt: nova's request id (the same in the legacy and the versioned
    # announcement of one delete, and in every redelivery; a retried delete is a new
    # request). None: nothing tells attempts apart.
    attempt_id: str | None = None
    # When nova emitted the announcement (its envelope timestamp): before destroy, and before
    # Ceilometer's Gnocchi publisher ends the resource. Final samples are stamped no later.
    announced_at: datetime.datetime | None = None
    # What nova is about to do: "delete" (publish delete.samples), or an action that ends the
    # QEMU process (power_off, reboot, shelve, ...): read for the usage ledger, publish nothing.
    action: str = DELETE


@dataclasses.dataclass(frozen=True)
class Unobserved:
    """An interval in which a QEMU process ran unread: what it did then is not in the usage.
    reason: "ended_unread" (it ended after its last reading, no closing reading),
    "running_when_first_seen" (counted from the agent's first reading, not from its start),
    or "agent_down" (the domain was off when the agent went down; a process may have run
    unseen until the agent's next sight of it)."""

    last_read_at: datetime.datetime
    ended_at: datetime.datetime
    reason: str = "ended_unread"

    @property
    def seconds(self) -> float:
        return max(0.0, (self.ended_at - self.last_read_at).total_seconds())


@dataclasses.dataclass(frozen=True)
class Usage:
    """What one report carries: the counter growth read and not reported before, across
    all the instance's QEMU processes (usage/journal.py)."""

    begin: datetime.datetime  # the span of the readings it covers (a late one may be older)
    end: datetime.datetime
    totals: Mapping[str, int]  # flat: cpu_time_ns, disk:<dev>:<stat>, vnic:<tap>:<stat>
    cpu_time_ns: int
    disks: Mapping[str, Mapping[str, int]]  # {dev: {read_bytes, read_requests, ...}}
    vnics: Mapping[str, Mapping[str, int]]  # {tap: {rx_bytes, rx_packets, ...}}
    observed_seconds: float
    unobserved: tuple[Unobserved, ...]
    first_read_at: datetime.datetime | None
    last_read_at: datetime.datetime | None
    processes: int  # QEMU processes read inside the window


@dataclasses.dataclass(frozen=True)
class LatestUsage:
    """The usage ledger's newest reading of an instance's newest QEMU process."""

    info: InstanceInfo
    reading: DomainReading
    closed: bool  # a closing reading was taken (nova's .start of a stop, libvirt's SHUTDOWN)
    ended_at: datetime.datetime | None
    process: int


@dataclasses.dataclass(frozen=True)
class AuditWindow:
    """Nova announced an instance's usage audit (its own compute.instance.exists)."""

    instance_id: str
    event_type: str  # compute.instance.exists | instance.exists
    host: str
    begin: datetime.datetime
    end: datetime.datetime
    received_at: datetime.datetime


@dataclasses.dataclass(frozen=True)
class LifecycleEvent:
    """A libvirt domain lifecycle or metadata event, translated to names."""

    instance_id: str
    domain_name: str
    event: str  # defined, undefined, started, suspended, resumed, stopped, shutdown, ...
    detail: str  # e.g. destroyed, migrated, finished
    received_at: datetime.datetime


@dataclasses.dataclass(frozen=True)
class Notification:
    """What emitters publish: one oslo.messaging-style notification."""

    event_type: str
    priority: str  # INFO, ...
    publisher_id: str
    payload: Mapping[str, Any]
    message_id: str  # deterministic: consumers drop redeliveries by it
    timestamp: str
