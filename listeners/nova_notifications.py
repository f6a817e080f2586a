"""Nova's delete announcements → StopAnnouncement records (pure: no oslo.messaging here).

Nova announces a delete twice, in two formats (``[notifications] notification_format``):

- legacy ``compute.instance.delete.start`` on topic ``notifications``, publisher_id
  ``compute.<host>``; the payload is a flat dict (``instance_id``, ``host``, ``tenant_id``,
  ``user_id``, ``display_name``, ``instance_type`` (the flavor name), ``memory_mb``, ...).
- versioned ``instance.delete.start`` on topic ``versioned_notifications``, publisher_id
  ``nova-compute:<host>``; the payload is a serialized ``InstanceActionPayload`` nova object
  whose ``nova_object.data`` holds ``uuid``, ``host``, ``tenant_id``, ``user_id``,
  ``display_name`` and a ``FlavorPayload`` under ``flavor``.

Nova announces the other actions that end a QEMU process the same way, before doing them
(power_off, reboot, rebuild, shelve, shelve_offload, rescue, unrescue, resize on the source
host, suspend, soft_delete; a resize revert on the destination by its exists):
``PROCESS_ENDING`` maps each event type, legacy and versioned, to its action
(hook_protocol.ACTION_EVENTS, the one table). ``parse`` turns any of them into one
``StopAnnouncement`` (its ``action`` names the action; identity uses the legacy names), nova's
own usage audit (legacy ``compute.instance.exists``, versioned ``instance.exists``) into an
``AuditWindow``, and returns None for anything else or another host; ``parse_all`` returns
both records of an exists that also announces a resize revert. Input it
cannot trust raises ``RejectedMessage`` naming what is wrong. The work is bounded: only a
fixed path of at most three nested dicts is looked at, dict sizes and kept strings are capped.
"""
from __future__ import annotations

import datetime
from typing import Any, Mapping

from lifecycle_stats.exceptions import RejectedMessage
from lifecycle_stats.listeners.nova import protocol as hook_protocol
from lifecycle_stats.listeners import nova_fields as field
from lifecycle_stats.listeners.nova_fields import MAX_COUNT, MAX_KEYS, MAX_STRING  # noqa: F401
from lifecycle_stats.records import AuditWindow, StopAnnouncement

LEGACY_DELETE_START = "compute.instance.delete.start"
VERSIONED_DELETE_START = "instance.delete.start"
# event type -> action, for every process-ending .start (hook_protocol holds the one list)
LEGACY_PROCESS_ENDING = {event: action for event, (action, form)
                         in hook_protocol.START_EVENTS.items() if form == hook_protocol.LEGACY}
VERSIONED_PROCESS_ENDING = {event: action for event, (action, form)
                            in hook_protocol.START_EVENTS.items()
                            if form == hook_protocol.VERSIONED}
PROCESS_ENDING = {**LEGACY_PROCESS_ENDING, **VERSIONED_PROCESS_ENDING}  # event type -> action
LEGACY_EXISTS = "compute.instance.exists"  # also resize_revert's, with its task_state
VERSIONED_EXISTS = "instance.exists"
VERSIONED_OBJECTS = frozenset({"InstanceActionPayload", "InstanceActionRescuePayload",
                               "InstanceActionRebuildPayload"})
VERSIONED_MAJOR = "1"
EXISTS_OBJECT, EXISTS_MAJOR = "InstanceExistsPayload", "2"

LEGACY_PUBLISHER_PREFIX = "compute."
VERSIONED_PUBLISHER_PREFIX = "nova-compute:"

INT_FIELDS = ("memory_mb", "vcpus", "root_gb", "ephemeral_gb")
IDENTITY_FIELDS = ("tenant_id", "user_id", "display_name", "instance_type") + INT_FIELDS


def classify(event_type: object) -> str:
    """"legacy" / "versioned" for the forms of nova's events parsed here, else "other"."""
    if not isinstance(event_type, str):
        return "other"
    if event_type in LEGACY_PROCESS_ENDING or event_type == LEGACY_EXISTS:
        return "legacy"
    if event_type in VERSIONED_PROCESS_ENDING or event_type == VERSIONED_EXISTS:
        return "versioned"
    return "other"


def envelope_time(metadata: object) -> datetime.datetime | None:
    """When nova sent the message: the envelope's `timestamp` (oslo.messaging writes
    str(utcnow()), naive UTC). None when absent or unreadable: the read time is used then."""
    value = metadata.get("timestamp") if isinstance(metadata, Mapping) else None
    if not isinstance(value, str):
        return None
    try:
        moment = datetime.datetime.fromisoformat(value)
        if moment.tzinfo is None:
            return moment.replace(tzinfo=datetime.timezone.utc)
        # in UTC now: an offset that moves it past year 1 or 9999 cannot be stored (the
        # capture record keeps seconds since the epoch), and would lose a captured delete
        return moment.astimezone(datetime.timezone.utc)
    except (ValueError, OverflowError):
        return None


def parse(event_type: str, publisher_id: object, payload: object, *, host: str,
          received_at: datetime.datetime, context: object = None,
          announced_at: datetime.datetime | None = None,
          actions: frozenset[str] | None = None) -> StopAnnouncement | AuditWindow | None:
    """The StopAnnouncement (a process-ending .start of one of ``actions``, default all) or
    AuditWindow (nova's exists) of an instance on ``host``, else None.

    Raises RejectedMessage when such a message's payload is malformed.
    """
    if not isinstance(host, str) or not host:
        raise ValueError(f"host must be a non-empty string, got {host!r}")
    trigger = parse_any(event_type, publisher_id, payload, received_at=received_at,
                        context=context, announced_at=announced_at, actions=actions)
    if trigger is None or trigger.host != host:
        return None
    return trigger


def parse_any(event_type: str, publisher_id: object, payload: object, *,
              received_at: datetime.datetime, context: object = None,
              announced_at: datetime.datetime | None = None,
              actions: frozenset[str] | None = None,
              ) -> StopAnnouncement | AuditWindow | None:
    """parse() for any host: the trigger's ``host`` says whose it is (None: nobody's).
    The first of parse_all(): the trigger when a message is both."""
    found = parse_all(event_type, publisher_id, payload, received_at=received_at,
                      context=context, announced_at=announced_at, actions=actions)
    return found[0] if found else None


def parse_all(event_type: str, publisher_id: object, payload: object, *,
              received_at: datetime.datetime, context: object = None,
              announced_at: datetime.datetime | None = None,
              actions: frozenset[str] | None = None,
              ) -> list[StopAnnouncement | AuditWindow]:
    """Everything one message says, the trigger first (its read races nova's destroy): nova's
    exists on a resize revert's destination is both the closing read's trigger and an audit
    window (hook_protocol.ACTION_EVENTS); any other message is at most one of them."""
    form = classify(event_type)
    if form == "other":
        return []
    found = hook_protocol.action_of(event_type, payload)
    wanted = found is not None and (actions is None or found[0] in actions)
    if event_type not in (LEGACY_EXISTS, VERSIONED_EXISTS):
        return [_trigger(event_type, form, publisher_id, payload, context, received_at,
                         announced_at, VERSIONED_OBJECTS, VERSIONED_MAJOR)] if wanted else []
    window = _audit_window(event_type, form, publisher_id, payload, received_at)
    if window is None:
        return []
    if not wanted:
        return [window]
    return [_trigger(event_type, form, publisher_id, payload, context, received_at,
                     announced_at, EXISTS_OBJECT, EXISTS_MAJOR), window]


def _trigger(event_type: str, form: str, publisher_id: object, payload: object,
             context: object, received_at: datetime.datetime,
             announced_at: datetime.datetime | None, objects: str | frozenset[str],
             major: str) -> StopAnnouncement:
    if form == "legacy":
        fields = field.mapping(payload, "payload")
        instance_id = field.instance_uuid(fields, "instance_id")
        identity = _identity(fields, fields)
    else:
        fields = _versioned_data(payload, objects, major)
        instance_id = field.instance_uuid(fields, "uuid")
        identity = _identity(fields, _flavor_data(fields))
    return StopAnnouncement(instance_id=instance_id, event_type=event_type,
                         host=_origin_host(fields, publisher_id), received_at=received_at,
                         identity=identity, attempt_id=_attempt_id(fields, context),
                         announced_at=announced_at, action=PROCESS_ENDING[event_type])


def _attempt_id(fields: Mapping[str, Any], context: object) -> str | None:
    """nova's request id (versioned payload, else the message context), else None.

    Not the bus message's own id: the legacy and the versioned announcement of one delete are
    two messages, and must still make one event. Trusted for nothing but telling delete
    attempts apart: unusable values are skipped.
    """
    candidates = (fields.get("request_id"),
                  context.get("request_id") if isinstance(context, dict) else None)
    for value in candidates:
        if isinstance(value, str) and 0 < len(value) <= MAX_STRING:
            try:
                return field.encodable(value, "request_id", lenient=False)
            except RejectedMessage:
                continue
    return None


def _audit_window(event_type: str, form: str, publisher_id: object, payload: object,
                  received_at: datetime.datetime) -> AuditWindow | None:
    """Nova's exists: only from nova-compute itself (never ours or another publisher's)."""
    prefix = LEGACY_PUBLISHER_PREFIX if form == "legacy" else VERSIONED_PUBLISHER_PREFIX
    if not isinstance(publisher_id, str) or not publisher_id.startswith(prefix):
        return None
    if form == "legacy":
        fields = field.mapping(payload, "payload")
        instance_id, period = field.instance_uuid(fields, "instance_id"), fields
    else:
        fields = _versioned_data(payload, EXISTS_OBJECT, EXISTS_MAJOR)
        instance_id = field.instance_uuid(fields, "uuid")
        period = field.mapping(field.mapping(fields.get("audit_period"), "audit_period")
                          .get("nova_object.data"), "audit_period nova_object.data")
    origin = _origin_host(fields, publisher_id)
    if origin is None:
        return None
    begin = field.timestamp(period.get("audit_period_beginning"), "audit_period_beginning")
    end = field.timestamp(period.get("audit_period_ending"), "audit_period_ending")
    if end <= begin:
        raise RejectedMessage(f"audit period ends ({end}) before it begins ({begin})")
    return AuditWindow(instance_id=instance_id, event_type=event_type, host=origin,
                       begin=begin, end=end, received_at=received_at)


def _versioned_data(payload: object, objects: str | frozenset[str] = VERSIONED_OBJECTS,
                    major: str = VERSIONED_MAJOR) -> Mapping[str, Any]:
    envelope = field.mapping(payload, "payload")
    objects = frozenset({objects}) if isinstance(objects, str) else objects
    name = envelope.get("nova_object.name")
    if not isinstance(name, str) or name not in objects:  # a list is unhashable
        raise RejectedMessage(
            f"payload nova_object.name {field.short(name)} is not one of {sorted(objects)}")
    namespace = envelope.get("nova_object.namespace", "nova")
    if namespace != "nova":
        raise RejectedMessage(f"payload nova_object.namespace {field.short(namespace)} is not 'nova'")
    version = envelope.get("nova_object.version", major + ".0")
    if not isinstance(version, str) or version.split(".", 1)[0] != major:
        raise RejectedMessage(
            f"payload nova_object.version {field.short(version)} is not a {major}.x version")
    return field.mapping(envelope.get("nova_object.data"), "payload nova_object.data")


def _flavor_data(fields: Mapping[str, Any]) -> Mapping[str, Any]:
    """The versioned FlavorPayload's data, renamed to the legacy keys; {} if there is none."""
    flavor = fields.get("flavor")
    if flavor is None:
        return {}
    data = field.mapping(field.mapping(flavor, "flavor").get("nova_object.data"),
                    "flavor nova_object.data")
    renamed = {key: data[key] for key in INT_FIELDS if key in data}
    if "name" in data:
        renamed["instance_type"] = data["name"]
    return renamed


def _identity(fields: Mapping[str, Any], flavor: Mapping[str, Any]) -> dict[str, Any]:
    """tenant/user/name from the instance fields, flavor figures from ``flavor``; None or
    absent fields are left out, wrongly typed ones reject the message."""
    found: dict[str, Any] = {}
    for key in ("tenant_id", "user_id"):
        _put(found, key, field.text(fields.get(key), key, truncate=False))
    _put(found, "display_name", field.text(fields.get("display_name"), "display_name", truncate=True))
    _put(found, "instance_type", field.text(flavor.get("instance_type"), "instance_type",
                                          truncate=False))
    for key in INT_FIELDS:
        _put(found, key, field.count(flavor.get(key), key))
    return found


def _put(found: dict[str, Any], key: str, value: object) -> None:
    if value is not None:
        found[key] = value


def _origin_host(fields: Mapping[str, Any], publisher_id: object) -> str | None:
    """The payload's ``host``. Null means no compute host holds the instance (nova-api sends
    those for never-scheduled and shelved-offloaded instances): nobody's. Only a payload
    without the key falls back to the host part of nova's publisher_id."""
    if "host" in fields:
        value = fields["host"]
        if value is None:
            return None
        host = field.text(value, "host", truncate=False)
        if not host:
            raise RejectedMessage("host must not be empty")
        return host
    if not isinstance(publisher_id, str) or len(publisher_id) > 2 * MAX_STRING:
        return None
    for prefix in (LEGACY_PUBLISHER_PREFIX, VERSIONED_PUBLISHER_PREFIX):
        if publisher_id.startswith(prefix) and len(publisher_id) > len(prefix):
            return publisher_id[len(prefix):]
    return None
