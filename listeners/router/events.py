"""Which nova notifications the router keeps, and which host each one belongs to (pure).

The kept events are the `.start` notifications nova sends before a QEMU process of an
instance ends (issue 9 reads the counters then): delete, power_off, reboot, shelve, rescue,
resize and cold migrate (resize.start on the source host), live migration, suspend,
soft_delete, and a resize revert's exists on the destination (the one table:
listeners.nova.protocol.ACTION_EVENTS); and every nova-compute usage audit (``exists``), which
an agent with ``[usage] enrich_nova_exists`` enriches. Both nova formats: legacy
``compute.instance.*`` on topic ``notifications`` and versioned ``instance.*`` on
``versioned_notifications``.

The host is the one listeners.nova_notifications.parse checks: the payload's ``host`` (the
instance's host: for live_migration_pre.start, which the destination publishes, that is still
the source), else, only when the payload has no ``host`` key, the host part of nova's
publisher_id. A null ``host`` is nobody's (nova-api's delete.start of a never-scheduled or
shelved-offloaded instance): ignored, not malformed.
"""
from __future__ import annotations

from typing import Any, Mapping

from lifecycle_stats.exceptions import RejectedMessage
from lifecycle_stats.listeners.nova.protocol import action_of
from lifecycle_stats.listeners.nova_notifications import (
    LEGACY_EXISTS, PROCESS_ENDING, VERSIONED_EXISTS,
)

LEGACY_LIVE_MIGRATION = ("live_migration.pre", "live_migration._post")
VERSIONED_LIVE_MIGRATION = ("live_migration_pre", "live_migration_post")

# Every process-ending announcement the agent parses (nova_notifications.PROCESS_ENDING, from
# the one table hook_protocol.ACTION_EVENTS), and live migration's.
LIFECYCLE_START_EVENTS = frozenset(
    list(PROCESS_ENDING)
    + [f"compute.instance.{action}.start" for action in LEGACY_LIVE_MIGRATION]
    + [f"instance.{action}.start" for action in VERSIONED_LIVE_MIGRATION])
# nova-compute's exists: forwarded to the instance's host so its agent can enrich them.
AUDIT_EVENTS = frozenset({LEGACY_EXISTS, VERSIONED_EXISTS})
ROUTED_EVENTS = LIFECYCLE_START_EVENTS | AUDIT_EVENTS

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


def is_routed(event_type: object) -> bool:
    """A lifecycle announcement or any exists (a revert's among them): what an agent uses."""
    return isinstance(event_type, str) and event_type in ROUTED_EVENTS


def origin_host(event_type: str, publisher_id: object, payload: object) -> str | None:
    """The host the event belongs to; None for nobody's (a null ``host``, or an exists not
    from nova-compute); RejectedMessage when there is none to trust."""
    if not isinstance(payload, Mapping):
        raise RejectedMessage(f"{event_type}: payload must be a dict")
    fields: Any = payload
    if not event_type.startswith("compute."):
        fields = payload.get("nova_object.data")
        if not isinstance(fields, Mapping):
            raise RejectedMessage(f"{event_type}: payload has no nova_object.data dict")
    if event_type in AUDIT_EVENTS and _publisher_host(publisher_id) is None:
        return None  # the agent trusts only nova-compute's exists (nova_notifications)
    if "host" in fields:
        host = fields["host"]
        if host is None:
            return None
    else:
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
