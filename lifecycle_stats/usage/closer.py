"""Closes audit periods: a bulk poll just before each period ends (so usage up to the end is
read inside it), then, once it has ended, one exists per instance hosted in it.

Periods missed while the agent was down are closed when it comes back: the newest `backlog`
of them get an exists each, and the oldest of those carries all usage owed from before it
(every report claims what is owed up to its end: nothing is lost to the backlog). Reports
owed (stored but not spooled, finals not made) are retried at every cycle and, while any is
owed, every RETRY_SECONDS. With [usage] enrich_nova_exists the agent's own period
exists are not sent (nova's exists drive them), but the pre-end poll still runs. The clock and
the wait are injected: tests step through period ends without sleeping.
"""
from __future__ import annotations

import datetime
import logging
import threading
from typing import Callable, Mapping

from oslo_config import cfg

from lifecycle_stats.usage import periods
from lifecycle_stats.usage.reports import ExistsReporter
from lifecycle_stats.counters import Counters
from lifecycle_stats.exceptions import ConfigError, HypervisorError
from lifecycle_stats.records import InstanceInfo, utcnow

LOG = logging.getLogger(__name__)
PRE_POLL_SECONDS = 2.0  # a bulk poll of 30 guests takes ~0.3 s here
RETRY_SECONDS = 60.0  # while an exists is owed, it is retried this often

OPTS = [
    cfg.StrOpt("audit_period", default="hour",
               help="Audit period of the agent's compute.instance.exists, in nova's "
                    "instance_usage_audit_period syntax: hour, day, month or year, optionally "
                    "@N (hour@N: minute N; day@N: N:00 UTC; month@N: day N; year@N: month N); "
                    "or Ns, N seconds (5 to 3600; the demo's, not a nova period). "
                    "Usage is accounted in buckets of this period: with enrich_nova_exists, "
                    "set it to nova's instance_usage_audit_period."),
    cfg.BoolOpt("enrich_nova_exists", default=False,
                help="Publish the usage exists for exactly the window of nova's own "
                     "compute.instance.exists / instance.exists for this host (nova's "
                     "[DEFAULT] instance_usage_audit must be on) instead of at the agent's own "
                     "period ends. The final exists at deletion is published either way."),
    cfg.IntOpt("retention_days", default=62, min=1,
               help="Days the usage ledger (usage.sqlite under state_path) keeps periods, "
                    "ended QEMU processes and deleted instances; must cover two audit periods."),
    cfg.IntOpt("max_backlog_periods", default=24, min=1,
               help="Completed periods not yet closed (agent down at their end) that are "
                    "closed when the agent starts, newest first."),
]


def settings(group) -> tuple[periods.AuditPeriod, datetime.timedelta]:
    """The audit period and the ledger's retention from `[usage]`; ConfigError names the
    option when the retention would not keep two whole periods."""
    period = periods.parse(group.audit_period)
    retention = datetime.timedelta(days=group.retention_days)
    epoch = datetime.datetime(2001, 1, 1, tzinfo=datetime.timezone.utc)
    if period.shift(epoch, 2) - epoch > retention:
        raise ConfigError("[usage] retention_days", group.retention_days,
                          f"must cover two audit periods of {period.spec}")
    return period, retention


class PeriodCloser:
    def __init__(self, *, reporter: ExistsReporter,
                 instances: Callable[[], Mapping[str, InstanceInfo]],
                 poll: Callable[[], object], emit_own: bool = True, backlog: int = 24,
                 counters: Counters | None = None,
                 clock: Callable[[], datetime.datetime] = utcnow,
                 wait: Callable[[float], bool] | None = None) -> None:
        self._reporter = reporter
        self._ledger = reporter.ledger
        self._instances = instances
        self._poll = poll
        self._emit_own = emit_own
        self._backlog = backlog
        self._counters = counters if counters is not None else Counters()
        self._clock = clock
        self._stop = threading.Event()
        self._wait = wait if wait is not None else self._stop.wait
        self._thread: threading.Thread | None = None

    def due(self, now: datetime.datetime) -> list[tuple[datetime.datetime, datetime.datetime]]:
        """Completed periods not closed yet, oldest first (at most `backlog`)."""
        period = self._ledger.period
        begin, end = period.last_completed(now)
        floor = self._ledger.first_seen() or now  # nothing to report before the first sight
        found = []
        while len(found) < self._backlog and end > floor and not self._ledger.emitted(begin):
            found.append((begin, end))
            begin, end = period.shift(begin, -1), begin
        return found[::-1]

    def close_due(self) -> int:
        """Close every completed period not closed yet; returns how many exists were spooled."""
        spooled = self._reporter.flush_pending()
        now = self._clock()
        for info in self._instances().values():  # shut-off instances are not polled
            self._ledger.present(info, now)
        for begin, end in self.due(now):
            if self._emit_own:
                spooled += self._reporter.period(begin, end)
            else:
                self._ledger.mark_emitted(begin, end, now)
            self._counters.incr("usage.periods_closed")
        self._ledger.prune(now)
        return spooled

    def step(self) -> bool:
        """One cycle: close what is due, wait for the pre-end poll, poll, wait for the end.
        False once stopped."""
        self.close_due()
        _, end = self._ledger.period.current(self._clock())
        if not self._wait_until(end - datetime.timedelta(seconds=PRE_POLL_SECONDS)):
            return False
        self._pre_end_poll()
        return self._wait_until(end + datetime.timedelta(milliseconds=1))

    def _wait_until(self, moment: datetime.datetime) -> bool:
        """Wait until moment (False once stopped), retrying owed exists meanwhile."""
        while not self._stop.is_set():
            seconds = (moment - self._clock()).total_seconds()
            if seconds <= 0:
                return True
            owed = self._reporter.owed()
            if self._wait(min(seconds, RETRY_SECONDS) if owed else seconds):
                return False
            if owed:
                self._reporter.flush_pending()
        return False

    def _pre_end_poll(self) -> None:
        try:
            self._poll()
        except HypervisorError as exc:
            self._counters.incr("usage.pre_end_poll_errors")
            LOG.warning("poll before the period end failed: %s", exc)

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="lifecycle-stats-periods",
                                        daemon=True)
        self._thread.start()

    def request_stop(self) -> None:
        """Signal the thread; the agent does so before joining the poller, so a pre-end poll
        in progress ends during that join and stop() then waits only briefly."""
        self._stop.set()

    def stop(self, timeout: float = 1.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                if not self.step():
                    return
            except Exception:  # a broken period must not end the accounting for good
                self._counters.incr("usage.period_errors")
                LOG.exception("closing an audit period failed")
                if self._wait(60.0):
                    return
