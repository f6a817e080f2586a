"""The usage side of the core on real SQLite files, for unit tests: a spool with one conduit
(`test`), the usage ledger (hour periods) on the test's clock, one Counters, a period closer
over the one guest of tests.support.fakes, and the exists billing would find in the spool.
tests/unit/test_period_closer.py and test_usage_regressions.py build their worlds on it
(close it with contextlib.closing)."""
from __future__ import annotations

import datetime
import pathlib
from typing import Callable

from lifecycle_stats.counters import Counters
from lifecycle_stats.publishing.spool import Spool
from lifecycle_stats.records import Notification
from lifecycle_stats.usage import closer as period_closer, ledger as usage_ledger, periods
from lifecycle_stats.usage.reports import ExistsReporter
from tests.support.fakes import UUID, make_info

EXISTS = "compute.instance.exists"


class UsageFiles:
    def __init__(self, state: pathlib.Path, clock: Callable[[], datetime.datetime]) -> None:
        self.clock = clock
        self.counters = Counters()
        self.real_spool = Spool(str(state / "spool.sqlite"), conduits=["test"],
                                counters=self.counters)
        self.ledger = usage_ledger.UsageLedger(str(state / "usage.sqlite"),
                                               periods.parse("hour"), counters=self.counters,
                                               clock=clock)

    def make_closer(self, reporter: ExistsReporter, **options) -> period_closer.PeriodCloser:
        """A PeriodCloser of the fakes' guest; options: poll, wait, emit_own, backlog."""
        return period_closer.PeriodCloser(
            reporter=reporter, instances=lambda: {UUID: make_info()}, counters=self.counters,
            clock=self.clock, **options)

    def exists(self) -> list[Notification]:
        """Every exists in the spool, in spool order (duplicates included)."""
        return [n for _, n in self.real_spool.pending("test", 10_000) if n.event_type == EXISTS]

    def close(self) -> None:
        self.real_spool.close()
        self.ledger.close()
