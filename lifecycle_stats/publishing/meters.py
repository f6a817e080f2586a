"""The meter catalogue: Ceilometer's libvirt compute meters, declared as data.

Each row names the scope a meter is measured on and the stat it reads there; samples.py turns a
reading into samples for every row over one generic path. Names, types, units and resource ids
are the ones Ceilometer 2025.2 (27.0.0) compute pollsters publish (ceilometer.poll.compute).
Rows marked legacy are meters Ceilometer has removed; they stay for existing billing rules and
can be switched off.
"""
from __future__ import annotations

import dataclasses

CUMULATIVE = "cumulative"
GAUGE = "gauge"

# Scopes: what one sample of the meter describes.
INSTANCE = "instance"  # the instance as a whole (stat read from samples.InstanceView)
DISK_TOTAL = "disk_total"  # all of the instance's disks summed (DiskStats) -- legacy only
DISK = "disk"  # one disk device (DiskStats)
VNIC = "vnic"  # one virtual NIC (VnicStats)


@dataclasses.dataclass(frozen=True)
class Meter:
    name: str
    type: str
    unit: str
    scope: str
    stat: str  # attribute of the scope's record; None there means: no sample
    needs_active: bool = False  # only meaningful while the domain runs
    legacy: bool = False  # removed from Ceilometer; kept unless [meters] legacy is off
    since: str = ""  # for the doc/ceilometer.md table: the Ceilometer that removed a legacy meter


def _disk_io(prefix: str, scope: str, legacy: bool = False) -> list[Meter]:
    since = "12.0.0 (Stein)" if legacy else ""
    return [
        Meter(f"{prefix}.read.requests", CUMULATIVE, "request", scope, "read_requests", True,
              legacy, since),
        Meter(f"{prefix}.read.bytes", CUMULATIVE, "B", scope, "read_bytes", True, legacy, since),
        Meter(f"{prefix}.write.requests", CUMULATIVE, "request", scope, "write_requests", True,
              legacy, since),
        Meter(f"{prefix}.write.bytes", CUMULATIVE, "B", scope, "write_bytes", True, legacy,
              since),
    ]


_DISK_DEVICE_EXTRA = (
    ("disk.device.read.latency", CUMULATIVE, "ns", "read_time_ns", True),
    ("disk.device.write.latency", CUMULATIVE, "ns", "write_time_ns", True),
    ("disk.device.capacity", GAUGE, "B", "capacity", True),
    ("disk.device.allocation", GAUGE, "B", "allocation", True),
    ("disk.device.usage", GAUGE, "B", "physical", True),
)

_VNIC = (
    ("network.incoming.bytes", "B", "rx_bytes"),
    ("network.incoming.packets", "packet", "rx_packets"),
    ("network.incoming.packets.drop", "packet", "rx_drops"),
    ("network.incoming.packets.error", "packet", "rx_errors"),
    ("network.outgoing.bytes", "B", "tx_bytes"),
    ("network.outgoing.packets", "packet", "tx_packets"),
    ("network.outgoing.packets.drop", "packet", "tx_drops"),
    ("network.outgoing.packets.error", "packet", "tx_errors"),
)

# Instance-scope rows (InstanceView attributes). Memory figures are libvirt's KiB / 1024, a
# float in MiB, exactly as Ceilometer's inspector computes them; the memory.* and perf.* rows
# are left out when the guest's balloon driver or the host's perf events do not report them.
_INSTANCE = (
    ("cpu", CUMULATIVE, "ns", "cpu_time_ns", True),
    ("vcpus", GAUGE, "vcpu", "vcpus", False),
    ("memory", GAUGE, "MiB", "memory_mib", False),
    ("memory.available", GAUGE, "MiB", "memory_available_mib", True),
    ("memory.usage", GAUGE, "MiB", "memory_usage_mib", True),
    ("memory.resident", GAUGE, "MiB", "memory_resident_mib", True),
    ("memory.swap.in", CUMULATIVE, "MiB", "memory_swap_in_mib", True),
    ("memory.swap.out", CUMULATIVE, "MiB", "memory_swap_out_mib", True),
    ("power.state", GAUGE, "", "power_state", False),
    ("perf.cpu.cycles", GAUGE, "", "perf_cpu_cycles", True),
    ("perf.instructions", GAUGE, "", "perf_instructions", True),
    ("perf.cache.references", GAUGE, "", "perf_cache_references", True),
    ("perf.cache.misses", GAUGE, "", "perf_cache_misses", True),
    ("disk.root.size", GAUGE, "GiB", "root_size_gib", False),
    ("disk.ephemeral.size", GAUGE, "GiB", "ephemeral_size_gib", False),
)

CATALOGUE: tuple[Meter, ...] = (
    *(Meter(n, t, u, INSTANCE, stat, active) for n, t, u, stat, active in _INSTANCE),
    *_disk_io("disk.device", DISK),
    *(Meter(n, t, u, DISK, stat, active) for n, t, u, stat, active in _DISK_DEVICE_EXTRA),
    *(Meter(name, CUMULATIVE, unit, VNIC, stat, True) for name, unit, stat in _VNIC),
    # Legacy: no longer published by Ceilometer, so a stock Gnocchi does not store them.
    Meter("instance", GAUGE, "instance", INSTANCE, "one", legacy=True, since="8.0.0 (Ocata)"),
    # "instance:<flavor name>" is added per instance by samples.py (its name is not static).
    *_disk_io("disk", DISK_TOTAL, legacy=True),
)

FLAVOR_METER_PREFIX = "instance:"
FLAVOR_METER = Meter(FLAVOR_METER_PREFIX + "<flavor>", GAUGE, "instance", INSTANCE, "one",
                     legacy=True, since="5.0.0 (Liberty)")


def flavor_meter(flavor_name: str) -> Meter:
    return dataclasses.replace(FLAVOR_METER, name=FLAVOR_METER_PREFIX + flavor_name)


def catalogue(*, legacy: bool = True) -> tuple[Meter, ...]:
    return CATALOGUE if legacy else tuple(m for m in CATALOGUE if not m.legacy)


# Meters every capture of a running instance with a disk and a vNIC carries, whatever the
# guest's balloon driver and the host's perf events report (tests check payloads against it).
OPTIONAL = frozenset({
    "memory.available", "memory.usage", "memory.resident", "memory.swap.in",
    "memory.swap.out", "perf.cpu.cycles", "perf.instructions", "perf.cache.references",
    "perf.cache.misses", "disk.device.read.latency", "disk.device.write.latency",
    "disk.device.capacity", "disk.device.allocation", "disk.device.usage",
})
REQUIRED_FOR_ACTIVE = frozenset(m.name for m in CATALOGUE) - OPTIONAL
