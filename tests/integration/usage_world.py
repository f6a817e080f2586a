"""Usage from outside, as billing sees it: real QEMU guests, the agent from its console script
(harness.AgentProcess), nova played on the real broker, and ground truth read by us.

Ground truth: right before each stop nova makes, this module reads the guest's `cpu.time`
itself (domainListGetStats, the counter the agent reads): `low` before nova's announcement,
`high` the last value a sampling connection read before the process ended (a poll of the
agent may land between its closing read and nova's destroy, and bills what it read). A new
QEMU process counts from zero, so the cpu every process used up to its stop lies in
[Σ low, Σ high]. Billing's figure is the sum of `usage.cpu_time_ns` over every
`compute.instance.exists` of the instance, deduplicated by message_id, once the final one came.

Shared by tests/integration/test_usage_real.py and benchmarks/usage_accuracy.py.
"""
from __future__ import annotations

import dataclasses
import datetime
import threading
import time
import uuid

import libvirt

from tests.integration import harness

EXISTS = "compute.instance.exists"
AGENT_WAIT = 60.0  # a bulk poll over a few hundred domains of other runs takes tens of s
EVENT_WAIT = 30.0
RUNNING_OR_PAUSED = (1, 3)  # VIR_DOMAIN_RUNNING, VIR_DOMAIN_PAUSED (a save pauses first)
STRAGGLERS = 1.5  # seconds an exists sent after the final one would take to arrive


@dataclasses.dataclass
class Life:
    """One guest's QEMU processes, as we read them."""

    guest: object
    dom: object
    low: list[int] = dataclasses.field(default_factory=list)  # per ended process
    high: list[int] = dataclasses.field(default_factory=list)


DESTROY_SECONDS = 5.0  # virDomainDestroy takes 1.5-2 s here (doc/architecture.md §2)


def read_to_the_destroy(usage: dict) -> bool:
    """Complete, or unread only from the agent's last reading to nova's destroy: with 1 s polls
    a poll often lands between the closing read and the destroy, and the ledger then reports
    that tail as ended_unread (complete: false is the contract: doc/billing.md)."""
    return all(gap["reason"] == "ended_unread" and gap["seconds"] < DESTROY_SECONDS
               for gap in usage["usage_incomplete"])


@dataclasses.dataclass
class Billed:
    cpu_time_ns: int
    exists: int  # distinct message_ids
    finals: int
    processes: int  # of the final exists
    complete: bool  # of the final exists: read up to nova's destroy (read_to_the_destroy)
    incomplete: list  # its usage_incomplete: what ran unread, and why


class World:
    def __init__(self, agent: harness.AgentProcess, nova: harness.Nova,
                 billing: harness.BillingConsumer, factory, uri: str) -> None:
        self.agent, self.nova, self.billing, self.factory = agent, nova, billing, factory
        self.uri = uri
        self.conn = libvirt.open(uri)
        self.agent_up = True

    def close(self) -> None:
        try:
            self.conn.close()
        except libvirt.libvirtError:
            pass

    def reconnect(self) -> None:
        """A new connection of our own (after libvirtd restarted)."""
        self.close()
        self.conn = libvirt.open(self.uri)

    # -- the agent ---------------------------------------------------------------------------
    def polled(self, times: int = 2) -> None:
        """Wait for bulk polls that started after now (a running one may predate a change)."""
        target = self.agent.counter("poller.polls") + times
        self.agent.wait_for(lambda s: s.get("counters", {}).get("poller.polls", 0) >= target,
                            AGENT_WAIT, "poller.polls")

    def kill_agent(self) -> None:
        self.agent.kill()
        self.agent_up = False

    def start_agent(self) -> None:
        self.agent.start()
        self.agent_up = True

    def _bump(self, counters: tuple[str, ...], announce) -> None:
        """Announce, then (agent up) wait until one of counters grew: the agent read."""
        before = {name: self.agent.counter(name) for name in counters}
        announce()
        if self.agent_up:
            self.agent.wait_for(lambda s: any(s.get("counters", {}).get(name, 0) > before[name]
                                              for name in counters),
                                AGENT_WAIT, "/".join(counters))

    # -- guests and ground truth -------------------------------------------------------------
    def boot(self) -> Life:
        """A guest started while the agent watches (its boot cpu is usage too)."""
        guest, dom = self.factory.create(paused=False)
        life = Life(guest, dom)
        if self.agent_up:
            self.polled()
        return life

    def cpu(self, life: Life) -> int:
        dom = self.conn.lookupByUUIDString(life.guest.instance_id)
        [(_, stats)] = self.conn.domainListGetStats([dom], libvirt.VIR_DOMAIN_STATS_CPU_TOTAL)
        return stats["cpu.time"]

    def stop(self, life: Life, action: str, *, versioned: bool = False,
             request: str | None = None, how: str = "destroy") -> None:
        """nova's stop of the running process: its announcement (the agent reads), then the
        driver's hard stop ("destroy"), a managed save ("save", suspend) or an ACPI shutdown
        that nova's soft reboot falls back from to a hard stop ("shutdown")."""
        life.low.append(self.cpu(life))
        counters = ("flush.final", "flush.last_known", "flush.duplicates") \
            if action == "delete" else (f"flush.action.{action}", "flush.action_missed")
        self._bump(counters, lambda: self.nova.delete_start(
            life.guest, self.agent.host, versioned=versioned, request=request, action=action))
        life.high.append(self.cpu(life))
        dom = self.conn.lookupByUUIDString(life.guest.instance_id)
        if how == "save":  # QEMU runs on while it saves: our last read before it ended
            life.high[-1] = max(life.high[-1], self._last_cpu_during(life, dom.managedSave))
        elif how == "shutdown":
            dom.shutdown()
            if not _wait(lambda: not dom.isActive(), 2.0):
                life.high[-1] = self.cpu(life)  # it ran on while nova waited
                dom.destroy()  # no ACPI in our guests: nova's fallback, a hard reboot
        else:  # a poll may read between `high` and the destroy: billed, and used
            life.high[-1] = max(life.high[-1], self._last_cpu_during(life, dom.destroy))

    def _last_cpu_during(self, life: Life, stop) -> int:
        """Run stop() while another connection reads cpu.time until the process is gone."""
        last, done = [0], threading.Event()
        conn = libvirt.open(self.uri)

        def sample() -> None:
            dom = conn.lookupByUUIDString(life.guest.instance_id)
            while not done.is_set():
                try:
                    [(_, stats)] = conn.domainListGetStats(
                        [dom], libvirt.VIR_DOMAIN_STATS_CPU_TOTAL | libvirt.VIR_DOMAIN_STATS_STATE)
                except libvirt.libvirtError:
                    return
                if stats.get("state.state") not in RUNNING_OR_PAUSED or "cpu.time" not in stats:
                    return  # ended: a shut-off domain's cpu.time is libvirtd's own (§2)
                last[0] = stats["cpu.time"]
                time.sleep(0.005)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        try:
            stop()
        finally:
            done.set()
            sampler.join(5)
            conn.close()
        return last[0]

    def revert_resize(self, life: Life) -> None:
        """nova's revert_resize on the destination: its exists (task_state
        resize_reverting, window period start → now) first, then driver.destroy."""
        life.low.append(self.cpu(life))
        now = datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0)
        self._bump(("flush.action.resize_revert", "flush.action_missed"),
                   lambda: self.nova.exists(life.guest, self.agent.host,
                                            now.replace(minute=0, second=0), now,
                                            task_state="resize_reverting"))
        life.high.append(self.cpu(life))
        self.conn.lookupByUUIDString(life.guest.instance_id).destroy()

    def start(self, life: Life) -> None:
        """A new QEMU process of the same domain (power-on, resume, reboot's second half)."""
        self.conn.lookupByUUIDString(life.guest.instance_id).create()
        if self.agent_up:
            self.polled()

    def delete(self, life: Life, *, request: str | None = None,
               running: bool = True) -> None:
        """nova's delete: delete.start, destroy, undefine (running=False: already off)."""
        if running:
            self.stop(life, "delete", request=request)
        else:
            self._bump(("flush.final", "flush.last_known", "flush.duplicates"),
                       lambda: self.nova.delete_start(life.guest, self.agent.host,
                                                      request=request))
        self.factory.destroy(life.guest)

    def failed_delete(self, life: Life) -> None:
        """delete.start, then nova fails before destroying: the domain stays, running."""
        self._bump(("flush.final", "flush.last_known", "flush.duplicates"),
                   lambda: self.nova.delete_start(life.guest, self.agent.host,
                                                  request=f"req-{uuid.uuid4()}"))

    # -- billing -----------------------------------------------------------------------------
    def billed(self, life: Life, timeout: float = EVENT_WAIT) -> Billed | None:
        """The sum over the instance's exists once a final one came (None: none came)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if any(e["payload"].get("final") for e in self.exists_of(life)):
                time.sleep(STRAGGLERS)
                return _sum(self.exists_of(life))
            time.sleep(0.1)
        return None

    def exists_of(self, life: Life) -> list[dict]:
        return [e for e in self.billing.by_instance().get(life.guest.instance_id, [])
                if e["event_type"] == EXISTS]


def _sum(events: list[dict]) -> Billed:
    seen: dict[str, dict] = {}
    for event in events:  # billing keeps the first copy of a message_id
        seen.setdefault(event["payload"]["message_id"], event["payload"])
    finals = [p for p in seen.values() if p.get("final")]
    return Billed(cpu_time_ns=sum(p["usage"]["cpu_time_ns"] for p in seen.values()),
                  exists=len(seen), finals=len(finals),
                  processes=finals[0]["usage"]["processes"],
                  complete=read_to_the_destroy(finals[0]["usage"]),
                  incomplete=finals[0]["usage"]["usage_incomplete"])


def _wait(predicate, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return predicate()


# -- the three outside-in scenarios of issue 18 (tests and benchmark) ---------------------------

def power_cycle_kill_delete(world: World) -> Life:
    """Booted while watched, powered off and on, the agent killed -9 and restarted, deleted."""
    life = world.boot()
    world.stop(life, "power_off")
    world.start(life)
    world.kill_agent()
    world.start_agent()
    world.polled()
    world.delete(life)
    return life


def failed_delete_then_delete(world: World) -> Life:
    """A delete.start nova then fails (the domain stays), a power cycle, the real delete."""
    life = world.boot()
    world.failed_delete(life)
    world.polled()
    world.stop(life, "power_off")
    world.start(life)
    world.delete(life, request=f"req-{uuid.uuid4()}")
    return life


def soft_delete_then_reclaim(world: World) -> Life:
    """nova's delete with reclaim_instance_interval: soft_delete.start and a hard power-off;
    the reclaim later deletes the shut-off instance."""
    life = world.boot()
    world.stop(life, "soft_delete")
    time.sleep(1.0)  # soft-deleted for a while
    world.delete(life, running=False, request=f"req-{uuid.uuid4()}")
    return life


def resize_then_revert(world: World) -> Life:
    """A same-host resize (resize.start, power-off, the new flavor started), then its revert
    (the exists before the destination's destroy, the old flavor started), then delete."""
    life = world.boot()
    world.stop(life, "resize")
    world.start(life)
    world.revert_resize(life)
    world.start(life)
    world.delete(life)
    return life
