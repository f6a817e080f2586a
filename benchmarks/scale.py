"""Scale on one host: N paused guests (default 500), the bulk poll and a 200-delete burst.

Paused TCG guests cost ~36 MiB each: check `free -g` first (500 need ~18 GiB). The guests
exist only for the run (removed on exit, even on Ctrl-C / SIGTERM). In one set of guests:
1. the bulk poll in this process, rounds interleaved: the raw getAllDomainStats call (the
   floor), our Inspector.poll, and the agent's whole poll (capture.pipeline's poll: identify,
   cache, ledger) — wall and client CPU medians, ratios to the raw call (target: ours
   <= 1.5x the raw call's CPU);
2. the real agent process (benchmarks/e2e_latency.Bench) with all N domains present: its RSS
   after its first polls (target <= 120 MB), then 200 delete.start in one second among them
   (burst.py's measurement: all final, last delivered <= 2 s, RSS after <= 90 MB).

    .venv/bin/python benchmarks/scale.py [--guests 500] [--deletes 200] [--rounds 5]
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import warnings

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from benchmarks import _common, burst, poll_cycle  # noqa: E402
from benchmarks._procstats import rss_mib  # noqa: E402
from benchmarks.e2e_latency import Bench  # noqa: E402
from lifecycle_stats import agent  # noqa: E402
from lifecycle_stats.reading.hypervisor import Hypervisor  # noqa: E402
from lifecycle_stats.reading.inspector import Inspector  # noqa: E402

warnings.filterwarnings("ignore", message=r"\s*Eventlet is deprecated")
TARGET_RSS_MIB_AT_SCALE = 120e6 / 2**20  # issue 19: agent RSS <= 120 MB with 500 domains


def poll_figures(uri: str, directory: str, rounds: int) -> dict[str, tuple[float, float]]:
    """Median (wall ms, client CPU ms) of each poll path, rounds interleaved."""
    poll_hv, raw_hv = Hypervisor(uri), Hypervisor(uri)
    inspector = Inspector(poll_hv)
    core, closing = poll_cycle.agent_poller(uri, directory)
    paths = {"raw": poll_cycle.raw_call(raw_hv), "ours": inspector.poll, "poller": core.poll}
    times: dict[str, list[tuple[float, float]]] = {name: [] for name in paths}
    try:
        for fn in paths.values():
            fn()  # warm up each connection (and the registry's first identify)
        for n in range(rounds):
            names = list(paths)[n % 3:] + list(paths)[:n % 3]
            for name in names:
                wall, cpu, _ = poll_cycle.timed(paths[name])
                times[name].append((wall, cpu))
    finally:
        for part in (poll_hv, raw_hv, *closing):
            part.close()
    return {name: (statistics.median(w for w, _ in values),
                   statistics.median(c for _, c in values)) for name, values in times.items()}


def report_polls(figures: dict, guests: int) -> None:
    raw_wall, raw_cpu = figures["raw"]
    rows = []
    for name, (wall, cpu) in figures.items():
        ratio = cpu / raw_cpu if raw_cpu else float("inf")
        target = ""
        if name == "ours":
            target = f"≤ 1.5x raw: {'met' if ratio <= 1.5 else 'NOT met'}"
        rows.append([name, f"{wall:.1f}", f"{cpu:.2f}", f"{ratio:.2f}x", target])
    print(f"\nbulk poll with {guests} domains (medians, ms; CPU = this process's)")
    print(_common.table(["path", "wall", "client CPU", "CPU / raw", "target"], rows))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--guests", type=int, default=500)
    parser.add_argument("--deletes", type=int, default=200)
    parser.add_argument("--window", type=float, default=1.0)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--workers", type=int, default=8)
    parser.add_argument("--poll-interval", type=float, default=10.0)
    parser.add_argument("--wait", type=float, default=120.0)
    parser.add_argument("--uri", default="qemu:///system")
    args = parser.parse_args()
    _common.exit_on_sigterm()
    agent.quiet_libvirt_stderr()
    with _common.workdir("lifecycle-stats-scale-") as directory, _common.guests(
            args.uri, directory, paused=args.guests, running=0,
            workers=args.workers) as (_, made):
        report_polls(poll_figures(args.uri, directory, args.rounds), args.guests)
        bench = Bench(directory, args.uri, args.poll_interval)
        try:
            bench.start()
            bench.agent.wait_for(lambda s: s.get("counters", {}).get("poller.polls", 0) >= 2,
                                 120, "two bulk polls")
            rss_present = rss_mib(bench.agent.proc.pid)
            result = burst.measure(bench, made[:args.deletes], args.window, args.wait)
        finally:
            bench.close()
    met = "met" if rss_present <= TARGET_RSS_MIB_AT_SCALE else "NOT met"
    print(f"\nagent RSS with {args.guests} domains present (after two polls): "
          f"{rss_present:.0f} MiB; ≤ 120 MB ({TARGET_RSS_MIB_AT_SCALE:.1f} MiB): {met}")
    burst.report(result, args.deletes, args.window)
    return 0


if __name__ == "__main__":
    sys.exit(main())
