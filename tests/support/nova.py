"""nova's side for the tests and benchmarks: its announcements, its usage audit, the ids the
agent must derive from them.

The shapes of what nova sends are the demo's (lifecycle_stats/cmd/demo_nova.py), so the demo,
the tests and the benchmarks play one nova.
"""
from __future__ import annotations

from lifecycle_stats.cmd.demo_nova import (  # noqa: F401  (re-exported for the tests)
    event_type_of, legacy_payload, publish_start as publish_delete_start, request_id, send,
    versioned_payload,
)
from lifecycle_stats.listeners.nova_notifications import LEGACY_DELETE_START as LEGACY
from lifecycle_stats.publishing import payloads
from lifecycle_stats.records import DeleteTrigger, utcnow
from lifecycle_stats.cmd.demo_nova import NovaGuest


def expected_message_id(guest: NovaGuest, request: str | None = None) -> str:
    """The delete.samples message_id the agent must publish for that delete of guest."""
    trigger = DeleteTrigger(instance_id=guest.instance_id, event_type=LEGACY, host=None,
                            received_at=utcnow(), attempt_id=request or request_id(guest))
    return payloads.delete_message_id(trigger)


def publish_exists(transport, guest: NovaGuest, host: str, begin, end, *,
                   versioned: bool = False, exchange: str = "nova",
                   topic: str | None = None) -> None:
    """nova's own usage audit of guest for (begin, end] (`_instance_usage_audit`)."""
    if versioned:
        payload = versioned_payload(guest, host)
        payload["nova_object.name"], payload["nova_object.version"] = (
            "InstanceExistsPayload", "2.1")
        payload["nova_object.data"]["audit_period"] = {
            "nova_object.name": "AuditPeriodPayload", "nova_object.version": "1.0",
            "nova_object.data": {"audit_period_beginning": begin.strftime("%Y-%m-%dT%H:%M:%SZ"),
                                 "audit_period_ending": end.strftime("%Y-%m-%dT%H:%M:%SZ")}}
        args = ("versioned_notifications", f"nova-compute:{host}", "instance.exists")
    else:
        payload = {**legacy_payload(guest, host),
                   "audit_period_beginning": str(begin.replace(tzinfo=None)),
                   "audit_period_ending": str(end.replace(tzinfo=None))}
        args = ("notifications", f"compute.{host}", "compute.instance.exists")
    send(transport, exchange, topic or args[0], args[1], args[2], payload, {})
