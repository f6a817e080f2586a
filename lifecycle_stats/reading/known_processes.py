"""What the bulk poll remembers of each domain's QEMU process: its name and its start.

Reading the start (qemu_process.started_at) opens three files (the pid file, /proc/<pid>/stat,
/proc/uptime): 28 us a domain here, more than parsing its whole stats record, on every poll,
for a figure that never changes within one process; nor does the domain's name (libvirt
renames only a shut-off domain), whose libvirt call costs as much as parsing a device right
after the bulk call. So both are read once per process: kept while the poll sees the same
process, told as the torn rule tells it (processes.py): the same libvirt domain id and a cpu
time that has not gone down. A daemon restart that hands a new process an old id gives it a
fresh cpu time, lower than the old process's; a new id reads again. Only a start that was read
is kept (None, not visible, is asked again on the next poll).
"""
from __future__ import annotations

from typing import Callable, Iterable, NamedTuple


class Known(NamedTuple):
    process_id: int
    cpu_time_ns: int  # the newest seen: a new process with the same id starts lower
    domain_name: str
    started_at: float | None


class KnownProcesses:
    def __init__(self, read_start: Callable[[str], float | None]) -> None:
        self._read_start = read_start  # qemu_process.started_at, or a stand-in that knows none
        self._known: dict[str, Known] = {}

    def known(self, instance_id: str, process_id: int, cpu_time_ns: int) -> Known | None:
        """The process's facts if it is the one last seen under instance_id."""
        known = self._known.get(instance_id)
        if (known is None or known.process_id != process_id
                or cpu_time_ns < known.cpu_time_ns):
            return None
        if cpu_time_ns != known.cpu_time_ns:
            self._known[instance_id] = Known(process_id, cpu_time_ns, known.domain_name,
                                             known.started_at)  # _replace: 3x the cost
        return known

    def learn(self, instance_id: str, process_id: int, cpu_time_ns: int,
              domain_name: str) -> Known:
        """A process not known(): its start read now, and kept if it could be read."""
        known = Known(process_id, cpu_time_ns, domain_name, self._read_start(domain_name))
        if known.started_at is None:
            self._known.pop(instance_id, None)
        else:
            self._known[instance_id] = known
        return known

    def keep_only(self, instance_ids: Iterable[str]) -> None:
        """Forget domains not in instance_ids (a bulk poll's active domains)."""
        for instance_id in self._known.keys() - set(instance_ids):  # a copy: no live iteration
            self._known.pop(instance_id, None)
