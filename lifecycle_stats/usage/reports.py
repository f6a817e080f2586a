"""Turn the usage ledger into spooled `compute.instance.exists`: per audit period, for nova's
own audit window (enrichment), and a last partial period when an instance is deleted.

Period and nova-window exists are spooled as `periodic` records (shed before finals under
[spool] max_records: the ledger can still answer for them); the final exists of a deleted
instance as `final`, like its delete.samples.
"""
from __future__ import annotations

import datetime
import logging
from typing import Callable

from lifecycle_stats.usage.ledger import UsageLedger
from lifecycle_stats.counters import Counters
from lifecycle_stats.interfaces import NotificationStore
from lifecycle_stats.publishing import exists, payloads
from lifecycle_stats.records import AuditWindow, InstanceInfo, utcnow

LOG = logging.getLogger(__name__)


class ExistsReporter:
    def __init__(self, *, ledger: UsageLedger, spool: NotificationStore, host: str,
                 publisher_id: str, counters: Counters | None = None,
                 on_spooled: Callable[[], None] = lambda: None,
                 clock: Callable[[], datetime.datetime] = utcnow) -> None:
        self.ledger = ledger
        self._spool = spool
        self._host = host
        self._publisher_id = publisher_id
        self._counters = counters if counters is not None else Counters()
        self._on_spooled = on_spooled
        self._clock = clock

    def final(self, info: InstanceInfo, deleted_at: datetime.datetime,
              announced_at: datetime.datetime | None = None) -> bool:
        """The deleted instance's last, partial period: (period begin, deletion]. Its envelope
        time is never later than nova's delete announcement (announced_at), as delete.samples':
        a later one would let Ceilometer's stock samples of it un-end the instance in Gnocchi."""
        begin, _ = self.ledger.period.current(deleted_at)
        return self._report(info, begin, deleted_at, exists.DELETED, kind="final",
                            sent_by=announced_at)

    def period(self, begin: datetime.datetime, end: datetime.datetime) -> int:
        """One exists per instance hosted in the completed period; returns how many."""
        spooled = sum(self._report(info, begin, end, exists.AGENT_PERIOD, kind="periodic")
                      for info in self.ledger.hosted(begin, end))
        self.ledger.mark_emitted(begin, end, self._clock())
        LOG.info("audit period %s..%s: %d exists spooled", begin, end, spooled)
        return spooled

    def nova_audit(self, window: AuditWindow, info: InstanceInfo | None) -> bool:
        """Nova's own exists for one instance on this host, enriched for exactly its window."""
        if info is None:
            latest = self.ledger.latest(window.instance_id)
            info = latest.info if latest is not None else None
        if info is None:
            self._counters.incr("usage.nova_exists_unknown")
            LOG.info("nova exists for %s: instance never seen here", window.instance_id)
            return False
        deleted = self.ledger.deleted_at(window.instance_id)
        if deleted is not None and window.begin < deleted:
            # nova audits an instance deleted inside the window too; its final exists already
            # covered (period start, deletion]: enriching the window again would bill it twice
            self._counters.incr("usage.nova_exists_after_final")
            return False
        return self._report(info, window.begin, window.end, exists.NOVA_AUDIT, kind="periodic",
                            extra={"nova_event_type": window.event_type})

    def _report(self, info: InstanceInfo, begin: datetime.datetime, end: datetime.datetime,
                source: str, *, kind: str, extra: dict | None = None,
                sent_by: datetime.datetime | None = None) -> bool:
        used = self.ledger.usage(info.instance_id, begin, end)
        now = self._clock() if sent_by is None else min(self._clock(), sent_by)
        notification = exists.exists(
            info=info, used=used, begin=begin, end=end, source=source, host=self._host,
            publisher_id=self._publisher_id, now=now, extra=extra)
        payloads.validate(notification)
        if self._spool.seen(notification.message_id):
            self._counters.incr("usage.exists_duplicates")
            return False
        self._spool.put(notification, kind=kind)
        self._counters.incr(f"usage.exists.{source}")
        if used.unobserved:
            self._counters.incr("usage.exists_incomplete")
        self._on_spooled()
        return True
