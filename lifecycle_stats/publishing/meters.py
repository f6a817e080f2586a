"""The meter catalogue: the classic Ceilometer compute meters, declared as data.

Each meter names the scope it is measured on and the stat it reads there; samples.py turns a
reading into samples for every meter over one generic path. Names, types and units are the
ones Ceilometer publishes, so existing billing rules keep working.
"""
from __future__ import annotations

import dataclasses

CUMULATIVE = "cumulative"
GAUGE = "gauge"

# Scopes: what one sample of the meter describes.
INSTANCE = "instance"  # the instance as a whole (stat read from InstanceView)
DISK_TOTAL = "disk_total"  # all of the instance's disks summed (stat read from DiskStats)
DISK = "disk"  # one disk device (DiskStats)
VNIC = "vnic"  # one virtual NIC (VnicStats)


@dataclasses.dataclass(frozen=True)
class Meter:
    name: str
    type: str
    unit: str
    scope: str
    stat: str  # attribute of the scope's record; "one" is the constant 1
    needs_active: bool = False  # only meaningful while the domain runs


def _disk_meters(prefix: str, scope: str) -> list[Meter]:
    return [
        Meter(f"{prefix}.read.requests", CUMULATIVE, "request", scope, "read_requests", True),
        Meter(f"{prefix}.read.bytes", CUMULATIVE, "B", scope, "read_bytes", True),
        Meter(f"{prefix}.write.requests", CUMULATIVE, "request", scope, "write_requests", True),
        Meter(f"{prefix}.write.bytes", CUMULATIVE, "B", scope, "write_bytes", True),
    ]


def _vnic_meters() -> list[Meter]:
    table = [
        ("network.incoming.bytes", "B", "rx_bytes"),
        ("network.incoming.packets", "packet", "rx_packets"),
        ("network.incoming.packets.drop", "packet", "rx_drops"),
        ("network.incoming.packets.error", "packet", "rx_errors"),
        ("network.outgoing.bytes", "B", "tx_bytes"),
        ("network.outgoing.packets", "packet", "tx_packets"),
        ("network.outgoing.packets.drop", "packet", "tx_drops"),
        ("network.outgoing.packets.error", "packet", "tx_errors"),
    ]
    return [Meter(name, CUMULATIVE, unit, VNIC, stat, True) for name, unit, stat in table]


CATALOGUE: tuple[Meter, ...] = (
    Meter("cpu", CUMULATIVE, "ns", INSTANCE, "cpu_time_ns", True),
    Meter("vcpus", GAUGE, "vcpu", INSTANCE, "vcpus"),
    Meter("memory", GAUGE, "MB", INSTANCE, "memory_mb"),
    Meter("instance", GAUGE, "instance", INSTANCE, "one"),
    # "instance:<flavor name>" is added per instance by samples.py (its name is not static).
    *_disk_meters("disk", DISK_TOTAL),
    *_disk_meters("disk.device", DISK),
    *_vnic_meters(),
)

FLAVOR_METER_PREFIX = "instance:"

# What the delete.samples contract requires to be present for a running instance with at
# least one disk and one vNIC (tests check payloads against this).
REQUIRED_FOR_ACTIVE = frozenset(m.name for m in CATALOGUE)
