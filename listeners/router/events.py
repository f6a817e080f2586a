"""Which nova notifications the router keeps, and which host each one belongs to (pure).

The kept events are the `.start` notifications nova sends before a QEMU process of an
instance ends (issue 9 reads the counters then): delete, power_off, reboot, shelve, rescue,
resize and cold migrate (resize.start on the source host), live migration, suspend,
soft_delete, and a resize revert's exists on the destination (the one table:
listeners.nova.protocol.ACTION_EVENTS; no other exists is kept). Both nova
formats: legacy ``compute.instance.*`` on topic ``notifications`` and versioned ``instance.*``
on ``versioned_notifications``.

The host is the one listeners.nova_notifications.parse checks: the payload's ``host`` (the
instance's host: for live_migration_pre.start, which the destination publishes, that is still
the source), else the host part of nova's publisher_id.
"""
from __future__ import annotations

from typing import Any, Mapping

from lifecycle_stats.exceptions import RejectedMessage
from lifecycle_stats.listeners.nova.protocol import action_of
from lifecycle_stats.listeners.nova_notifications import PROCESS_ENDING

LEGACY_LIVE_MIGRATION = ("live_migration.pre", "live_migration._post")
VERSIONED_LIVE_MIGRATION = ("live_migration_pre", "live_migration_post")

# Every process-ending announcement the agent parses (nova_notifications.PROCESS_ENDING, from
# the one table hook_protocol.ACTION_EVENTS), and live migration's.
LIFECYCLE_START_EVENTS = frozenset(
    list(PROCESS_ENDING)
    + [f"compute.instance.{action}.start" for action in LEGACY_LIVE_MIGRATION]
    + [f"instance.{action}.start" for action in VERSIONED_LIVE_MIGRATION])

PUBLISHER_PREFIXES = ("compute.", "nova-compute:")
ROUTED_TOPIC_PREFIX = "lifecycle_stats."
PRIORITY_SUFFIX = ".info"  # oslo.messaging appends the priority to a notification topic
MAX_ROUTING_KEY = 255  # AMQP short string


def host_topic(host: str) -> str:
    """The oslo.messaging topic a host's agent listens on in router mode."""
    return ROUTED_TOPIC_PREFIX + host


def routing_key(host: str) -> str:
    """The routing key the router publishes a host's events with (topic + priority)."""
    key = host_topic(host) + PRIORITY_SUFFIX
    if any(ch in host for ch in "*#") or len(key.encode("utf-8", "replace")) > MAX_ROUTING_KEY:
        raise RejectedMessage(f"host {host[:60]!r} cannot be a routing key")
    return key


def is_lifecycle_start(event_type: object, payload: object = None) -> bool:
    """A process-ending announcement the agent reads at (hook_protocol.action_of: nova's
    exists only on a resize revert's destination), or live migration's .start."""
    if not isinstance(event_type, str) or event_type not in LIFECYCLE_START_EVENTS:
        return False
    return event_type not in PROCESS_ENDING or action_of(event_type, payload) is not None


def origin_host(event_type: str, publisher_id: object, payload: object) -> str:
    """The host the event belongs to; RejectedMessage when there is none to trust."""
    if not isinstance(payload, Mapping):
        raise RejectedMessage(f"{event_type}: payload must be a dict")
    fields: Any = payload
    if not event_type.startswith("compute."):
        fields = payload.get("nova_object.data")
        if not isinstance(fields, Mapping):
            raise RejectedMessage(f"{event_type}: payload has no nova_object.data dict")
    host = fields.get("host")
    if host is None:
        host = _publisher_host(publisher_id)
    if not isinstance(host, str) or not host.strip():
        raise RejectedMessage(f"{event_type}: no host in the payload or publisher_id")
    return host


def _publisher_host(publisher_id: object) -> str | None:
    if not isinstance(publisher_id, str):
        return None
    for prefix in PUBLISHER_PREFIXES:
        if publisher_id.startswith(prefix):
            return publisher_id[len(prefix):]
    return None
