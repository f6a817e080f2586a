"""What a recording's entries mean to the replay (player.py), and whether it can use them.

The recorder's opening sync, the records an entry carries (its metadata answer, its libvirt
event), which entries answer which (`cause`), and the check that decodes every entry once
before anything runs, so a bad one fails the replay with its offset and no partial output.
"""
from __future__ import annotations

import collections
from typing import Any

from lifecycle_stats.records import LifecycleEvent
from lifecycle_stats.replay import format as fmt
from lifecycle_stats.replay.standins import NOT_NOVA, UNUSABLE


def leading_sync(entries: list[fmt.Entry]) -> int:
    """How many entries open the recording with the recorder's sync (its metadata reads of
    every domain there was, caused by nothing)."""
    count = 0
    while count < len(entries) and entries[count].source == fmt.INSTANCE \
            and "cause" not in entries[count].data:
        count += 1
    return count


def metadata_of(data: dict[str, Any]):
    """An `instance` entry's answer: InstanceInfo; NOT_NOVA; why nova's metadata was unusable
    (registry.REJECTED / MALFORMED); or None for a gone domain."""
    if data.get("gone"):
        return None
    info = data.get("info")
    if info is not None:
        return fmt.info_from_data(info)
    unusable = data.get("unusable")
    if unusable is not None and unusable not in UNUSABLE:
        raise ValueError(f"unusable must be one of {UNUSABLE}, got {unusable!r}")
    return unusable or NOT_NOVA


def lifecycle_event(entry: fmt.Entry, now) -> LifecycleEvent:
    data = entry.data
    return LifecycleEvent(instance_id=data["instance_id"], domain_name=data["domain_name"],
                          event=data["event"], detail=data["detail"], received_at=now)


def answers_by_cause(recording: fmt.Recording) -> dict[int, list[fmt.Entry]]:
    answers: dict[int, list[fmt.Entry]] = collections.defaultdict(list)
    for entry in recording.entries:
        if "cause" not in entry.data:
            continue
        cause = entry.data["cause"]
        if not isinstance(cause, int) or isinstance(cause, bool) or not 0 <= cause < entry.index:
            raise fmt.RecordingError(recording.path, entry.offset,
                                     f"corrupt: entry {entry.index} answers entry {cause!r}, "
                                     "which does not precede it")
        answers[cause].append(entry)
    return answers


def check_entries(recording: fmt.Recording) -> None:
    """Decode every entry's records once before anything runs, so a bad entry fails the
    replay with its offset and no partial output."""
    for entry in recording.entries:
        try:
            _check(entry)
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise fmt.RecordingError(recording.path, entry.offset,
                                     f"corrupt: bad {entry.source} entry {entry.index}: "
                                     f"{type(exc).__name__}: {exc}") from None


def _check(entry: fmt.Entry) -> None:
    data = entry.data
    if entry.source == fmt.READING:
        str(data["instance_id"])
        if data.get("reading") is not None:
            fmt.reading_from_data(data["reading"])
    elif entry.source == fmt.INSTANCE:
        str(data["instance_id"])
        metadata_of(data)
    elif entry.source == fmt.POLL:
        for reading in data["readings"]:
            fmt.reading_from_data(reading)
    elif entry.source == fmt.LIBVIRT:
        for key in ("instance_id", "domain_name", "event", "detail"):
            if not isinstance(data[key], str):
                raise TypeError(f"{key} must be a string")
    elif entry.source == fmt.AGENT and data.get("state") not in ("stopped", "started"):
        raise ValueError(f"agent state {data.get('state')!r}")


def check(recording: fmt.Recording) -> None:
    """Raise fmt.RecordingError (with the offset) for any entry the replay could not use."""
    check_entries(recording)
    answers_by_cause(recording)
