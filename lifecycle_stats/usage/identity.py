"""Which QEMU process a reading belongs to, relative to the process the ledger holds.

Facts, in order of trust: libvirt's domain id (a new one for every process while the daemon
runs; it repeats only after a daemon or host restart, and a handle looked up while the domain
was off says -1), the QEMU process's start time (reading/qemu_process.py: never repeats), and
cpu time (never goes down within one process). The start time is read from the pid file just
after the stats, so a process replaced in between pairs the old id with the new start: the
ids, when both are known, decide sameness -- unless the start differs and lies well before the
read (no race gives that: a host reboot handed the id out again); the start times order two
different processes. Without start times, a lower id read after the held process ended (or
long after its last reading) is a newer process: ids restart at 1 with the host.
"""
from __future__ import annotations

import enum

from lifecycle_stats.records import DomainReading

SAME_START_SECONDS = 1.0  # /proc/stat btime moves with the wall clock (NTP steps)
# A reading sampled before the held one yet stamped after it was stamped within the held
# request's duration. Without start times to tell processes apart, a lower cpu later than
# this is a new process that got the same domain id (libvirtd restarted), not a late sample.
LONGEST_READ_SECONDS = 300.0


class Relation(enum.Enum):
    SAME = "same"  # the held process
    NEWER = "newer"  # a process that started after it: the held one has ended
    OLDER = "older"  # a late reading of a process that ended before the held one


def domain_id(reading: DomainReading) -> int | None:
    pid = reading.process_id
    return pid if pid is not None and pid >= 0 else None


def relation(held_id: int | None, held_start: float | None, held_cpu: int | None,
             reading: DomainReading, *, held_latest: float | None = None,
             held_ended: float | None = None) -> Relation:
    """held_latest / held_ended: when the held process was last read / ended (seconds)."""
    rid, rstart, rcpu = domain_id(reading), reading.process_started_at, reading.cpu_time_ns
    at = reading.read_at.timestamp()
    cpu_went_down = None not in (rcpu, held_cpu) and rcpu < held_cpu
    starts_differ = (None not in (rstart, held_start)
                     and abs(rstart - held_start) >= SAME_START_SECONDS)
    if None not in (rid, held_id):
        if rid == held_id:  # the same id again after a restart of the daemon or host
            # A start read in the pid-file race belongs to a process that started after the
            # read began; one well before the read is this process's own.
            started_before_read = (starts_differ and rstart > held_start
                                   and rstart < at - SAME_START_SECONDS)
            return (Relation.NEWER if starts_differ and (cpu_went_down or started_before_read)
                    else Relation.SAME)
        if starts_differ:
            return Relation.NEWER if rstart > held_start else Relation.OLDER
        if rid < held_id and _after(at, held_latest, held_ended):
            return Relation.NEWER  # ids restart at 1 with the host
        return Relation.NEWER if rid > held_id else Relation.OLDER
    if starts_differ:
        return Relation.NEWER if rstart > held_start else Relation.OLDER
    return Relation.NEWER if cpu_went_down else Relation.SAME


def _after(at: float, held_latest: float | None, held_ended: float | None) -> bool:
    """A reading stamped after the held process ended, or long after its newest reading: no
    reading of a process older than the held one is (it is stamped before that one ended,
    and so before the held one started)."""
    if held_ended is not None:
        return at > held_ended
    return held_latest is not None and at - held_latest >= LONGEST_READ_SECONDS
