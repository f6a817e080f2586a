"""Burst: 200 delete.start in one second on 200 real paused guests, the real agent process.

The real `lifecycle-stats-agent` process (harness.AgentProcess, via e2e_latency.Bench) on the
real broker and libvirtd, N paused QEMU guests (created in parallel threads), nova's legacy
delete.start for every guest published evenly within `--window` seconds, and billing's
consumer reading delete.samples. The domains stay alive (nova would destroy them
meanwhile; that race is e2e_latency.py's part ii): `final` then says the agent read each live
domain rather than falling back to a cached reading.

Printed: captures by kind (target: all `final`), delete.start → delete.samples consumed per
delete (p50/p99/max) and the last one after the burst's first publish (target ≤ 2 s), the
agent's RSS before, peak during (sampled every 50 ms), after (target ≤ 90 MiB) and VmHWM,
and its CPU in the burst. --deletes N deletes only the first N guests (benchmarks/scale.py:
a 200-delete burst with 500 domains present).

    .venv/bin/python benchmarks/burst.py [--guests 200] [--window 1.0] [--workers 8]
                                         [--listener-workers N] [--rounds N]
                                         [--baseline-agent PATH] [--profile DIR]

--rounds repeats the burst on the same guests (they stay alive), a fresh agent each time;
--baseline-agent runs another checkout's agent before this one in every round (A/B/A/B on
one set of guests), and the medians of both are printed side by side.

MALLOC_ARENA_MAX in the environment reaches the agent process (the systemd unit sets it).
"""
from __future__ import annotations

import argparse
import contextlib
import os
import pathlib
import signal
import statistics
import subprocess
import sys
import threading
import time
import warnings
from typing import Iterator

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from benchmarks import _common  # noqa: E402
from benchmarks._procstats import cpu_seconds, rss_mib  # noqa: E402
from benchmarks.e2e_latency import KINDS, Bench, captured_epoch  # noqa: E402
from lifecycle_stats import agent  # noqa: E402
from tests.integration import harness  # noqa: E402

warnings.filterwarnings("ignore", message=r"\s*Eventlet is deprecated")
TARGET_LAST_S = 2.0  # issue 19: the last delivered <= 2.0 s after the first publish
TARGET_RSS_MIB = 90e6 / 2**20  # issue 19: agent RSS <= 90 MB after the 200-delete burst


class RssPeak:
    """The process's RSS peak while the block runs, sampled every 50 ms."""

    def __init__(self, pid: int):
        self.pid, self.peak = pid, 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)

    def __enter__(self) -> "RssPeak":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    def _watch(self) -> None:
        while True:
            self.peak = max(self.peak, rss_mib(self.pid))
            if self._stop.wait(0.05):
                return


def burst(bench: Bench, made: list, window: float) -> list[tuple[float, float]]:
    """Publish every guest's delete.start evenly within `window` s; (monotonic, epoch) of
    each send."""
    spacing = window / len(made)
    started = time.monotonic()
    sent = []
    for i, (guest, _) in enumerate(made):
        time.sleep(max(0.0, started + i * spacing - time.monotonic()))
        sent.append(bench.delete_start(guest))
    return sent


def measure(bench: Bench, made: list, window: float, wait_s: float) -> dict:
    pid = bench.agent.proc.pid
    rss_before, cpu_before = rss_mib(pid), cpu_seconds(pid)
    ids = [guest.instance_id for guest, _ in made]
    with RssPeak(pid) as rss:
        sent = burst(bench, made, window)
        published_in = sent[-1][0] - sent[0][0]
        events = bench.billing.wait_for_instances(ids, wait_s)
    kinds: dict[str, int] = {}
    latencies, to_read, consumed = [], [], []
    for instance_id, (sent_at, sent_wall) in zip(ids, sent):
        got = events.get(instance_id)
        kind = got[0]["payload"]["capture"]["kind"] if got else "missing"
        kinds[kind] = kinds.get(kind, 0) + 1
        if got:
            latencies.append((got[0]["consumed_at"] - sent_at) * 1e3)
            to_read.append((captured_epoch(got[0]) - sent_wall) * 1e3)
            consumed.append(got[0]["consumed_at"])
    return {"kinds": kinds, "latency": _common.summary(latencies), "rss_after": rss_mib(pid),
            "to_read": _common.summary(to_read),
            "last_s": (max(consumed) - sent[0][0]) if consumed else float("nan"),
            "published_in": published_in, "rss_before": rss_before, "rss_peak": rss.peak,
            "hwm": rss_mib(pid, "VmHWM"), "cpu_s": cpu_seconds(pid) - cpu_before,
            "duplicates": sum(len(v) - 1 for k, v in events.items() if k in set(ids))}


def report(result: dict, guests: int, window: float) -> None:
    kinds, lat = result["kinds"], result["latency"]
    all_final = kinds.get("final", 0) == guests
    print(f"\nburst: {guests} delete.start published in {result['published_in']:.2f} s "
          f"(target window {window:g} s), {guests} paused guests, one agent process")
    rows = [
        ["captures", " ".join(f"{k}={kinds.get(k, 0)}" for k in (*KINDS, "missing")),
         f"all final: {'met' if all_final else 'NOT met'}"],
        ["delete.start → consumed p50 / p99 / max, ms",
         f"{lat['p50']:.0f} / {lat['p99']:.0f} / {lat['max']:.0f}", ""],
        ["  of which published → read (captured_at) p50 / max, ms",
         f"{result['to_read']['p50']:.0f} / {result['to_read']['max']:.0f}", ""],
        ["last delivered after the first publish, s", f"{result['last_s']:.2f}",
         f"≤ {TARGET_LAST_S:g} s: {'met' if result['last_s'] <= TARGET_LAST_S else 'NOT met'}"],
        ["agent RSS before / peak in burst / VmHWM, MiB",
         f"{result['rss_before']:.0f} / {result['rss_peak']:.0f} / {result['hwm']:.0f}", ""],
        ["agent RSS after the burst, MiB", f"{result['rss_after']:.0f}",
         f"≤ 90 MB ({TARGET_RSS_MIB:.1f} MiB): "
         f"{'met' if result['rss_after'] <= TARGET_RSS_MIB else 'NOT met'}"],
        ["agent CPU during the burst, s", f"{result['cpu_s']:.2f}", ""],
        ["duplicate delete.samples", str(result["duplicates"]), ""],
    ]
    print(_common.table(["", "measured", "target"], rows))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--guests", type=int, default=200)
    parser.add_argument("--window", type=float, default=1.0,
                        help="seconds over which the delete.start are published")
    parser.add_argument("--workers", type=int, default=8, help="threads creating guests")
    parser.add_argument("--poll-interval", type=float, default=10.0)
    parser.add_argument("--wait", type=float, default=60.0,
                        help="seconds to wait for every delete.samples")
    parser.add_argument("--uri", default="qemu:///system")
    parser.add_argument("--listener-workers", type=int, default=None,
                        help="the agent's [notification_listener] workers (default: its own)")
    parser.add_argument("--rounds", type=int, default=1,
                        help="bursts on the same guests, a fresh agent for each")
    parser.add_argument("--baseline-agent", type=pathlib.Path, default=None,
                        help="another checkout's lifecycle-stats-agent: each round runs it, "
                             "then this one (A/B on the same guests, back to back)")
    parser.add_argument("--profile", metavar="DIR", default=None,
                        help="py-spy (from this venv) records each burst's agent into DIR "
                             "(collapsed stacks of the thread holding the GIL: Python's CPU)")
    args = parser.parse_args()
    _common.exit_on_sigterm()
    agent.quiet_libvirt_stderr()
    agents = [("this", harness.AGENT)]
    if args.baseline_agent is not None:
        agents.insert(0, ("baseline", args.baseline_agent))
    extra = ({} if args.listener_workers is None else
             {"notification_listener": {"workers": str(args.listener_workers)}})
    results: dict[str, list[dict]] = {label: [] for label, _ in agents}
    with _common.workdir("lifecycle-stats-burst-") as directory, _common.guests(
            args.uri, directory, paused=args.guests, running=0,
            workers=args.workers) as (_, made):
        for round_no in range(1, args.rounds + 1):
            for label, executable in agents:
                bench = Bench(directory, args.uri, args.poll_interval, extra=extra,
                              executable=executable)
                try:
                    bench.start()
                    with spying(bench.agent.proc.pid, args.profile, f"{round_no}-{label}"):
                        result = measure(bench, made, args.window, args.wait)
                finally:
                    bench.close()
                results[label].append(result)
                print(f"\nround {round_no}, {label} agent ({executable})")
                report(result, args.guests, args.window)
    if len(agents) > 1 or args.rounds > 1:
        compare(results)
    return 0


@contextlib.contextmanager
def spying(pid: int, directory: str | None, name: str) -> Iterator[None]:
    """py-spy records pid while the block runs (nothing when directory is None)."""
    if directory is None:
        yield
        return
    os.makedirs(directory, exist_ok=True)
    out = os.path.join(directory, f"burst-{name}.txt")
    spy = subprocess.Popen([str(harness.AGENT.with_name("py-spy")), "record", "--pid", str(pid),
                            "--format", "raw", "--rate", "250", "--gil", "--threads",
                            "--output", out],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(0.5)  # attached before the first publish
    try:
        yield
    finally:
        spy.send_signal(signal.SIGINT)  # py-spy writes what it recorded, then exits
        spy.wait(30)


def compare(results: dict[str, list[dict]]) -> None:
    """Each agent's median over its rounds (rounds alternate, so both met the same load)."""
    print("\nmedian over rounds          " + "  ".join(f"{label:>12}" for label in results))
    for key, title in (("last_s", "last delivered, s"), ("rss_after", "RSS after, MiB"),
                       ("cpu_s", "agent CPU, s")):
        print(f"{title:<28}" + "  ".join(
            f"{statistics.median(r[key] for r in rounds):>12.2f}"
            for rounds in results.values()))
    print(f"{'read p50, ms':<28}" + "  ".join(
        f"{statistics.median(r['to_read']['p50'] for r in rounds):>12.0f}"
        for rounds in results.values()))
    print("last delivered per round, s: " + "; ".join(
        f"{label} " + " ".join(f"{r['last_s']:.2f}" for r in rounds)
        for label, rounds in results.items()))


if __name__ == "__main__":
    sys.exit(main())
