"""Audit periods in nova's `instance_usage_audit_period` syntax: `hour|day|month|year[@N]`.

Same boundaries as nova's `nova.utils.last_completed_audit_period` (read from nova master):
periods start at the beginning (UTC) of the unit, shifted by the offset — `hour@N` at minute
N, `day@N` at N:00, `month@N` on day N (0 means 1), `year@N` on the 1st of month N (0 means
January). A period is completed only once `now` is strictly after its end. Offsets nova would
crash on (month@31 in February) are refused when the option is parsed.
"""
from __future__ import annotations

import dataclasses
import datetime
import re

from lifecycle_stats.exceptions import ConfigError

UTC = datetime.timezone.utc
_SYNTAX = re.compile(r"^(hour|day|month|year)(@([0-9]+))?$")
_OFFSET_RANGE = {"hour": (0, 59), "day": (0, 23), "month": (0, 28), "year": (0, 12)}


@dataclasses.dataclass(frozen=True)
class AuditPeriod:
    unit: str
    offset: int

    @property
    def spec(self) -> str:
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
        if self.unit == "hour":
            return boundary + datetime.timedelta(hours=periods)
        if self.unit == "day":
            return boundary + datetime.timedelta(days=periods)
        months = periods * (12 if self.unit == "year" else 1)
        index = boundary.year * 12 + boundary.month - 1 + months
        return boundary.replace(year=index // 12, month=index % 12 + 1)

    def _boundary_at_or_before(self, now: datetime.datetime) -> datetime.datetime:
        """This unit's boundary in `now`'s hour/day/month/year (may be later than now)."""
        if self.unit == "hour":
            return now.replace(minute=self.offset, second=0, microsecond=0)
        if self.unit == "day":
            return now.replace(hour=self.offset, minute=0, second=0, microsecond=0)
        if self.unit == "month":
            return datetime.datetime(now.year, now.month, self.offset or 1, tzinfo=UTC)
        return datetime.datetime(now.year, self.offset or 1, 1, tzinfo=UTC)


def parse(spec: str, option: str = "[usage] audit_period") -> AuditPeriod:
    """An AuditPeriod, or ConfigError naming the option and the bad value."""
    match = _SYNTAX.match(spec.strip()) if isinstance(spec, str) else None
    if match is None:
        raise ConfigError(option, spec, "must be hour, day, month or year, optionally @N")
    unit, offset = match.group(1), int(match.group(3) or 0)
    low, high = _OFFSET_RANGE[unit]
    if not low <= offset <= high:
        raise ConfigError(option, spec, f"offset of {unit} must be between {low} and {high}")
    return AuditPeriod(unit, offset)
