"""The billing invariant, as a property over a model of the world driving the REAL ledger,
reporter and period closer on SQLite files (issue 18, item 7).

The world: two instances whose QEMU processes start and stop (seen, or while the agent is
down), grow cpu and disk/vNIC counters, have devices reset, hot-plugged and unplugged; polls
that are late, slow (stamped before the process they reach), held back and committed out of
order, straddling period ends; closing reads at nova's announcements; failed and real
deletes; nova's exists of aligned and mid-period windows; a spool that fails exists puts; the
agent killed and restarted (everything reopened from its files) across outages longer than
the closer's backlog. At the end every instance is deleted, and:

- per instance, Σ usage over every exists spooled (deduplicated by message_id) equals the
  counter growth the agent read — per series, exactly;
- each deleted instance has exactly one final exists, and nothing is left owed;
- every interval a process ran unread (after its last reading without a closing one, before
  the first reading of a process already running, a whole process run unseen) lies inside the
  unread intervals the exists reported (`usage_incomplete`, summed in incomplete_seconds).

The model knows only the world and what was read; its reading of "what was read" is the
contract (doc/billing.md), not the ledger's code.
"""
from __future__ import annotations

import dataclasses
import datetime
import itertools
import os
import pathlib
import shutil
import tempfile

from hypothesis import HealthCheck, event, example, given, settings, strategies as st

from lifecycle_stats import counters
from lifecycle_stats.exceptions import CaptureDeferred
from lifecycle_stats.publishing import spool as spool_mod
from lifecycle_stats.records import AuditWindow, DiskStats, DomainReading, VnicStats
from lifecycle_stats.usage import closer as period_closer, ledger as usage_ledger, periods
from lifecycle_stats.usage import reports as usage_reports
from tests.support.fakes import FlakySpool, make_info

UTC = datetime.timezone.utc
T0 = datetime.datetime(2026, 11, 22, 0, 40, tzinfo=UTC)  # the ledger is created now
IIDS = ("11111111-1111-4111-8111-111111111111", "22222222-2222-4222-8222-222222222222")
EPS = 0.002
SCRATCH = "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else None


@dataclasses.dataclass(eq=False)
class Proc:
    pid: int
    start: float  # seconds after T0
    values: dict  # series -> true cumulative value
    quiet: set  # series reset and not read since: they do not grow until read
    stop: float | None = None
    # what the agent read of it
    from_zero: bool = False
    stamp: float | None = None  # newest accepted reading
    first_stamp: float | None = None
    closing: bool = False
    base: dict = dataclasses.field(default_factory=dict)
    last: dict = dataclasses.field(default_factory=dict)
    total: dict = dataclasses.field(default_factory=dict)

    def expected(self) -> dict:
        return {s: self.total.get(s, 0) + self.last[s] - self.base[s] for s in self.last}


@dataclasses.dataclass(eq=False)
class Inst:
    iid: str
    devices: set  # attached: "disk:vda", "vnic:tap0", ...
    procs: list = dataclasses.field(default_factory=list)
    deleted: bool = False  # in the world
    ended: bool = False  # in the ledger
    delete_unheard: bool = False  # deleted while the agent was down
    current: Proc | None = None  # the ledger's newest accepted process
    known_at: float | None = None  # first accepted reading

    @property
    def running(self) -> Proc | None:
        return self.procs[-1] if self.procs and self.procs[-1].stop is None else None


class Agent:
    """The real parts over one state directory; made again at every restart."""

    def __init__(self, state, clock, emit_own, flaky):
        self.counters = counters.Counters()
        self.real_spool = spool_mod.Spool(str(state / "spool.sqlite"), conduits=["test"],
                                          counters=self.counters)
        self.spool = FlakySpool(self.real_spool, flaky)
        self.ledger = usage_ledger.UsageLedger(str(state / "usage.sqlite"),
                                               periods.parse("hour"), counters=self.counters,
                                               clock=clock)
        self.reporter = usage_reports.ExistsReporter(
            ledger=self.ledger, spool=self.spool, host="cmp1", publisher_id="ls.cmp1",
            counters=self.counters, clock=clock)
        self.ledger.on_instance_ended = self.reporter.final_due
        self.closer = period_closer.PeriodCloser(
            reporter=self.reporter, instances=dict, poll=lambda: None, emit_own=emit_own,
            backlog=2, counters=self.counters, clock=clock, wait=lambda _s: False)

    def close(self):  # kill -9 loses nothing committed: both files are WAL, synchronous=FULL
        self.real_spool.close()
        self.ledger.close()


class World:
    def __init__(self, state, emit_own, first_started):
        self.state, self.emit_own = state, emit_own
        self.t = 0.0
        self.pids = itertools.count(10)
        self.insts = [Inst(iid, {"disk:vda", f"vnic:tap{n}"}) for n, iid in enumerate(IIDS)]
        for inst, started in zip(self.insts, first_started):
            if started is not None:  # running before the ledger existed (or since)
                self._new_proc(inst, started)
        self.agent = Agent(state, self.clock, emit_own, 0)
        self.held: list = []  # readings taken, committed later
        self.deferred: list = []  # nova exists to redeliver
        self.unread_unseen: list = []

    def clock(self) -> datetime.datetime:
        return T0 + datetime.timedelta(seconds=self.t)

    def at(self, seconds: float) -> datetime.datetime:
        return T0 + datetime.timedelta(seconds=seconds)

    # -- the world -------------------------------------------------------------------------

    def _new_proc(self, inst, start):
        proc = Proc(next(self.pids), start, {"cpu": 0, **{d: 0 for d in inst.devices}}, set())
        inst.procs.append(proc)
        return proc

    def grow(self, inst, cpu, io):
        proc = inst.running
        if proc is not None:
            proc.values["cpu"] += cpu
            for series in inst.devices - proc.quiet:
                proc.values[series] = proc.values.get(series, 0) + io
        self.t += 1 + io % 50

    def reset(self, inst, which):
        proc = inst.running
        if proc is not None:
            series = sorted(inst.devices)[which % len(inst.devices)]
            proc.values[series] = 0
            proc.quiet.add(series)

    def hotplug(self, inst, n):
        proc, series = inst.running, f"disk:vd{'bcd'[n % 3]}"
        if series in inst.devices:
            inst.devices.discard(series)  # unplugged
        else:
            inst.devices.add(series)
            if proc is not None:  # plugged (again): its counters start at zero
                proc.values[series] = 0
                proc.quiet.add(series)

    # -- readings ---------------------------------------------------------------------------

    def reading(self, inst, proc, stamp) -> DomainReading:
        disks = tuple(DiskStats(s.split(":")[1], *(proc.values.get(s, 0),) * 4)
                      for s in sorted(inst.devices) if s.startswith("disk:"))
        vnics = tuple(VnicStats(s.split(":")[1], proc.values.get(s, 0), proc.values.get(s, 0),
                                0, 0, proc.values.get(s, 0), proc.values.get(s, 0), 0, 0)
                      for s in sorted(inst.devices) if s.startswith("vnic:"))
        return DomainReading(
            instance_id=inst.iid, domain_name=f"instance-{proc.pid}", state="running",
            active=True, cpu_time_ns=proc.values["cpu"], vcpus=1, memory_kib=1, memory_max_kib=1,
            disks=disks, vnics=vnics, read_at=self.at(stamp), path="bulk", process_id=proc.pid,
            process_started_at=self.at(proc.start).timestamp())

    def read(self, inst, stamp, *, closing=False, hold=False):
        proc = inst.running
        if proc is None or inst.deleted:
            return
        series = {"cpu": proc.values["cpu"], **{d: proc.values.get(d, 0) for d in inst.devices}}
        item = (inst, proc, stamp, series, self.reading(inst, proc, stamp), closing)
        if hold:
            self.held.append(item)
        else:
            self.commit(item)

    def commit(self, item):
        inst, proc, stamp, series, reading, closing = item
        self.agent.ledger.record_all([(make_info(instance_id=inst.iid), reading)],
                                     closing=closing)
        self.accept(inst, proc, stamp, series, closing)

    def accept(self, inst, proc, stamp, series, closing):
        """What the contract says the ledger takes from this reading."""
        current = inst.current
        if inst.ended or (current is not None and proc.pid < current.pid):
            return  # after the end, or a late reading of an earlier process
        if proc is current and stamp <= proc.stamp:
            return  # older than what it holds
        if proc is current and series["cpu"] < proc.last["cpu"]:
            # stamped later, sampled earlier: the held values hold at its stamp; nothing grew
            proc.stamp, proc.closing = stamp, closing or proc.closing
            return
        if proc is not current:
            proc.from_zero = current is not None or proc.start >= 0
            inst.current = proc
            if inst.known_at is None:
                inst.known_at = stamp
        for name, value in series.items():
            if name not in proc.last:
                proc.base[name] = 0 if proc.from_zero or proc.stamp is not None else value
            elif value < proc.last[name]:
                proc.total[name] = proc.total.get(name, 0) + proc.last[name] - proc.base[name]
                proc.base[name] = 0
            proc.last[name] = value
            proc.quiet.discard(name)
        if proc.stamp is None:
            proc.first_stamp = stamp
        proc.stamp, proc.closing = stamp, closing

    # -- events -----------------------------------------------------------------------------

    def stop(self, inst, closing, up):
        proc = inst.running
        if proc is None:
            return
        if up and closing:  # nova's announcement: a closing read, then the stop
            self.read(inst, self.t, closing=True)
        self.t += 0.5
        proc.stop = self.t
        if up:
            self.agent.ledger.process_ended(inst.iid, self.at(self.t), stopped_event=True)
        self.t += 0.5

    def start(self, inst, up):
        if inst.running is not None or inst.deleted:
            return
        self._new_proc(inst, self.t + 0.1)
        self.t += 0.3
        if up:  # the agent reads at libvirt's STARTED
            self.read(inst, self.t)

    def delete(self, inst, up, *, fails):
        if inst.deleted:
            return
        if up and inst.running is not None:
            self.read(inst, self.t, closing=True)  # the flush's read at delete.start
        if fails:
            if up:
                self.agent.ledger.delete_announced(inst.iid, self.at(self.t))
            self.t += 1
            return
        self.t += 0.05
        if up:
            self.agent.ledger.delete_announced(inst.iid, self.at(self.t))
        if inst.running is not None:
            inst.running.stop = self.t
            if up:
                self.agent.ledger.process_ended(inst.iid, self.at(self.t), stopped_event=True)
        self.t += 0.05
        inst.deleted = True
        if up:
            inst.ended = self.agent.ledger.domain_gone(inst.iid, self.at(self.t)) or inst.ended
        else:
            inst.delete_unheard = True  # nova's message waits on the bus

    def nova_exists(self, inst, mid):
        period = self.agent.ledger.period
        if mid:
            begin = period.current(self.clock())[0]
            window = (begin, self.clock())
        else:
            window = period.last_completed(self.clock())
        self.deferred.append(AuditWindow(inst.iid, "compute.instance.exists", "cmp1",
                                         window[0], window[1], self.clock()))
        self.redeliver()

    def redeliver(self):
        waiting, self.deferred = self.deferred, []
        for window in waiting:
            try:
                self.agent.reporter.nova_audit(window, None)
            except CaptureDeferred:
                self.deferred.append(window)  # requeued by the bus

    def restart(self):
        self.agent = Agent(self.state, self.clock, self.emit_own, 0)
        self.agent.ledger.domains_present({i.iid for i in self.insts if not i.deleted},
                                          self.clock())
        for inst in self.insts:
            if inst.delete_unheard:  # the redelivered delete.start finds the domain gone
                inst.ended = self.agent.ledger.delete_announced(
                    inst.iid, self.clock(), gone=True) or inst.ended
                inst.delete_unheard = False
        for inst in self.insts:  # the poller's first poll, as the agent starts
            self.read(inst, self.t)
        self.redeliver()


OPS = ("grow",) * 4 + ("poll",) * 4 + ("reset", "reset", "stop", "stop", "start", "start",
       "kill", "kill", "restart", "restart", "close", "close", "nova", "nova", "slow_poll",
       "hold", "release", "tick", "hotplug", "delete_fail", "flaky")
steps = st.lists(st.tuples(st.sampled_from(OPS), st.integers(0, 1), st.integers(0, 5000),
                           st.integers(1, 400)), min_size=25, max_size=80)
first_started = st.tuples(*[st.one_of(st.none(), st.floats(-7200, -1)) for _ in IIDS])


def run(world: World, ops) -> bool:
    """Play the steps; returns whether the agent is up at the end."""
    up = True
    for op, which, a, b in ops:
        inst = world.insts[which]
        if op == "grow":
            world.grow(inst, a, b)
        elif op == "tick":
            world.t += 60 + a * 5  # up to ~7 h: across period ends and the backlog
        elif op == "kill" and up:
            world.agent.close()
            up = False
        elif op == "restart" and not up:
            world.restart()
            up = True
        elif op == "stop":
            world.stop(inst, closing=b % 2 == 0, up=up)
        elif op == "start":
            world.start(inst, up)
        elif op == "reset":
            world.reset(inst, a)
        elif op == "hotplug":
            world.hotplug(inst, a)
        elif not up or inst.deleted:
            continue
        elif op in ("poll", "slow_poll", "hold"):
            lag = b % 40 if op == "slow_poll" else 0  # stamped when asked, read later
            world.read(inst, world.t - lag, hold=op == "hold")
        elif op == "release":
            held, world.held = world.held, []
            for item in reversed(held):  # out of order, after newer readings
                world.commit(item)
        elif op == "close":
            world.agent.closer.close_due()
        elif op == "delete_fail":
            world.delete(inst, up, fails=True)
        elif op == "nova" and world.agent.ledger.info(inst.iid) is not None:
            world.nova_exists(inst, mid=b % 2 == 0)
        elif op == "flaky":
            world.agent.spool.fail = 1 + b % 3
        world.t += 1
    return up


def finish(world: World, up: bool) -> None:
    """Everything ends: the agent up, every instance deleted, every owed exists spooled."""
    world.held = []
    if not up:
        world.restart()
    world.agent.spool.fail = 0
    world.redeliver()
    for inst in world.insts:
        world.delete(inst, True, fails=False)
        world.t += 1
    world.agent.reporter.flush_pending()


def billed(world: World) -> dict:
    unique = {}
    for _, note in world.agent.real_spool.pending("test", 100_000):
        if note.event_type == "compute.instance.exists":
            unique[note.message_id] = note.payload
    return unique


def sums(payloads) -> dict:
    out: dict = {}
    for p in payloads:
        usage = p["usage"]
        out["cpu"] = out.get("cpu", 0) + usage["cpu_time_ns"]
        for dev, stats in usage["disks"].items():
            out[f"disk:{dev}"] = out.get(f"disk:{dev}", 0) + stats["read_bytes"]
        for dev, stats in usage["vnics"].items():
            out[f"vnic:{dev}"] = out.get(f"vnic:{dev}", 0) + stats["rx_bytes"]
    return {k: v for k, v in out.items() if v}


def expected(inst: Inst) -> dict:
    out: dict = {}
    for proc in inst.procs:
        for name, value in proc.expected().items():
            out[name] = out.get(name, 0) + value
    return {k: v for k, v in out.items() if v}


def unread(inst: Inst) -> list[tuple[float, float]]:
    """Intervals some process of the instance ran unread, once the agent knew it."""
    out = []
    for proc in inst.procs:
        stop = proc.stop
        if proc.stamp is None:  # never read: unseen whole, unless before the agent knew it
            if inst.known_at is not None and stop is not None and proc.start > inst.known_at:
                out.append((proc.start, stop))
            continue
        if not proc.from_zero:
            out.append((proc.start, proc.first_stamp))
        if stop is not None and not proc.closing and stop > proc.stamp:
            out.append((proc.stamp, stop))
    return out


def covered(interval, gaps) -> bool:
    begin, end = interval
    for g_begin, g_end in sorted(gaps):
        if g_begin <= begin + EPS:
            begin = max(begin, g_end)
        if begin >= end - EPS:
            return True
    return begin >= end - EPS


def seconds(text: str) -> float:
    return (datetime.datetime.fromisoformat(text) - T0).total_seconds()


@settings(max_examples=300, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(ops=steps, emit_own=st.booleans(), first=first_started)
@example(  # the agent down across a process that started and stopped unseen
    ops=[("grow", 0, 5, 50), ("poll", 0, 0, 1), ("stop", 0, 0, 1), ("kill", 0, 0, 1),
         ("start", 0, 0, 1), ("grow", 0, 5, 50), ("stop", 0, 0, 1), ("restart", 0, 0, 1)],
    emit_own=True, first=(-100.0, None))
@example(  # defect 3: a slow poll reaches the new process before the old one's STOPPED
    ops=[("grow", 0, 5, 50), ("poll", 0, 0, 1), ("kill", 0, 0, 1), ("stop", 0, 0, 1),
         ("restart", 0, 0, 1), ("start", 0, 0, 1), ("grow", 0, 9, 70),
         ("slow_poll", 0, 0, 39), ("reset", 0, 0, 1), ("poll", 0, 0, 1),
         ("delete_fail", 0, 0, 1), ("nova", 0, 0, 2), ("tick", 0, 900, 1), ("close", 0, 0, 1)],
    emit_own=False, first=(-50.0, -10.0))
@example(  # a reading held back across a process change, committed after the new one's
    ops=[("poll", 0, 0, 1), ("grow", 0, 7, 30), ("hold", 0, 0, 1), ("grow", 0, 7, 30),
         ("stop", 0, 0, 2), ("start", 0, 0, 1), ("grow", 0, 3, 10), ("release", 0, 0, 1),
         ("poll", 0, 0, 1)],
    emit_own=True, first=(-100.0, None))
@example(  # a failed delete's closing read, a poll held back, the stop, then the held
    # poll committed: the process ran unread from the held poll to its stop (review, session 5)
    ops=[("grow", 0, 0, 1)] * 21 + [("delete_fail", 1, 0, 1), ("hold", 1, 0, 1),
                                    ("stop", 1, 0, 1), ("release", 0, 0, 1)],
    emit_own=False, first=(None, -1.0))
@example(  # a held reading committed after a slow poll stamped before it but sampled after
    ops=[("poll", 0, 0, 1), ("grow", 0, 5, 1), ("hold", 0, 0, 1), ("grow", 0, 5, 1),
         ("slow_poll", 0, 0, 6), ("release", 0, 0, 1), ("grow", 0, 5, 1), ("poll", 0, 0, 1)],
    emit_own=True, first=(-100.0, None))
def test_the_exists_of_an_instance_sum_to_what_was_read(ops, emit_own, first):
    # real SQLite files; in memory-backed /dev/shm where there is one (fsync costs nothing)
    state = pathlib.Path(tempfile.mkdtemp(prefix="lst-ledger-", dir=SCRATCH))
    world = World(state, emit_own, first)
    try:
        finish(world, run(world, ops))
        reports = billed(world)
        for inst in world.insts:
            mine = [p for p in reports.values() if p["instance_id"] == inst.iid]
            assert sums(mine) == expected(inst), inst.iid
            assert not world.agent.ledger.owes(inst.iid)
            assert sum(p["final"] for p in mine) == (1 if world.agent.ledger.info(inst.iid)
                                                      else 0)
            gaps = [(seconds(g["last_read_at"]), seconds(g["ended_at"]))
                    for p in mine for g in p["usage"]["usage_incomplete"]]
            for p in mine:
                assert p["usage"]["complete"] is (not p["usage"]["usage_incomplete"])
            for interval in unread(inst):
                assert covered(interval, gaps), (interval, sorted(gaps))
            for proc in inst.procs:
                event("a process run wholly unseen" if proc.stamp is None
                      else "a process counted from zero" if proc.from_zero
                      else "a process running when first seen")
                if proc.total:
                    event("a counter series reset and read")
            if len(mine) > 2:
                event("three or more exists of one instance")
    finally:
        world.agent.close()
        shutil.rmtree(state, ignore_errors=True)
