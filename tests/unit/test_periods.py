"""Audit periods: the boundaries nova's last_completed_audit_period gives, for each unit."""
from __future__ import annotations

import datetime

import pytest
from hypothesis import given, strategies as st

from lifecycle_stats.usage import periods
from lifecycle_stats.exceptions import ConfigError

UTC = datetime.timezone.utc


def at(*args) -> datetime.datetime:
    return datetime.datetime(*args, tzinfo=UTC)


@pytest.mark.parametrize("spec, now, begin, end", [
    ("hour", at(2026, 11, 22, 2, 25), at(2026, 11, 22, 1), at(2026, 11, 22, 2)),
    ("hour", at(2026, 11, 22, 2), at(2026, 11, 22, 0), at(2026, 11, 22, 1)),  # not yet done
    ("hour@30", at(2026, 11, 22, 2, 25), at(2026, 11, 22, 0, 30), at(2026, 11, 22, 1, 30)),
    ("hour@30", at(2026, 11, 22, 2, 31), at(2026, 11, 22, 1, 30), at(2026, 11, 22, 2, 30)),
    ("day", at(2026, 11, 22, 2), at(2026, 11, 21), at(2026, 11, 22)),
    ("day@18", at(2026, 11, 22, 2), at(2026, 11, 20, 18), at(2026, 11, 21, 18)),
    ("month", at(2026, 11, 22), at(2026, 10, 1), at(2026, 11, 1)),
    ("month", at(2026, 1, 1), at(2025, 11, 1), at(2025, 12, 1)),
    ("month@15", at(2026, 1, 10), at(2025, 11, 15), at(2025, 12, 15)),
    ("month@15", at(2026, 1, 16), at(2025, 12, 15), at(2026, 1, 15)),
    ("year", at(2026, 11, 22), at(2025, 1, 1), at(2026, 1, 1)),
    ("year@3", at(2026, 2, 1), at(2024, 3, 1), at(2025, 3, 1)),
    ("year@3", at(2026, 3, 2), at(2025, 3, 1), at(2026, 3, 1)),
    ("5s", at(2026, 11, 22, 2, 0, 7), at(2026, 11, 22, 2), at(2026, 11, 22, 2, 0, 5)),
    ("5s", at(2026, 11, 22, 2, 0, 5), at(2026, 11, 22, 1, 59, 55), at(2026, 11, 22, 2)),
    ("3600s", at(2026, 11, 22, 2, 25), at(2026, 11, 22, 1), at(2026, 11, 22, 2)),
])
def test_last_completed_matches_nova(spec, now, begin, end):
    assert periods.parse(spec).last_completed(now) == (begin, end)


@pytest.mark.parametrize("spec", ["week", "hour@60", "day@24", "month@29", "year@13", "",
                                  "hour@", "hour@-1", "Hour", "4s", "0s", "3601s", "5 s", "s"])
def test_bad_specs_fail_naming_the_option(spec):
    with pytest.raises(ConfigError, match=r"\[usage\] audit_period"):
        periods.parse(spec)


@given(spec=st.sampled_from(["hour", "hour@7", "day", "day@5", "month", "month@28", "year",
                             "year@12", "5s", "7s", "3600s"]),
       seconds=st.integers(0, 40 * 365 * 86400))
def test_current_period_follows_the_last_completed_one(spec, seconds):
    period = periods.parse(spec)
    now = at(2000, 1, 1) + datetime.timedelta(seconds=seconds, microseconds=1)
    begin, end = period.current(now)
    assert begin < now <= end
    assert period.last_completed(now)[1] == begin
    assert period.last_completed(end + datetime.timedelta(microseconds=1)) == (begin, end)
    assert period.shift(begin, 1) == end


def test_a_period_in_seconds_keeps_its_spec():
    assert periods.parse("5s").spec == "5s" and periods.parse("hour@7").spec == "hour@7"
