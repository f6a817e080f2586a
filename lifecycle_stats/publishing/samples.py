"""Turn one domain reading into one sample per meter and device (meters.CATALOGUE)."""
from __future__ import annotations

import dataclasses
import uuid
from typing import Any, Iterator

from lifecycle_stats.publishing import meters
from lifecycle_stats.records import DiskStats, DomainReading, InstanceInfo, Sample, isotime

# Fixed namespace: the same capture of the same meter always gets the same message_id, so a
# consumer can drop redeliveries across agent restarts.
MESSAGE_ID_NAMESPACE = uuid.UUID("2f0f7f4e-57c4-4e4b-9a37-2b9c1b7d5a10")


@dataclasses.dataclass(frozen=True)
class InstanceView:
    """Instance-scope stats: counters from the reading, sizes from nova's flavor."""

    cpu_time_ns: int | None
    vcpus: int
    memory_mb: int
    one: int = 1


def deterministic_id(*parts: str) -> str:
    return str(uuid.uuid5(MESSAGE_ID_NAMESPACE, "|".join(parts)))


def disk_resource_id(info: InstanceInfo, device: str) -> str:
    return f"{info.instance_id}-{device}"


def vnic_resource_id(info: InstanceInfo, device: str) -> str:
    return f"{info.domain_name}-{info.instance_id}-{device}"


def resource_metadata(info: InstanceInfo, host: str) -> dict[str, Any]:
    """The instance metadata Ceilometer attaches to compute samples."""
    flavor = info.flavor
    return {
        "display_name": info.display_name,
        "name": info.domain_name,
        "instance_id": info.instance_id,
        "instance_type": flavor.name,
        "host": host,
        "image_ref": info.image_ref,
        "flavor": {
            "name": flavor.name,
            "vcpus": flavor.vcpus,
            "ram": flavor.memory_mb,
            "disk": flavor.root_gb,
            "ephemeral": flavor.ephemeral_gb,
            "swap": flavor.swap_mb,
        },
        "memory_mb": flavor.memory_mb,
        "vcpus": flavor.vcpus,
        "root_gb": flavor.root_gb,
        "ephemeral_gb": flavor.ephemeral_gb,
    }


def sum_disks(disks: tuple[DiskStats, ...]) -> DiskStats:
    return DiskStats(
        device="total",
        read_requests=sum(d.read_requests for d in disks),
        read_bytes=sum(d.read_bytes for d in disks),
        write_requests=sum(d.write_requests for d in disks),
        write_bytes=sum(d.write_bytes for d in disks),
    )


def _targets(meter, info, reading, view) -> Iterator[tuple[object, str, dict[str, Any]]]:
    """(record holding the stat, resource id, extra resource metadata) per sample of meter."""
    if meter.scope == meters.INSTANCE:
        yield view, info.instance_id, {}
    elif meter.scope == meters.DISK_TOTAL and reading.disks:
        yield sum_disks(reading.disks), info.instance_id, {}
    elif meter.scope == meters.DISK:
        for disk in reading.disks:
            yield disk, disk_resource_id(info, disk.device), {"disk_name": disk.device}
    elif meter.scope == meters.VNIC:
        for vnic in reading.vnics:
            extra = {"vnic_name": vnic.device, "instance_name": info.domain_name}
            yield vnic, vnic_resource_id(info, vnic.device), extra


def build_samples(
    info: InstanceInfo,
    reading: DomainReading,
    *,
    host: str,
    capture_id: str,
    source: str = "openstack",
) -> list[Sample]:
    """All samples of one capture. capture_id names the capture (e.g. "delete"): with the meter
    and resource it seeds each sample's deterministic message_id."""
    view = _instance_view(info, reading)
    base_meta = resource_metadata(info, host)
    timestamp = isotime(reading.read_at)
    out = []
    for meter in (*meters.CATALOGUE, _flavor_meter(info)):
        if meter.needs_active and not reading.active:
            continue
        for record, resource_id, extra in _targets(meter, info, reading, view):
            volume = getattr(record, meter.stat)
            if volume is None:
                continue
            out.append(Sample(
                name=meter.name, type=meter.type, unit=meter.unit, volume=volume,
                resource_id=resource_id, timestamp=timestamp,
                user_id=info.user_id, project_id=info.project_id,
                message_id=deterministic_id(info.instance_id, capture_id, meter.name, resource_id),
                source=source, resource_metadata={**base_meta, **extra},
            ))
    return out


def _instance_view(info: InstanceInfo, reading: DomainReading) -> InstanceView:
    return InstanceView(
        cpu_time_ns=reading.cpu_time_ns if reading.active else None,
        vcpus=reading.vcpus or info.flavor.vcpus,
        memory_mb=info.flavor.memory_mb,
    )


def _flavor_meter(info: InstanceInfo) -> meters.Meter:
    """`instance:<flavor name>`: a meter whose name depends on the instance."""
    return meters.Meter(meters.FLAVOR_METER_PREFIX + info.flavor.name, meters.GAUGE, "instance",
                        meters.INSTANCE, "one")
