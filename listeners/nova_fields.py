"""Bounded readers of the fields of nova's payloads (pure). The payload came from the bus or
from inside nova: every value is checked for type and size before it is kept, and anything
else raises RejectedMessage naming the key; error texts show values only through _short.
"""
from __future__ import annotations

import datetime
import uuid
from typing import Any, Mapping

from lifecycle_stats.exceptions import RejectedMessage

MAX_KEYS = 1024  # nova's payloads have ~40 keys; more is not nova
MAX_STRING = 255  # nova's own column limit for display_name, host, flavor name
MAX_COUNT = 2**63 - 1


def timestamp(value: object, key: str) -> datetime.datetime:
    """nova's "2026-11-22 01:00:00" (legacy str()) or "2026-11-22T01:00:00Z" (versioned)."""
    if not isinstance(value, str) or len(value) > 40:
        raise RejectedMessage(f"{key} must be a date-time string, got {short(value)}")
    try:
        moment = datetime.datetime.fromisoformat(value)
    except ValueError:
        raise RejectedMessage(f"{key} is not a date-time: {short(value)}") from None
    if moment.tzinfo is None:  # nova's naive datetimes are UTC
        return moment.replace(tzinfo=datetime.timezone.utc)
    try:
        return moment.astimezone(datetime.timezone.utc)
    except OverflowError:  # an offset that moves it past year 1 or 9999
        raise RejectedMessage(f"{key} is out of range in UTC: {short(value)}") from None


def mapping(value: object, where: str) -> Mapping[str, Any]:
    if not isinstance(value, dict):
        raise RejectedMessage(f"{where} must be a dict, got {type(value).__name__}")
    if len(value) > MAX_KEYS:
        raise RejectedMessage(f"{where} has {len(value)} keys, more than {MAX_KEYS}")
    return value


def instance_uuid(fields: Mapping[str, Any], key: str) -> str:
    value = fields.get(key)
    if not isinstance(value, str):
        raise RejectedMessage(f"{key} must be a UUID string, got {short(value)}")
    if len(value) > 45:
        raise RejectedMessage(f"{key} is not a UUID: {len(value)} characters")
    try:
        return str(uuid.UUID(value))
    except ValueError:
        raise RejectedMessage(f"{key} is not a UUID: {short(value)}") from None


def text(value: object, key: str, *, truncate: bool) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise RejectedMessage(f"{key} must be a string, got {type(value).__name__}")
    if len(value) > MAX_STRING:
        if not truncate:
            raise RejectedMessage(f"{key} is {len(value)} characters, more than {MAX_STRING}")
        value = value[:MAX_STRING]
    return encodable(value, key, lenient=truncate)


def encodable(value: str, key: str, *, lenient: bool) -> str:
    """JSON may carry lone surrogates ("\\ud800" escapes, kept by json.loads), which no UTF-8
    spool, file or bus can encode: a lenient field gets U+FFFD for each, others reject."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        if not lenient:
            raise RejectedMessage(f"{key} is not valid Unicode (lone surrogates)") from None
        return "".join("\ufffd" if "\ud800" <= ch <= "\udfff" else ch for ch in value)
    return value


def count(value: object, key: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise RejectedMessage(f"{key} must be an integer, got {type(value).__name__}")
    if not 0 <= value <= MAX_COUNT:
        raise RejectedMessage(f"{key} must be between 0 and {MAX_COUNT}, got {short(value)}")
    return value


def short(value: object) -> str:
    """A bounded repr for error messages (the value came from the bus)."""
    if isinstance(value, str):
        return repr(value[:60]) + ("..." if len(value) > 60 else "")
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 64:
        return f"<int of {value.bit_length()} bits>"
    if isinstance(value, (int, float, bool, type(None))):
        return repr(value)
    return f"<{type(value).__name__}>"
