"""Samples in Ceilometer's own wire shape: what its polling agent publishes.

Ceilometer's meter_message_from_counter (ceilometer/publisher/utils.py) turns a Sample into a
flat dict with counter_* names; its polling agent sends lists of them as `telemetry.polling`
notifications, its UDP publisher sends one per msgpack datagram. The conduits in emitters/
(ceilometer, udp, file) publish exactly these, signed, with our deterministic message_id
(which Ceilometer's telemetry.polling endpoint keeps as the Sample id).
"""
from __future__ import annotations

from typing import Any, Iterator, Mapping

from lifecycle_stats.publishing import signing
from lifecycle_stats.records import Notification

TELEMETRY_POLLING = "telemetry.polling"


def meter_message(sample: Mapping[str, Any], secret: str) -> dict[str, Any]:
    """One sample (a delete.samples payload element) as a signed meter message."""
    message = {
        "source": sample["source"],
        "counter_name": sample["name"],
        "counter_type": sample["type"],
        "counter_unit": sample["unit"],
        "counter_volume": sample["volume"],
        "user_id": sample["user_id"],
        "user_name": None,
        "project_id": sample["project_id"],
        "project_name": None,
        "resource_id": sample["resource_id"],
        "timestamp": sample["timestamp"],
        "resource_metadata": dict(sample["resource_metadata"]),
        "message_id": sample["message_id"],
        "monotonic_time": None,
    }
    return signing.signed(message, secret)


def from_notification(notification: Notification, secret: str) -> Iterator[dict[str, Any]]:
    """The meter messages of every sample a notification carries (none for `unavailable`)."""
    for sample in notification.payload.get("samples", ()):
        yield meter_message(sample, secret)
