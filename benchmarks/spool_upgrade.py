"""Spool upgrade at start: opening a layout-1 spool (a record's tier under `kind`, before issue
17) migrates it to the current layout (layout 2: two column renames, the tier index rebuilt;
layout 3: the per-conduit `failures` table) before the agent starts; how much does that add to
opening a spool that is already current, vs its backlog?
Both are opened from a fresh copy of the same file each round (real on-disk SQLite, WAL,
synchronous=FULL), depths interleaved. Target: the upgrade adds < 1 s at the spool's default
bound (100,000 records); the unit's TimeoutStartSec is 120 s.

    .venv/bin/python benchmarks/spool_upgrade.py [--depths 0,10000,100000] [--rounds 7]
"""
from __future__ import annotations

import argparse
import os
import random
import shutil
import sqlite3
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from benchmarks import _common  # noqa: E402

from lifecycle_stats.publishing import spool as spool_mod, spool_schema  # noqa: E402
from lifecycle_stats.records import Notification  # noqa: E402

CONDUITS = ["messagingv2", "log"]
TARGET_MS = 1000.0
# The inverse of spool_schema's layout 1 -> 2 -> 3 steps: a current file made layout 1 again.
BACK_TO_V1 = """
DROP TABLE failures;
ALTER TABLE records RENAME COLUMN tier TO kind;
DROP INDEX records_tier_seq;
CREATE INDEX records_kind_seq ON records (kind, seq);
ALTER TABLE rejects RENAME COLUMN tier TO kind;
PRAGMA user_version = 1;
"""


def templates(directory: str, depth: int) -> dict[str, str]:
    """{layout: path} of two files holding depth unconfirmed records (an outage's backlog):
    one half final, one half periodic, each body a ~2 KB delete.samples-sized notification."""
    current = os.path.join(directory, f"current-{depth}.sqlite")
    spool = spool_mod.Spool(current, conduits=CONDUITS, max_records=max(depth, 1))
    note = Notification("compute.instance.delete.samples", "INFO", "p",
                        {"samples": [{"name": "cpu", "volume": i} for i in range(60)]}, "m", "t")
    body = spool_mod.encode(note, "final", time.time())
    db = spool._db  # bulk load: put() would fsync each record
    db.execute("BEGIN")
    db.executemany("INSERT INTO records (message_id, tier, created_at, body) VALUES (?,?,?,?)",
                   ((f"m{i}", ("final", "periodic")[i % 2], time.time(), body)
                    for i in range(depth)))
    db.execute("COMMIT")
    spool.close()
    v1 = os.path.join(directory, f"v1-{depth}.sqlite")
    shutil.copyfile(current, v1)
    old = sqlite3.connect(v1, isolation_level=None)
    old.executescript(BACK_TO_V1)
    old.close()
    return {"current layout (baseline)": current, "layout 1 (upgraded)": v1}


def open_once(template: str, scratch: str) -> float:
    for suffix in ("", "-wal", "-shm"):
        if os.path.exists(scratch + suffix):
            os.remove(scratch + suffix)
    shutil.copyfile(template, scratch)
    started = time.perf_counter()
    spool = spool_mod.Spool(scratch, conduits=CONDUITS, max_records=100_000)
    took = _common.ms_since(started)
    assert spool._db.execute("PRAGMA user_version").fetchone()[0] == spool_schema.SCHEMA_VERSION
    spool.close()
    return took


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--depths", default="0,10000,100000")
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    depths = [int(d) for d in args.depths.split(",")]
    _common.exit_on_sigterm()
    with _common.workdir("lst-spool-upgrade-") as directory:
        files = {d: templates(directory, d) for d in depths}
        cases = [(d, layout) for d in depths for layout in files[d]]
        times: dict[tuple[int, str], list[float]] = {case: [] for case in cases}
        scratch = os.path.join(directory, "spool.sqlite")
        for _ in range(args.rounds):
            for depth, layout in random.sample(cases, len(cases)):
                times[(depth, layout)].append(open_once(files[depth][layout], scratch))
    rows, verdicts = [], []
    for depth in depths:
        base, upgraded = (_common.summary(times[(depth, layout)]) for layout in files[depth])
        added = upgraded["p50"] - base["p50"]
        rows.append([str(depth), base["n"], base["p50"], base["p99"], upgraded["p50"],
                     upgraded["p99"], added, f"{upgraded['p50'] / base['p50']:.1f}x"])
        verdicts.append((depth, added))
    print(f"opening a spool at start vs its depth, ms (baseline: the same backlog already "
          f"layout {spool_schema.SCHEMA_VERSION}, same run)")
    print(_common.table(["depth", "n", "current p50", "current p99", "v1->now p50", "v1->now p99",
                         "added p50", "ratio"], rows))
    depth, added = max(verdicts)
    print(f"target: the upgrade adds < {TARGET_MS:.0f} ms at depth {depth}: "
          f"{added:.0f} ms, {'met' if added < TARGET_MS else 'NOT met'}")


if __name__ == "__main__":
    main()
