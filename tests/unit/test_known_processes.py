"""The bulk poll keeps a domain's name and QEMU process start per process, and reads them
again exactly when the process may be another: a new domain id, or the same id with a cpu
time that went down (a daemon restart reusing ids)."""
from lifecycle_stats.reading.known_processes import KnownProcesses


class Starts:
    """qemu_process.started_at's stand-in: counts its reads; a name maps to a start."""

    def __init__(self, starts):
        self.starts, self.reads = starts, []

    def __call__(self, name):
        self.reads.append(name)
        return self.starts.get(name)


def seen(processes, instance_id, process_id, cpu, name="instance-1"):
    return (processes.known(instance_id, process_id, cpu)
            or processes.learn(instance_id, process_id, cpu, name))


def test_the_same_process_is_read_once():
    starts = Starts({"instance-1": 10.0})
    processes = KnownProcesses(starts)
    for cpu in (5, 5, 9, 12):  # paused, then running
        assert seen(processes, "u", 7, cpu).started_at == 10.0
    assert starts.reads == ["instance-1"]


def test_a_new_domain_id_is_a_new_process():
    starts = Starts({"instance-1": 10.0})
    processes = KnownProcesses(starts)
    seen(processes, "u", 7, 500)
    starts.starts["instance-1"] = 20.0  # destroyed and started again: a new QEMU process
    assert seen(processes, "u", 8, 600).started_at == 20.0
    assert len(starts.reads) == 2


def test_the_same_id_with_less_cpu_is_a_new_process():
    """A daemon restart can hand a new process an old id; its cpu time starts from zero."""
    starts = Starts({"instance-1": 10.0})
    processes = KnownProcesses(starts)
    seen(processes, "u", 7, 500)
    seen(processes, "u", 7, 900)  # the newest cpu time is kept, not the first one
    starts.starts["instance-1"] = 20.0
    assert processes.known("u", 7, 600) is None
    assert seen(processes, "u", 7, 600).started_at == 20.0


def test_the_name_is_kept_with_the_process():
    processes = KnownProcesses(Starts({"instance-1": 10.0, "instance-2": 11.0}))
    seen(processes, "u", 7, 5, "instance-1")
    assert processes.known("u", 7, 5).domain_name == "instance-1"
    # renamed while shut off, started again: a new process, so the name is read again
    assert seen(processes, "u", 8, 0, "instance-2").domain_name == "instance-2"


def test_a_start_that_cannot_be_read_is_asked_again():
    starts = Starts({})
    processes = KnownProcesses(starts)
    assert seen(processes, "u", 7, 5).started_at is None
    starts.starts["instance-1"] = 10.0
    assert seen(processes, "u", 7, 5).started_at == 10.0
    assert len(starts.reads) == 2


def test_domains_no_longer_polled_are_forgotten():
    starts = Starts({"instance-1": 10.0})
    processes = KnownProcesses(starts)
    seen(processes, "a", 7, 5)
    seen(processes, "b", 7, 5)
    processes.keep_only(["b"])
    assert processes.known("a", 7, 5) is None
    assert processes.known("b", 7, 5) is not None
