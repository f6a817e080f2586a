"""Publish delete.start the way nova-compute does, for the demo, the tests and benchmarks.

Legacy `compute.instance.delete.start` (publisher `compute.<host>`, topic `notifications`) and
versioned `instance.delete.start` (publisher `nova-compute:<host>`, topic
`versioned_notifications`), both in nova's exchange. Field sets follow nova's notification
samples; only what a consumer of delete.start uses is filled in.
"""
from __future__ import annotations

import uuid

from lifecycle_stats.listeners.nova_notifications import LEGACY_DELETE_START as LEGACY
from lifecycle_stats.listeners.nova_notifications import (
    LEGACY_PROCESS_ENDING, VERSIONED_PROCESS_ENDING,
)
from lifecycle_stats.publishing import payloads
from lifecycle_stats.records import DeleteTrigger, utcnow
from lifecycle_stats.testing.guests import NovaGuest


def request_id(guest: NovaGuest) -> str:
    """The request id of "the" delete of guest: nova puts the delete API request's id in the
    context of both announcements (and in the versioned payload). A retried delete is a new
    request: pass another id to publish_delete_start."""
    return "req-" + str(uuid.uuid5(uuid.NAMESPACE_URL, guest.instance_id))


def expected_message_id(guest: NovaGuest, request: str | None = None) -> str:
    """The delete.samples message_id the agent must publish for that delete of guest."""
    trigger = DeleteTrigger(instance_id=guest.instance_id, event_type=LEGACY, host=None,
                            received_at=utcnow(), attempt_id=request or request_id(guest))
    return payloads.delete_message_id(trigger)


def legacy_payload(guest: NovaGuest, host: str) -> dict:
    return {
        "instance_id": guest.instance_id, "tenant_id": guest.project_id,
        "user_id": guest.user_id, "display_name": guest.display_name, "host": host,
        "node": host, "hostname": guest.display_name, "instance_type": guest.flavor_name,
        "memory_mb": guest.memory_mb, "vcpus": guest.vcpus, "root_gb": guest.root_gb,
        "ephemeral_gb": guest.ephemeral_gb, "disk_gb": guest.root_gb + guest.ephemeral_gb,
        "state": "active", "state_description": "deleting", "image_ref_url": guest.image_ref,
        "created_at": "2026-11-21 09:00:00+00:00", "launched_at": "2026-11-21T09:00:05.000000",
        "deleted_at": "", "metadata": {}, "availability_zone": "nova",
    }


def versioned_payload(guest: NovaGuest, host: str, request: str | None = None) -> dict:
    flavor = {
        "nova_object.name": "FlavorPayload", "nova_object.namespace": "nova",
        "nova_object.version": "1.4",
        "nova_object.data": {"name": guest.flavor_name, "memory_mb": guest.memory_mb,
                             "vcpus": guest.vcpus, "root_gb": guest.root_gb,
                             "ephemeral_gb": guest.ephemeral_gb, "swap": guest.swap_mb},
    }
    return {
        "nova_object.name": "InstanceActionPayload", "nova_object.namespace": "nova",
        "nova_object.version": "1.8",
        "nova_object.data": {
            "uuid": guest.instance_id, "host": host, "node": host,
            "tenant_id": guest.project_id, "user_id": guest.user_id,
            "display_name": guest.display_name, "flavor": flavor, "state": "active",
            "task_state": "deleting", "power_state": "running", "image_uuid": guest.image_ref,
            "request_id": request or request_id(guest),
        },
    }


def event_type_of(action: str, versioned: bool) -> str:
    """nova's .start event type of a process-ending action (delete, power_off, reboot, ...)."""
    table = VERSIONED_PROCESS_ENDING if versioned else LEGACY_PROCESS_ENDING
    return next(event for event, name in table.items() if name == action)


def publish_delete_start(transport, guest: NovaGuest, host: str | None, *,
                         versioned: bool = False, exchange: str = "nova",
                         topic: str | None = None, request: str | None = None,
                         action: str = "delete"):
    """Send one delete.start (or another process-ending action's .start) for guest on host,
    as nova-compute on that host would (host None: as nova-api does for an instance no host
    holds). topic defaults to nova's (notifications / versioned_notifications); request is the
    request's id. Returns the envelope timestamp (aware UTC), which oslo.messaging writes as
    str(utcnow()): naive, with a space."""
    if versioned:
        default_topic, publisher = "versioned_notifications", f"nova-compute:{host}"
        payload = versioned_payload(guest, host, request)
    else:
        default_topic, publisher = "notifications", f"compute.{host}"
        payload = legacy_payload(guest, host)
    return _send(transport, exchange, topic or default_topic, publisher,
                 event_type_of(action, versioned), payload,
                 {"request_id": request or request_id(guest)})


def publish_exists(transport, guest: NovaGuest, host: str, begin, end, *,
                   versioned: bool = False, exchange: str = "nova",
                   topic: str | None = None, task_state: str | None = None) -> None:
    """nova's own usage audit of guest for (begin, end] (`_instance_usage_audit`); with
    task_state "resize_reverting", the exists revert_resize sends on the destination before
    it destroys the domain there."""
    if versioned:
        payload = versioned_payload(guest, host)
        payload["nova_object.data"]["task_state"] = task_state
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
                   "audit_period_ending": str(end.replace(tzinfo=None)),
                   "state_description": task_state or ""}
        args = ("notifications", f"compute.{host}", "compute.instance.exists")
    _send(transport, exchange, topic or args[0], args[1], args[2], payload, {})


def _send(transport, exchange: str, topic: str, publisher: str, event_type: str,
          payload: dict, context: dict):
    import oslo_messaging

    sent_at = utcnow()
    message = {"message_id": str(uuid.uuid4()), "publisher_id": publisher,
               "event_type": event_type, "priority": "INFO", "payload": payload,
               "timestamp": str(sent_at.replace(tzinfo=None))}
    target = oslo_messaging.Target(exchange=exchange, topic=f"{topic}.info")
    transport._send_notification(target, context, message, version=2.0, retry=3)
    return sent_at
