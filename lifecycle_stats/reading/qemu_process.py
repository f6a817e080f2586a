"""When a domain's QEMU process started: the fact that tells one process from the next.

libvirt's domain id alone repeats after a daemon or host restart, and a handle looked up while
the domain was off keeps id -1. The process's start time does not repeat: libvirt writes the
QEMU pid to /run/libvirt/qemu/<domain name>.pid (mode 0644 in a 0755 directory, so a non-root
agent reads it), and /proc/<pid>/stat field 22 is the process's start in clock ticks after
boot (world-readable); boot time is now minus /proc/uptime. Verified on this host's QEMU 7.2 guests,
read as uid 65534: boot + starttime/CLK_TCK is the process's exec, the pid file's mtime comes
0.8 s later (QEMU up; /proc/stat's whole-second btime put it up to 1 s early), and a destroy + start gives a new, later start and a new domain id
(tests/integration/test_usage_process_identity.py).

Only a local qemu:///system agent can see it; anywhere else the answer is None and the ledger
falls back to the domain id and the cpu counter (doc/billing.md).
"""
from __future__ import annotations

import os
import time

QEMU_RUN_DIR = "/run/libvirt/qemu"
_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def boot_time(proc: str = "/proc") -> float | None:
    """When the host booted, on the wall clock now, to 10 ms: now minus /proc/uptime (the
    /proc/stat `btime` is whole seconds: a process started just after the ledger was created
    could seem to have started before it)."""
    try:
        with open(os.path.join(proc, "uptime"), encoding="ascii") as uptime:
            return time.time() - float(uptime.read().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def started_at(domain_name: str, run_dir: str = QEMU_RUN_DIR,
               proc: str = "/proc") -> float | None:
    """Epoch seconds at which the domain's QEMU process started; None when not visible (no
    pid file: another driver or a remote daemon; the process gone meanwhile)."""
    try:
        with open(os.path.join(run_dir, f"{domain_name}.pid"), encoding="ascii") as pidfile:
            pid = int(pidfile.read().strip())
        with open(os.path.join(proc, str(pid), "stat"), encoding="ascii") as stat:
            fields = stat.read().rpartition(")")[2].split()  # the name may hold spaces
    except (OSError, ValueError):
        return None
    booted = boot_time(proc)
    if booted is None or len(fields) < 20:
        return None
    return booted + int(fields[19]) / _TICKS  # field 22 overall; 20th after "pid (comm)"
