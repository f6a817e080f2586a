"""Turn the usage ledger into spooled `compute.instance.exists`: at the agent's audit period
ends, for nova's own exists (its audit window, or a mid-period window: rebuild, rescue,
resize, shelve, revert), and a final one when an instance has ended.

Every report carries only usage not reported before and read by its window's end (the final:
all of it), so Σ usage over an instance's exists (deduplicated by message_id) is the counter
growth the agent read, each reading's growth in exactly one (usage/journal.py). A report is
stored in the ledger before it is spooled; one not spooled yet (a crash, a full spool) is
spooled by flush_pending, which the period closer runs. Period and nova-window exists are
spooled as `periodic` records, the final exists as `final`, like delete.samples.
"""
from __future__ import annotations

import datetime
import logging
import sqlite3
from typing import Callable

from lifecycle_stats.counters import Counters
from lifecycle_stats.exceptions import CaptureDeferred
from lifecycle_stats.interfaces import NotificationStore
from lifecycle_stats.publishing import exists, payloads
from lifecycle_stats.records import AuditWindow, InstanceInfo, Notification, utcnow
from lifecycle_stats.usage.ledger import UsageLedger

LOG = logging.getLogger(__name__)
TRANSIENT = (sqlite3.Error, OSError)  # a locked or full spool or ledger


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

    def final_due(self, instance_id: str) -> bool:
        """The ended instance's final exists: (period begin, end] with all usage still owed.
        Its envelope time is never later than nova's delete announcement, as delete.samples':
        a later one would let Ceilometer's stock samples of it un-end the instance in Gnocchi."""
        ended = self.ledger.ended(instance_id)
        if ended is None:
            return False
        info, ended_at, announced_at = ended
        begin, _ = self.ledger.period.current(ended_at)
        return self._report(info, begin, ended_at, exists.DELETED, tier="final", upto=None,
                            sent_by=announced_at)

    def period(self, begin: datetime.datetime, end: datetime.datetime) -> int:
        """One exists per instance hosted in the completed period; returns how many."""
        spooled = 0
        for info in self.ledger.hosted(begin, end):
            try:
                spooled += self._report(info, begin, end, exists.AGENT_PERIOD,
                                        tier="periodic", upto=end)
            except TRANSIENT as exc:  # owed: stored and spooled later, or claimed later
                self._counters.incr("usage.exists_deferred")
                LOG.warning("exists of %s for %s..%s not spooled yet: %s", info.instance_id,
                            begin, end, exc)
        self.ledger.mark_emitted(begin, end, self._clock())
        LOG.info("audit period %s..%s: %d exists spooled", begin, end, spooled)
        return spooled

    def nova_audit(self, window: AuditWindow, info: InstanceInfo | None) -> bool:
        """Nova's own exists for one instance on this host, enriched with the usage owed up
        to its window's end. Raises CaptureDeferred when it could not be spooled (nova's
        message is requeued; the report waits in the ledger for the redelivery)."""
        info = info or self.ledger.info(window.instance_id)
        if info is None:
            self._counters.incr("usage.nova_exists_unknown")
            LOG.info("nova exists for %s: instance never seen here", window.instance_id)
            return False
        if (self.ledger.ended(window.instance_id) is not None
                and not self.ledger.owes(window.instance_id, window.end)):
            self._counters.incr("usage.nova_exists_after_final")  # the final carried it all
            return False
        try:
            return self._report(info, window.begin, window.end, exists.NOVA_AUDIT,
                                tier="periodic", upto=window.end,
                                extra={"nova_event_type": window.event_type})
        except TRANSIENT as exc:
            self._counters.incr("usage.exists_deferred")
            raise CaptureDeferred(f"exists of {window.instance_id} not spooled: {exc}") from exc

    def owed(self) -> bool:
        return bool(self.ledger.unspooled_reports() or self.ledger.finals_owed())

    def flush_pending(self) -> int:
        """Make the final reports owed and spool every report stored but not spooled yet;
        returns how many were spooled. Errors leave them owed for the next call."""
        spooled = 0
        try:
            for instance_id in self.ledger.finals_owed():
                self.final_due(instance_id)
            for tier, notification in self.ledger.unspooled_reports():
                spooled += self._spool_report(tier, notification)
        except TRANSIENT as exc:
            self._counters.incr("usage.exists_deferred")
            LOG.warning("owed exists not spooled yet (%s): retried later", exc)
        return spooled

    def _report(self, info: InstanceInfo, begin: datetime.datetime, end: datetime.datetime,
                source: str, *, tier: str, upto: datetime.datetime | None,
                extra: dict | None = None, sent_by: datetime.datetime | None = None) -> bool:
        message_id = exists.exists_message_id(info.instance_id, begin,
                                              None if source == exists.DELETED else end)
        now = self._clock() if sent_by is None else min(self._clock(), sent_by)

        def build(used):
            notification = exists.exists(
                info=info, used=used, begin=begin, end=end, source=source, host=self._host,
                publisher_id=self._publisher_id, now=now, extra=extra)
            payloads.validate(notification)
            return notification

        notification = self.ledger.claim_report(
            message_id, info.instance_id, upto, build, begin=begin, end=end, tier=tier,
            source=source, now=self._clock())
        return self._spool_report(tier, notification)

    def _spool_report(self, tier: str, notification: Notification) -> bool:
        message_id = notification.message_id
        if self._spool.seen(message_id):
            self.ledger.mark_spooled([message_id], self._clock())
            self._counters.incr("usage.exists_duplicates")
            return False
        self._spool.put(notification, tier=tier)
        self.ledger.mark_spooled([message_id], self._clock())
        self._counters.incr(f"usage.exists.{notification.payload['period_source']}")
        if not notification.payload["usage"]["complete"]:
            self._counters.incr("usage.exists_incomplete")
        self._on_spooled()
        return True
