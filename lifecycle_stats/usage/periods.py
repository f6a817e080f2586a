"""Audit periods in nova's `instance_usage_audit_period` syntax: `hour|day|month|year[@N]`.

Same boundaries as nova's `nova.utils.last_completed_audit_period` (read from nova master):
periods start at the beginning (UTC) of the unit, shifted by the offset — `hour@N` at minute
N, `day@N` at N:00, `month@N` on day N (0 means 1), `year@N` on the 1st of month N (0 means
January). A period is completed only once `now` is strictly after its end. Offsets nova would
crash on (month@31 in February) are refused when the option is parsed.

`Ns` (N seconds, 5 to 3600, counted from the Unix epoch) is the agent's own short period for
the demo and tests; nova has no such period, so it cannot match nova's audit.
"""
from __future__ import annotations

import dataclasses
import datetime
import re

from lifecycle_stats.exceptions import ConfigError

UTC = datetime.timezone.utc
_SYNTAX = re.compile(r"^(hour|day|month|year)(@([0-9]+))?$")
_OFFSET_RANGE = {"hour": (0, 59), "day": (0, 23), "month": (0, 28), "year": (0, 12)}
_SECONDS = re.compile(r"^([0-9]+)s$")
SECONDS_RANGE = (5, 3600)  # at least the pre-end poll (closer.PRE_POLL_SECONDS) and a poll


@dataclasses.dataclass(frozen=True)
class AuditPeriod:
    unit: str  # hour, day, month, year; or "s": periods of `offset` seconds
    offset: int

    @property
    def spec(self) -> str:
        if self.unit == "s":
            return f"{self.offset}s"
        return f"{self.unit}@{self.offset}" if self.offset else self.unit

    def last_completed(self, before: datetime.datetime) -> tuple[datetime.datetime,
                                                                 datetime.datetime]:
        """(begin, end) of the newest period that ended strictly before `before`."""
        now = before.astimezone(UTC)
        end = self._boundary_at_or_before(now)
        if end >= now:
            end = self.shift(end, -1)
        return self.shift(end, -1), end

    def current(self, now: datetime.datetime) -> tuple[datetime.datetime, datetime.datetime]:
        """(begin, end) of the period `now` falls in (begin < now <= end, as nova counts)."""
        begin = self.last_completed(now)[1]
        return begin, self.shift(begin, 1)

    def shift(self, boundary: datetime.datetime, periods: int) -> datetime.datetime:
        """The boundary `periods` periods later (negative: earlier)."""
        if self.unit == "s":
            return boundary + datetime.timedelta(seconds=periods * self.offset)
        if self.unit == "hour":
            return boundary + datetime.timedelta(hours=periods)
        if self.unit == "day":
            return boundary + datetime.timedelta(days=periods)
        months = periods * (12 if self.unit == "year" else 1)
        index = boundary.year * 12 + boundary.month - 1 + months
        return boundary.replace(year=index // 12, month=index % 12 + 1)

    def _boundary_at_or_before(self, now: datetime.datetime) -> datetime.datetime:
        """This unit's boundary in `now`'s hour/day/month/year (may be later than now)."""
        if self.unit == "s":
            start = int(now.timestamp()) // self.offset * self.offset
            return datetime.datetime.fromtimestamp(start, UTC)
        if self.unit == "hour":
            return now.replace(minute=self.offset, second=0, microsecond=0)
        if self.unit == "day":
            return now.replace(hour=self.offset, minute=0, second=0, microsecond=0)
        if self.unit == "month":
            return datetime.datetime(now.year, now.month, self.offset or 1, tzinfo=UTC)
        return datetime.datetime(now.year, self.offset or 1, 1, tzinfo=UTC)


def parse(spec: str, option: str = "[usage] audit_period") -> AuditPeriod:
    """An AuditPeriod, or ConfigError naming the option and the bad value."""
    seconds = _SECONDS.match(spec.strip()) if isinstance(spec, str) else None
    if seconds is not None:
        return _seconds(int(seconds.group(1)), spec, option)
    match = _SYNTAX.match(spec.strip()) if isinstance(spec, str) else None
    if match is None:
        raise ConfigError(option, spec, "must be hour, day, month or year, optionally @N "
                                         "(or Ns: N seconds, for demos and tests)")
    unit, offset = match.group(1), int(match.group(3) or 0)
    low, high = _OFFSET_RANGE[unit]
    if not low <= offset <= high:
        raise ConfigError(option, spec, f"offset of {unit} must be between {low} and {high}")
    return AuditPeriod(unit, offset)


def _seconds(length: int, spec: str, option: str) -> AuditPeriod:
    low, high = SECONDS_RANGE
    if not low <= length <= high:
        raise ConfigError(option, spec, f"a period in seconds must be {low} to {high} s long")
    return AuditPeriod("s", length)
