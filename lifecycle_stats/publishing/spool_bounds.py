"""The spool's bounds, applied inside each insert's transaction (spool.Spool.insert).

Size (max_records): over it, periodic records are shed oldest-first; a final record (and a
capture waiting for its build) is never shed and is kept even over the bound; a periodic
record is refused when the bound is full of those. Retention: delivered message ids and the
per-instance capture ledger are kept for `seconds`, delivered ids at most `rows` of them.
"""
from __future__ import annotations

import logging
import sqlite3

from lifecycle_stats.counters import Counters

LOG = logging.getLogger("lifecycle_stats.publishing.spool")


def make_room(db: sqlite3.Connection, tier: str, max_records: int, counters: Counters) -> bool:
    """True when a record of this tier may be inserted now (periodic ones shed to make room)."""
    depth = db.execute("SELECT count(*) FROM records").fetchone()[0]
    if depth < max_records:
        return True
    shed = db.execute(
        "SELECT seq, message_id FROM records WHERE tier = 'periodic' ORDER BY seq LIMIT ?",
        (depth - max_records + 1,)).fetchall()
    if shed:
        for seq, message_id in shed:
            db.execute("DELETE FROM records WHERE seq = ?", (seq,))
            db.execute("DELETE FROM deliveries WHERE seq = ?", (seq,))
            LOG.warning("spool full (%d records): shed periodic record %s", depth, message_id)
        counters.incr("spool.shed", len(shed))
        return True
    if tier != "periodic":
        counters.incr("spool.over_bound")
        LOG.warning("spool full of final records (%d): keeping a %s over the bound of %d",
                    depth, tier, max_records)
        return True
    counters.incr("spool.shed")
    LOG.warning("spool full of final records (%d): refused a periodic record", depth)
    return False


def prune_delivered(db: sqlite3.Connection, now: float, seconds: float, rows: int) -> None:
    db.execute("DELETE FROM delivered WHERE delivered_at < ?", (now - seconds,))
    db.execute("DELETE FROM captures WHERE captured_at < ?", (now - seconds,))
    # rowids grow with every insert: this keeps at most the newest `rows` (O(log n)).
    db.execute("DELETE FROM delivered WHERE rowid <= "
               "(SELECT max(rowid) FROM delivered) - ?", (rows,))
