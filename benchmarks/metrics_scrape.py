"""Metrics scrape cost vs spool depth: one /metrics exposition (AgentCollector over a real
on-disk Spool with two conduits, plus the process collector), as the HTTP endpoint or the
textfile writer produces it. The collector counts each conduit's unconfirmed records, so its
cost grows with the spool; depth 0 is the baseline. Depths are interleaved within each round.

    .venv/bin/python benchmarks/metrics_scrape.py [--depths 0,1000,10000,100000] [--rounds 20]
"""
from __future__ import annotations

import argparse
import os
import random
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from benchmarks import _common  # noqa: E402

from prometheus_client import generate_latest  # noqa: E402

from lifecycle_stats.operations import exposition as metrics_export, metrics, status  # noqa: E402
from lifecycle_stats.counters import Counters  # noqa: E402
from lifecycle_stats.publishing import spool as spool_mod  # noqa: E402
from lifecycle_stats.records import Notification  # noqa: E402

CONDUITS = ["messagingv2", "log"]


def filled_spool(directory: str, depth: int) -> spool_mod.Spool:
    """A spool holding depth final records, none confirmed (an outage's backlog)."""
    spool = spool_mod.Spool(os.path.join(directory, f"spool-{depth}.sqlite"),
                            conduits=CONDUITS, max_records=max(depth, 1))
    note = Notification("compute.instance.delete.samples", "INFO", "p", {"samples": []}, "m",
                        "t")
    body = spool_mod.encode(note, "final", time.time())
    db = spool._db  # bulk load: put() would fsync each record
    db.execute("BEGIN")
    db.executemany("INSERT INTO records (message_id, tier, created_at, body) VALUES (?,?,?,?)",
                   ((f"m{i}", "final", time.time(), body) for i in range(depth)))
    db.execute("COMMIT")
    return spool


def scraper(spool: spool_mod.Spool):
    counters = Counters()
    for name in ("flush.final", "bus.triggers.legacy", "sender.messagingv2.sent"):
        counters.incr(name, 10)

    def snapshot():
        return {"connections": {"libvirt_flush": "connected"}, "instances": 20,
                "counters": counters.snapshot(), "spool": status.spool_snapshot(spool)}

    registry = metrics_export.make_registry(metrics.AgentCollector(snapshot, counters))
    return lambda: generate_latest(registry)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--depths", default="0,1000,10000,100000")
    parser.add_argument("--rounds", type=int, default=20)
    args = parser.parse_args()
    depths = [int(d) for d in args.depths.split(",")]
    _common.exit_on_sigterm()
    with _common.workdir("lst-metrics-bench-") as directory:
        scrapes = {d: scraper(filled_spool(directory, d)) for d in depths}
        times: dict[int, list[float]] = {d: [] for d in depths}
        for _ in range(args.rounds):
            for depth in random.sample(depths, len(depths)):
                started = time.perf_counter()
                scrapes[depth]()
                times[depth].append(_common.ms_since(started))
    base = _common.summary(times[depths[0]])
    rows = []
    for depth in depths:
        s = _common.summary(times[depth])
        rows.append([str(depth), s["n"], s["p50"], s["p99"], f"{s['p50'] / base['p50']:.1f}x"])
    print(f"one /metrics exposition vs spool depth ({len(CONDUITS)} conduits), ms")
    print(_common.table(["depth", "n", "p50", "p99", "p50/depth0"], rows))


if __name__ == "__main__":
    main()
