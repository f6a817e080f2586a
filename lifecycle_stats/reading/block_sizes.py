"""Disk sizes as Ceilometer reports them: virDomainGetBlockInfo's figures, the call its
disk.device.capacity / allocation / usage pollsters make.

For a file-backed disk the bulk stats record's allocation is QEMU's highest written offset and
its physical the allocated blocks, where blockInfo gives the allocated blocks and the file's
size. A disk whose file this process can stat gets them from the record and one stat()
(file_sizes), not a second libvirt call: blockInfo waits for a QEMU monitor job, ~2 ms of
nova's wait. Any other disk asks blockInfo; one it cannot read keeps the bulk figures.
"""
from __future__ import annotations

import dataclasses
import logging
import os
import stat
from typing import Any, Mapping

import libvirt

from lifecycle_stats import records

LOG = logging.getLogger(__name__)

Stats = Mapping[str, Any]


def disk_sizes(capacity: int | None, allocation: int | None,
               physical: int | None) -> dict[str, int | None]:
    """Ceilometer reports capacity as max(capacity, physical): a cdrom's capacity is aligned
    down to 4 KiB and can be smaller than the file."""
    if capacity is not None and physical is not None:
        capacity = max(capacity, physical)
    return {"capacity": capacity, "allocation": allocation, "physical": physical}


def with_sizes(dom: libvirt.virDomain, reading: records.DomainReading,
               stats: Stats) -> records.DomainReading:
    """reading (from the stats record `stats`) with blockInfo's sizes for every disk."""
    files = _disk_files(stats)
    disks = []
    for disk in reading.disks:
        sizes = file_sizes(disk, *files.get(disk.device, (None, None)))
        if sizes is None:
            try:
                sizes = disk_sizes(*dom.blockInfo(disk.device, 0))
            except libvirt.libvirtError as exc:
                LOG.debug("blockInfo(%s) of %s: %s", disk.device, reading.instance_id, exc)
                disks.append(disk)
                continue
        disks.append(dataclasses.replace(disk, **sizes))
    return dataclasses.replace(reading, disks=tuple(disks))


def file_sizes(disk: records.DiskStats, path: str | None,
               capacity: int | None) -> dict[str, int | None] | None:
    """blockInfo's figures of a disk backed by a regular file, from the bulk record and the
    file's stat(): libvirt takes the allocation from QEMU's actual size (the record's
    physical) and the physical size from the file (tests/integration/test_inspector_real.py
    compares the two on real QEMU). capacity: the record's own (DiskStats keeps Ceilometer's
    max(capacity, physical)). None for any other disk, or a file this process cannot stat:
    blockInfo then."""
    if path is None or disk.physical is None or capacity is None:
        return None
    try:
        status = os.stat(path)
    except OSError:
        return None
    if not stat.S_ISREG(status.st_mode):
        return None  # a block device (LVM, iSCSI): blockInfo's allocation is another figure
    return disk_sizes(capacity, disk.physical, status.st_size)


def _disk_files(stats: Stats) -> dict[str, tuple[str, int | None]]:
    """Each top-level disk's source path and capacity in a stats record (a backing-chain
    entry repeats its disk's name; the first entry is the disk's own)."""
    files: dict[str, tuple[str, int | None]] = {}
    for i in range(stats.get("block.count", 0)):
        name, path = stats.get(f"block.{i}.name"), stats.get(f"block.{i}.path")
        if name is not None and path is not None and name not in files:
            files[name] = (path, stats.get(f"block.{i}.capacity"))
    return files
