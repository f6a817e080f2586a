"""nova's side for the tests and benchmarks: its announcements, its usage audit, the ids the
agent must derive from them, and bare delete.start payloads for the parser, listener and hook
tests (legacy_start_payload / versioned_start_payload, shaped as nova's own samples).

The shapes of what nova sends are the demo's (lifecycle_stats/cmd/demo_nova.py), so the demo,
the tests and the benchmarks play one nova.
"""
from __future__ import annotations

import copy

from oslo_config import cfg
from oslo_messaging import opts as messaging_opts

from lifecycle_stats.cmd.demo_nova import (  # noqa: F401  (re-exported for the tests)
    event_type_of, legacy_payload, publish_start as publish_delete_start, request_id, send,
    versioned_payload,
)
from lifecycle_stats.listeners.nova_notifications import LEGACY_DELETE_START as LEGACY
from lifecycle_stats.publishing import payloads
from lifecycle_stats.records import StopAnnouncement, utcnow
from lifecycle_stats.cmd.demo_nova import NovaGuest


def expected_message_id(guest: NovaGuest, request: str | None = None) -> str:
    """The delete.samples message_id the agent must publish for that delete of guest."""
    trigger = StopAnnouncement(instance_id=guest.instance_id, event_type=LEGACY, host=None,
                            received_at=utcnow(), attempt_id=request or request_id(guest))
    return payloads.delete_message_id(trigger)


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
    send(transport, exchange, topic or args[0], args[1], args[2], payload, {})


# -- bare payloads -----------------------------------------------------------------------------

IDENTITY = {  # what the parser takes from either payload below, field by field
    "tenant_id": "6f70656e737461636b20342065766572", "user_id": "fake",
    "display_name": "some-server", "instance_type": "m1.tiny", "memory_mb": 512,
    "vcpus": 1, "root_gb": 1, "ephemeral_gb": 0,
}
DROP = object()  # as a change: leave the field out


def legacy_start_payload(instance_id: str, host, **changes) -> dict:
    """A compute.instance.delete.start payload shaped as nova's info_from_instance; host (or
    any change, the instance id too) DROP leaves the field out."""
    payload = {
        "node": "fake-mini", "state": "active",
        "state_description": "deleting", "tenant_id": IDENTITY["tenant_id"], "user_id": "fake",
        "display_name": "some-server", "instance_type": "m1.tiny", "instance_type_id": 1,
        "instance_flavor_id": "1", "memory_mb": 512, "disk_gb": 1, "vcpus": 1, "root_gb": 1,
        "ephemeral_gb": 0, "image_ref_url": "http://glance/images/x", "metadata": {},
        "launched_at": "2012-10-29T13:42:11.000000", "reservation_id": "r-npxv0e40",
    }
    return changed(payload, {"instance_id": instance_id, "host": host, **changes})


def versioned_start_payload(instance_id: str, host, **changes) -> dict:
    """An instance.delete.start payload shaped as nova's InstanceActionPayload 1.x; changes
    apply to its nova_object.data."""
    flavor = {"nova_object.name": "FlavorPayload", "nova_object.namespace": "nova",
              "nova_object.version": "1.4",
              "nova_object.data": {"flavorid": "a22d", "name": "m1.tiny", "root_gb": 1,
                                   "vcpus": 1, "ephemeral_gb": 0, "memory_mb": 512, "swap": 0,
                                   "extra_specs": {}, "is_public": True}}
    data = {"node": "fake-mini", "state": "active",
            "task_state": "deleting", "tenant_id": IDENTITY["tenant_id"], "user_id": "fake",
            "display_name": "some-server", "flavor": flavor, "ip_addresses": [],
            "metadata": {}, "fault": None, "block_devices": []}
    return {"nova_object.name": "InstanceActionPayload", "nova_object.namespace": "nova",
            "nova_object.version": "1.8",
            "nova_object.data": changed(data, {"uuid": instance_id, "host": host, **changes})}


def changed(payload: dict, changes: dict) -> dict:
    payload = copy.deepcopy(payload)
    for key, value in changes.items():
        if value is DROP:
            payload.pop(key, None)
        else:
            payload[key] = value
    return payload


def messaging_conf(exchange: str) -> cfg.ConfigOpts:
    """A private ConfigOpts whose control_exchange (where Notifiers publish) is exchange."""
    conf = cfg.ConfigOpts()
    for group, opts in messaging_opts.list_opts():
        conf.register_opts(opts, group=group)
    conf([], project="lifecycle-stats-test", default_config_files=[])
    conf.set_override("control_exchange", exchange)  # nova's control_exchange is "nova"
    return conf
