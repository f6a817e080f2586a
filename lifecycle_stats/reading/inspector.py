"""Reads libvirt domain counters into records.DomainReading.

poll(): one bulk getAllDomainStats over the active domains. read(): one domain, one
domainListGetStats, on a handle kept by learn_domains() (domain_handles.py). Drivers whose
stats records lack the cpu/block/interface groups (libvirt's test driver returns only
state.*) are read per call instead (path "fallback"); once a connection has shown that, later
reads on it go straight to the fallback. No libvirt object leaves here.
Every reading is stamped with the time its request started, and carries its QEMU process
(libvirt's domain id), so readings can be ordered. Torn reads: processes.py.
"""
from __future__ import annotations

import datetime
import functools
import logging
from typing import Any, Callable, Mapping

import libvirt

from lifecycle_stats import records
from lifecycle_stats.reading import (
    block_sizes, bulk_parse, device_reuse, nova_metadata, qemu_process,
)
from lifecycle_stats.reading.domain_handles import DomainHandles
from lifecycle_stats.reading.processes import DeviceMemory
from lifecycle_stats.reading.known_processes import KnownProcesses
from lifecycle_stats.counters import Counters
from lifecycle_stats.exceptions import ConnectionLost, DomainGone, HypervisorError, MetadataError
from lifecycle_stats.interfaces import Connection
from lifecycle_stats.reading.hypervisor import translate

LOG = logging.getLogger(__name__)

STATS_GROUPS = (libvirt.VIR_DOMAIN_STATS_STATE | libvirt.VIR_DOMAIN_STATS_CPU_TOTAL
                | libvirt.VIR_DOMAIN_STATS_BALLOON | libvirt.VIR_DOMAIN_STATS_VCPU
                | libvirt.VIR_DOMAIN_STATS_INTERFACE | libvirt.VIR_DOMAIN_STATS_BLOCK
                | libvirt.VIR_DOMAIN_STATS_PERF)  # silently empty where perf events are off
ACTIVE_ONLY = libvirt.VIR_CONNECT_GET_ALL_DOMAINS_STATS_ACTIVE

# Indexed by virDomainState.
STATE_NAMES = ("nostate", "running", "blocked", "paused", "shutdown", "shutoff", "crashed",
               "pmsuspended")
_STATE_NAME_OF = dict(enumerate(STATE_NAMES))  # state_name() as one lookup, for the poll
# A shut-off domain has no QEMU process; its cpu figure is the daemon's own CPU time.
INACTIVE_STATES = frozenset({libvirt.VIR_DOMAIN_SHUTOFF})
# Keys whose absence from an active domain's record means the driver lacks the bulk groups.
_GROUP_MARKERS = ("cpu.time", "block.count", "net.count")

VANISHED = "inspector.vanished"
UNREADABLE = "inspector.unreadable"
TORN = "inspector.torn_reads"  # a read that raced virDomainDestroy (processes.is_torn)

Stats = Mapping[str, Any]


def state_name(state: int | None) -> str:
    if state is None or not 0 <= state < len(STATE_NAMES):
        return "unknown"
    return STATE_NAMES[state]


class Inspector:
    def __init__(self, hypervisor: Connection,
                 clock: Callable[[], datetime.datetime] = records.utcnow,
                 counters: Counters | None = None, memory: DeviceMemory | None = None,
                 processes: KnownProcesses | None = None):
        self._hv = hypervisor
        self._clock = clock
        self._counters = counters or Counters()
        self._memory = memory if memory is not None else DeviceMemory()
        self._no_bulk_conn: libvirt.virConnect | None = None  # connection known to lack groups
        # the QEMU process's start is visible only beside a local system daemon's domains
        self._started_at = _start_reader(hypervisor)
        # per QEMU process: the poll learns, a single read looks up (shared by an agent's
        # inspectors, so nova's wait reads no pid file for a process the poll knows)
        self._processes = processes if processes is not None else process_facts(hypervisor)
        self._handles = DomainHandles()  # read()'s: no lookup on nova's wait
        self._devices = device_reuse.DeviceReuse()  # the poll's, per domain

    def poll(self) -> dict[str, records.DomainReading]:
        """Every active domain's reading, keyed by uuid. Domains that vanish are left out."""
        return self._hv.call(self._poll)

    def read(self, instance_id: str) -> records.DomainReading:
        """One domain's reading; raises DomainGone when the domain no longer exists."""
        return self._hv.call(functools.partial(self._read, instance_id=instance_id), instance_id)

    def learn_domains(self) -> int:
        """Keep a handle of every domain, so a later read() makes one libvirt call, not two.
        Off nova's wait: after a poll, at a resync. How many domains."""
        return self._hv.call(self._handles.learn_all)

    def _poll(self, conn: libvirt.virConnect) -> dict[str, records.DomainReading]:
        fallback = conn is self._no_bulk_conn
        read_at = self._clock()  # when the read started: a reading is as old as its request
        stats = conn.getAllDomainStats(
            libvirt.VIR_DOMAIN_STATS_STATE if fallback else STATS_GROUPS, ACTIVE_ONLY)
        readings, ids = {}, []
        self._devices.begin_poll()
        for dom, record in stats:  # a plain loop: a comprehension is a call (Python 3.11)
            instance_id = dom.UUIDString()
            ids.append(instance_id)
            try:
                try:  # a plain try (not translated()): this runs per domain on every poll
                    reading = self._polled(conn, dom, record, read_at, instance_id)
                except libvirt.libvirtError as exc:
                    raise translate(exc, instance_id) from exc
            except DomainGone:
                self._counters.incr(VANISHED)
                continue
            except ConnectionLost:
                raise
            except (HypervisorError, MetadataError) as exc:
                LOG.warning("cannot read domain %s, left out of this poll: %s", instance_id, exc)
                self._counters.incr(UNREADABLE)
                continue
            # A domain that stopped while the fallback read it comes back inactive: not polled.
            if reading.active:
                readings[instance_id] = reading
        self._devices.end_poll()
        self._memory.keep_only(ids)
        self._processes.keep_only(ids)
        return readings

    def _polled(self, conn: libvirt.virConnect, dom: libvirt.virDomain, stats: Stats,
                read_at: datetime.datetime, instance_id: str) -> records.DomainReading:
        """_reading() for the bulk poll: the same reading (tests/unit/test_bulk_parse.py),
        for less CPU (bulk_parse; the name and start read once per process)."""
        state, cpu_time = stats.get("state.state"), stats.get("cpu.time")
        if state in INACTIVE_STATES or (cpu_time is None and _lacks_groups(stats)):
            return self._reading(conn, dom, stats, "bulk", read_at, instance_id)
        process_id, cpu = dom.ID(), cpu_time or 0
        disks, vnics, counted, uncounted = self._devices.device_tuple(instance_id, stats)
        if self._memory.judge_devices(instance_id, process_id, cpu, counted, uncounted):
            self._counters.incr(TORN)
            raise DomainGone(instance_id)
        known = (self._processes.known(instance_id, process_id, cpu)
                 or self._processes.learn(instance_id, process_id, cpu, dom.name()))
        return bulk_parse.active_reading(
            stats, disks, vnics, instance_id, known.domain_name,
            _STATE_NAME_OF.get(state, "unknown"), state,
            cpu_time, process_id, read_at, known.started_at)

    def _read(self, conn: libvirt.virConnect, instance_id: str) -> records.DomainReading:
        if conn is self._no_bulk_conn:  # per call, its process id from a fresh lookup
            return _fallback_reading(conn.lookupByUUIDString(instance_id), self._clock)
        handle = self._handles.get(conn, instance_id)
        read_at = self._clock()
        stats = conn.domainListGetStats([handle], STATS_GROUPS)
        if not stats:  # measured: a domain destroyed after lookup yields [] rather than an error
            self._handles.forget(instance_id)
            raise DomainGone(instance_id)
        dom, record = stats[0]  # libvirt's domain as it is now: this QEMU process's id
        reading = self._reading(conn, dom, record, "single", read_at, dom.UUIDString())
        return block_sizes.with_sizes(dom, reading, record) if reading.active else reading

    def _reading(self, conn: libvirt.virConnect, dom: libvirt.virDomain, stats: Stats,
                 path: str, read_at: datetime.datetime,
                 instance_id: str) -> records.DomainReading:
        """Each key of the record is looked up once (bulk_parse), each libvirt accessor
        called once: this runs for every active domain on every poll."""
        state = stats.get("state.state")
        if state in INACTIVE_STATES:
            return _inactive(dom, state, stats.get("vcpu.current"),
                             stats.get("balloon.current"), stats.get("balloon.maximum"),
                             path, read_at)
        if _lacks_groups(stats):
            reading = _fallback_reading(dom, self._clock)
            if reading.active:  # confirmed: an active domain, yet no bulk groups came back
                self._no_bulk_conn = conn
            return reading
        process_id = dom.ID()  # no RPC: the id came with the domain object
        cpu_time = stats.get("cpu.time")
        disks, vnics, counted, uncounted = bulk_parse.devices(stats)
        if self._memory.judge_devices(instance_id, process_id, cpu_time or 0, counted,
                                      uncounted):
            self._counters.incr(TORN)
            raise DomainGone(instance_id)
        known = self._processes.known(instance_id, process_id, cpu_time or 0)
        name = dom.name() if known is None else known.domain_name
        return records.DomainReading(
            instance_id=instance_id, domain_name=name, state=state_name(state),
            active=True, cpu_time_ns=cpu_time, vcpus=stats.get("vcpu.current"),
            memory_kib=stats.get("balloon.current"), memory_max_kib=stats.get("balloon.maximum"),
            disks=disks, vnics=vnics, read_at=read_at, path=path,
            state_code=state, process_id=process_id, memory_stats=memory_from_stats(stats),
            perf=perf_from_stats(stats), vcpu_time_ns=vcpu_time_from_stats(stats),
            process_started_at=self._started_at(name) if known is None else known.started_at)


def _start_reader(hypervisor: Connection) -> Callable[[str], float | None]:
    """qemu_process.started_at beside a local system daemon's domains, where alone the QEMU
    process's start is visible; elsewhere a reader that knows none."""
    local = getattr(hypervisor, "uri", "") in ("qemu:///system", "qemu+unix:///system")
    return qemu_process.started_at if local else (lambda _name: None)


def process_facts(hypervisor: Connection) -> KnownProcesses:
    """The per-process facts (name, start) the inspectors of one daemon can share."""
    return KnownProcesses(_start_reader(hypervisor))


def vcpu_time_from_stats(stats: Stats) -> int | None:
    """Ceilometer 27's `cpu` (LibvirtInspector.inspect_instance): Σ(vcpu.N.time + vcpu.N.wait)
    over vcpu.0 .. vcpu.<maximum - 1>; None unless every current vCPU has both (Ceilometer then
    falls back to cpu.time, which also counts QEMU's own threads)."""
    total, counted = 0, 0
    for n in range(stats.get("vcpu.maximum", 0)):
        time_ns, wait_ns = stats.get(f"vcpu.{n}.time"), stats.get(f"vcpu.{n}.wait")
        if time_ns is not None and wait_ns is not None:
            total, counted = total + time_ns + wait_ns, counted + 1
    return total if counted and counted == stats.get("vcpu.current") else None


def _lacks_groups(stats: Stats) -> bool:
    """An active domain's record with none of the cpu/block/interface groups."""
    if stats.get("state.state") in INACTIVE_STATES:
        return False
    return not any(key in stats for key in _GROUP_MARKERS)


# Bulk "balloon.*" keys -> libvirt's memoryStats names (what the fallback path returns).
_BALLOON_KEYS = {"balloon.current": "actual", "balloon.available": "available",
                 "balloon.usable": "usable", "balloon.unused": "unused", "balloon.rss": "rss",
                 "balloon.swap_in": "swap_in", "balloon.swap_out": "swap_out"}
MEMORY_STAT_NAMES = frozenset(_BALLOON_KEYS.values())
PERF_NAMES = ("cpu_cycles", "instructions", "cache_references", "cache_misses")
_BALLOON_ITEMS = tuple(_BALLOON_KEYS.items())
_PERF_ITEMS = tuple((f"perf.{name}", name) for name in PERF_NAMES)


def memory_from_stats(stats: Stats) -> dict[str, int]:
    return {name: stats[key] for key, name in _BALLOON_ITEMS if key in stats}


def perf_from_stats(stats: Stats) -> dict[str, int]:
    return {name: stats[key] for key, name in _PERF_ITEMS if key in stats}


def _fallback_reading(dom: libvirt.virDomain,
                      clock: Callable[[], datetime.datetime]) -> records.DomainReading:
    """Per-call read for drivers without bulk groups: info, XML, blockStats, interfaceStats."""
    read_at = clock()
    state, max_kib, memory_kib, vcpus, cpu_ns = dom.info()
    if state in INACTIVE_STATES:
        return _inactive(dom, state, vcpus, memory_kib, max_kib, "fallback", read_at)
    disk_names, vnic_names = nova_metadata.device_names(dom.XMLDesc(0))
    disks = tuple(_fallback_disk(dom, dev) for dev in disk_names)
    vnics = tuple(records.VnicStats(dev, *dom.interfaceStats(dev)) for dev in vnic_names)
    memory = {k: v for k, v in dom.memoryStats().items() if k in MEMORY_STAT_NAMES}
    return records.DomainReading(
        instance_id=dom.UUIDString(), domain_name=dom.name(), state=state_name(state),
        active=True, cpu_time_ns=cpu_ns, vcpus=vcpus,
        memory_kib=memory.get("actual", memory_kib),
        memory_max_kib=max_kib, disks=disks, vnics=vnics, read_at=read_at, path="fallback",
        state_code=state, memory_stats=memory, process_id=dom.ID())


def _fallback_disk(dom: libvirt.virDomain, dev: str) -> records.DiskStats:
    """blockStats for I/O, blockStatsFlags for the latency totals, blockInfo for sizes."""
    flags = _unless_unsupported(lambda: dom.blockStatsFlags(dev, 0), {})
    capacity, allocation, physical = _unless_unsupported(lambda: dom.blockInfo(dev, 0),
                                                         (None, None, None))
    return records.DiskStats(
        dev, *dom.blockStats(dev)[:4], read_time_ns=flags.get("rd_total_times"),
        write_time_ns=flags.get("wr_total_times"),
        **block_sizes.disk_sizes(capacity, allocation, physical))


def _unless_unsupported(call: Callable[[], Any], default: Any) -> Any:
    """Optional figures: a driver without the call (the test driver) gives the default."""
    try:
        return call()
    except libvirt.libvirtError as exc:
        if exc.get_error_code() != libvirt.VIR_ERR_NO_SUPPORT:
            raise
        return default


def _inactive(dom: libvirt.virDomain, state: int, vcpus: int | None, memory_kib: int | None,
              max_kib: int | None, path: str,
              read_at: datetime.datetime) -> records.DomainReading:
    return records.DomainReading(
        instance_id=dom.UUIDString(), domain_name=dom.name(), state=state_name(state),
        active=False, cpu_time_ns=None, vcpus=vcpus, memory_kib=memory_kib,
        memory_max_kib=max_kib, disks=(), vnics=(), read_at=read_at, path=path,
        state_code=state)
