"""What a baseline read and a baseline hop cost depends on what came just before them.

Why hook_latency.py and e2e_latency.py measure their baselines in the conditions of the path
they are ratios of (issue 19; doc/benchmarks.md, "Issue 19, session 8"). Real QEMU guests and
libvirtd, the real broker, nothing else of lifecycle-stats but Inspector.read:

  (i)  one domainListGetStats of one paused guest (the capture's read, STATS_GROUPS): the
       guest's first single read, at the agent's start after a bulk poll of every guest some
       seconds before; the same guest read again at once; a guest whose first single read
       comes 0.5 s after a bulk poll; back-to-back reads of guests read before (the baseline
       of sessions 1-7). Interleaved guest by guest.
  (ii) one notification published and consumed (oslo.messaging, one process): after 50 ms
       idle, against at once after another hop. Interleaved.

    .venv/bin/python benchmarks/read_conditions.py [--guests 30] [--wait 20] [--hops 60]
"""
from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from benchmarks import _common  # noqa: E402
from lifecycle_stats import agent  # noqa: E402
from lifecycle_stats.reading import inspector as inspector_mod  # noqa: E402


def reads(uri: str, made: list, wait: float) -> dict[str, list[float]]:
    import libvirt

    conn = libvirt.open(uri)
    doms = [conn.lookupByUUIDString(guest.instance_id) for guest, _ in made]

    def one(dom) -> float:
        started = time.perf_counter()
        conn.domainListGetStats([dom], inspector_mod.STATS_GROUPS)
        return _common.ms_since(started)

    def bulk() -> None:
        conn.getAllDomainStats(inspector_mod.STATS_GROUPS,
                               libvirt.VIR_CONNECT_GET_ALL_DOMAINS_STATS_ACTIVE)

    try:
        half = len(doms) // 2
        bulk()  # as the agent's first poll at its start
        time.sleep(wait)
        out = {"first single read, a poll seconds before": [], "the same guest again at once": [],
               "first single read 0.5 s after a poll": [], "back to back (sessions 1-7)": []}
        for dom in doms[:half]:
            out["first single read, a poll seconds before"].append(one(dom))
            out["the same guest again at once"].append(one(dom))
            time.sleep(0.05)
        bulk()
        time.sleep(0.5)
        for dom in doms[half:]:
            out["first single read 0.5 s after a poll"].append(one(dom))
            time.sleep(0.05)
        for i in range(30):
            out["back to back (sessions 1-7)"].append(one(doms[i % len(doms)]))
        return out
    finally:
        conn.close()


def hops(uri: str, directory: str, count: int) -> dict[str, list[float]]:
    from benchmarks._baselines import HopProbe
    from benchmarks.e2e_latency import Bench

    bench = Bench(directory, uri, _common.AGENT_POLL_INTERVAL)  # its broker names, no agent
    probe = HopProbe(bench)
    try:
        out = {"a hop after 50 ms idle": [], "a hop at once after another": []}
        for _ in range(count):
            time.sleep(0.05)
            idle = probe.one()
            probe.one()
            at_once = probe.one()
            if idle is not None and at_once is not None:
                out["a hop after 50 ms idle"].append(idle)
                out["a hop at once after another"].append(at_once)
        return out
    finally:
        probe.close()
        bench.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--guests", type=int, default=30)
    parser.add_argument("--wait", type=float, default=20.0,
                        help="seconds between the bulk poll and the first single reads")
    parser.add_argument("--hops", type=int, default=60)
    parser.add_argument("--uri", default="qemu:///system")
    args = parser.parse_args()
    _common.exit_on_sigterm()
    agent.quiet_libvirt_stderr()
    with _common.workdir("lifecycle-stats-conditions-") as directory, _common.guests(
            args.uri, directory, paused=args.guests, running=0) as (_, made):
        figures = {**reads(args.uri, made, args.wait), **hops(args.uri, directory, args.hops)}
    rows = [[name, *(_common.summary(v)[k] for k in ("n", "p50", "p99"))]
            for name, v in figures.items()]
    print("\n(i) one guest's read and (ii) one broker hop, by what came just before, ms")
    print(_common.table(["", "n", "p50", "p99"], rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
