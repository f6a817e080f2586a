"""Publish delete.start the way nova-compute does, for the demo, the tests and benchmarks.

Legacy `compute.instance.delete.start` (publisher `compute.<host>`, topic `notifications`) and
versioned `instance.delete.start` (publisher `nova-compute:<host>`, topic
`versioned_notifications`), both in nova's exchange. Field sets follow nova's notification
samples; only what a consumer of delete.start uses is filled in.
"""
from __future__ import annotations

import uuid

from lifecycle_stats.listeners.nova_notifications import LEGACY_DELETE_START as LEGACY
from lifecycle_stats.listeners.nova_notifications import VERSIONED_DELETE_START as VERSIONED
from lifecycle_stats.records import utcnow
from lifecycle_stats.testing.guests import NovaGuest


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


def versioned_payload(guest: NovaGuest, host: str) -> dict:
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
        },
    }


def publish_delete_start(transport, guest: NovaGuest, host: str, *, versioned: bool = False,
                         exchange: str = "nova", topic: str | None = None):
    """Send one delete.start for guest on host, as nova-compute on that host would.
    topic defaults to nova's (notifications / versioned_notifications). Returns the envelope
    timestamp (aware UTC), which oslo.messaging writes as str(utcnow()): naive, with a space."""
    import oslo_messaging

    if versioned:
        default_topic, event_type, publisher = ("versioned_notifications", VERSIONED,
                                                f"nova-compute:{host}")
        payload = versioned_payload(guest, host)
    else:
        default_topic, event_type, publisher = "notifications", LEGACY, f"compute.{host}"
        payload = legacy_payload(guest, host)
    topic = topic or default_topic
    sent_at = utcnow()
    message = {"message_id": str(uuid.uuid4()), "publisher_id": publisher,
               "event_type": event_type, "priority": "INFO", "payload": payload,
               "timestamp": str(sent_at.replace(tzinfo=None))}
    target = oslo_messaging.Target(exchange=exchange, topic=f"{topic}.info")
    transport._send_notification(target, {}, message, version=2.0, retry=3)
    return sent_at
