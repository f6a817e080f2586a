"""Which QEMU process a reading belongs to, relative to the process the ledger holds.

Facts, in order of trust: libvirt's domain id (a new one for every process while the daemon
runs; it repeats only after a daemon or host restart, and a handle looked up while the domain
was off says -1), the QEMU process's start time (reading/qemu_process.py: never repeats), and
cpu time (never goes down within one process). The start time is read from the pid file just
after the stats, so a process replaced in between pairs the old id with the new start: the
ids, when both are known, decide sameness; the start times order two different processes.
"""
from __future__ import annotations

import enum

from lifecycle_stats.records import DomainReading

SAME_START_SECONDS = 1.0  # /proc/stat btime moves with the wall clock (NTP steps)


class Relation(enum.Enum):
    SAME = "same"  # the held process
    NEWER = "newer"  # a process that started after it: the held one has ended
    OLDER = "older"  # a late reading of a process that ended before the held one


def domain_id(reading: DomainReading) -> int | None:
    pid = reading.process_id
    return pid if pid is not None and pid >= 0 else None


def relation(held_id: int | None, held_start: float | None, held_cpu: int | None,
             reading: DomainReading) -> Relation:
    rid, rstart, rcpu = domain_id(reading), reading.process_started_at, reading.cpu_time_ns
    cpu_went_down = None not in (rcpu, held_cpu) and rcpu < held_cpu
    starts_differ = (None not in (rstart, held_start)
                     and abs(rstart - held_start) >= SAME_START_SECONDS)
    if None not in (rid, held_id):
        if rid == held_id:  # the same id again after a restart of the daemon or host
            return Relation.NEWER if starts_differ and cpu_went_down else Relation.SAME
        if starts_differ:
            return Relation.NEWER if rstart > held_start else Relation.OLDER
        return Relation.NEWER if rid > held_id else Relation.OLDER
    if starts_differ:
        return Relation.NEWER if rstart > held_start else Relation.OLDER
    return Relation.NEWER if cpu_went_down else Relation.SAME
