"""lifecycle_stats.listeners.nova_notifications: nova's two delete.start formats → StopAnnouncement."""
from __future__ import annotations

import datetime

import pytest

from lifecycle_stats.exceptions import RejectedMessage
from lifecycle_stats.listeners import nova_notifications as nn
from lifecycle_stats.records import AuditWindow
from tests.support.nova import (
    DROP, IDENTITY, changed, legacy_start_payload, versioned_start_payload,
)

HOST = "compute-1"
UUID = "178b0921-8f85-4257-88b6-2e743b5a975c"
NOW = datetime.datetime(2024, 5, 1, 12, 0, 0, 123456, tzinfo=datetime.timezone.utc)


def legacy(**changes):
    return legacy_start_payload(changes.pop("instance_id", UUID), changes.pop("host", HOST),
                                **changes)


def versioned(**changes):
    return versioned_start_payload(UUID, changes.pop("host", HOST), **changes)


LEGACY = ("compute.instance.delete.start", f"compute.{HOST}")
VERSIONED = ("instance.delete.start", f"nova-compute:{HOST}")


def run(event, payload, host=HOST):
    event_type, publisher_id = event
    return nn.parse(event_type, publisher_id, payload, host=host, received_at=NOW)


@pytest.mark.parametrize("event,payload", [(LEGACY, legacy()), (VERSIONED, versioned())],
                         ids=["legacy", "versioned"])
def test_delete_start_on_this_host_is_a_trigger_with_legacy_identity(event, payload):
    trigger = run(event, payload)
    assert trigger.instance_id == UUID
    assert trigger.event_type == event[0]
    assert trigger.host == HOST
    assert trigger.received_at == NOW
    assert dict(trigger.identity) == IDENTITY
    assert tuple(trigger.identity) == nn.IDENTITY_FIELDS


@pytest.mark.parametrize("event,payload,expected", [
    (LEGACY, legacy(display_name=None, memory_mb=DROP), {"display_name", "memory_mb"}),
    (VERSIONED, versioned(flavor=DROP), {"instance_type", "memory_mb", "vcpus", "root_gb",
                                         "ephemeral_gb"}),
    (VERSIONED, versioned(flavor={"nova_object.data": {"vcpus": 2}}),
     {"instance_type", "memory_mb", "root_gb", "ephemeral_gb"}),
], ids=["legacy-null-and-missing", "versioned-no-flavor", "versioned-partial-flavor"])
def test_identity_holds_only_the_fields_found(event, payload, expected):
    identity = run(event, payload).identity
    assert set(identity) == set(IDENTITY) - expected


def test_uuid_is_normalized_to_libvirts_form():
    trigger = run(LEGACY, legacy(instance_id=UUID.upper().replace("-", "")))
    assert trigger.instance_id == UUID


def test_overlong_display_name_is_truncated_not_rejected():
    trigger = run(VERSIONED, versioned(display_name="x" * 10_000))
    assert trigger.identity["display_name"] == "x" * nn.MAX_STRING


@pytest.mark.parametrize("event,payload", [
    (LEGACY, legacy(host="compute-2")),
    (VERSIONED, versioned(host="compute-2")),
    (("compute.instance.delete.start", "compute.compute-2"), legacy(host=DROP)),
    (("instance.delete.start", "nova-compute:compute-2"), versioned(host=None)),
    (("compute.instance.delete.start", f"compute.{HOST}"), legacy(host="compute-2")),
    (("compute.instance.delete.start", "api.controller"), legacy(host=None)),
    (("compute.instance.delete.start", None), legacy(host=DROP)),
], ids=["legacy-payload", "versioned-payload", "legacy-publisher", "versioned-publisher",
        "payload-beats-publisher", "api-local-delete", "no-host-at-all"])
def test_other_host_is_ignored(event, payload):
    assert run(event, payload) is None


@pytest.mark.parametrize("event,payload", [
    (("compute.instance.delete.start", f"compute.{HOST}"), legacy(host=DROP)),
    (("instance.delete.start", f"nova-compute:{HOST}"), versioned(host=DROP)),
], ids=["legacy", "versioned"])
def test_host_falls_back_to_publisher_id_only_when_the_payload_has_none(event, payload):
    assert run(event, payload).host == HOST


@pytest.mark.parametrize("event,payload", [
    (("compute.instance.delete.start", f"compute.{HOST}"), legacy(host=None)),
    (("instance.delete.start", f"nova-compute:{HOST}"), versioned(host=None)),
], ids=["legacy", "versioned"])
def test_a_null_host_is_nobodys_whoever_published_it(event, payload):
    """nova-api sends delete.start with host null for never-scheduled and shelved-offloaded
    instances: no hypervisor holds them, whatever the publisher_id says."""
    assert run(event, payload) is None
    trigger = nn.parse_any(event[0], event[1], payload, received_at=NOW)
    assert trigger is not None and trigger.host is None


def test_the_attempt_id_is_novas_request_id_shared_by_both_formats():
    context = {"request_id": "req-0b6d6f2c"}
    a = nn.parse(*LEGACY, legacy(), host=HOST, received_at=NOW, context=context)
    b = nn.parse(*VERSIONED, versioned(request_id="req-0b6d6f2c"), host=HOST,
                 received_at=NOW, context={})
    assert a.attempt_id == b.attempt_id == "req-0b6d6f2c"


@pytest.mark.parametrize("context,expected", [
    ({}, None),
    ({"request_id": 7}, None),
    ({"request_id": "x" * 1000}, None),
    (None, None),
    ({"request_id": "\ud800"}, None),
    ({"request_id": "req-9"}, "req-9"),
])
def test_an_unusable_request_id_is_no_attempt_id(context, expected):
    trigger = nn.parse(*LEGACY, legacy(), host=HOST, received_at=NOW, context=context)
    assert trigger.attempt_id == expected


@pytest.mark.parametrize("event_type", [
    "compute.instance.delete.end", "instance.delete.end", "compute.instance.update",
    "instance.shutdown.start", "compute.instance.create.end", "instance.power_on.start", "", None, 42])
def test_other_event_types_are_ignored_even_when_malformed(event_type):
    assert nn.parse(event_type, f"compute.{HOST}", "not even a dict", host=HOST,
                    received_at=NOW) is None
    assert nn.classify(event_type) == "other"


def test_classify():
    assert nn.classify("compute.instance.delete.start") == "legacy"
    assert nn.classify("instance.delete.start") == "versioned"


def _versioned_envelope(**changes):
    return changed(versioned(), changes)


MALFORMED = [
    ("legacy-not-dict", LEGACY, ["instance_id", UUID], "payload must be a dict, got list"),
    ("legacy-none", LEGACY, None, "payload must be a dict, got NoneType"),
    ("legacy-no-uuid", LEGACY, legacy(instance_id=DROP), "instance_id must be a UUID string"),
    ("legacy-uuid-int", LEGACY, legacy(instance_id=7),
     "instance_id must be a UUID string, got 7"),
    ("legacy-uuid-bad", LEGACY, legacy(instance_id="instance-0000002a"),
     "instance_id is not a UUID: 'instance-0000002a'"),
    ("legacy-uuid-huge", LEGACY, legacy(instance_id="a" * 1_000_000),
     "instance_id is not a UUID: 1000000 characters"),
    ("legacy-memory-str", LEGACY, legacy(memory_mb="512"),
     "memory_mb must be an integer, got str"),
    ("legacy-vcpus-bool", LEGACY, legacy(vcpus=True), "vcpus must be an integer, got bool"),
    ("legacy-root-negative", LEGACY, legacy(root_gb=-1), "root_gb must be between 0 and"),
    ("legacy-huge-int", LEGACY, legacy(ephemeral_gb=10 ** 5000), "<int of 16610 bits>"),
    ("legacy-tenant-dict", LEGACY, legacy(tenant_id={"a": 1}),
     "tenant_id must be a string, got dict"),
    ("legacy-user-long", LEGACY, legacy(user_id="u" * 300), "user_id is 300 characters"),
    ("legacy-flavor-long", LEGACY, legacy(instance_type="f" * 300),
     "instance_type is 300 characters"),
    ("legacy-host-int", LEGACY, legacy(host=5), "host must be a string, got int"),
    ("legacy-host-empty", LEGACY, legacy(host=""), "host must not be empty"),
    ("legacy-too-many-keys", LEGACY, {**legacy(), **{f"k{i}": i for i in range(2000)}},
     "payload has 2020 keys, more than 1024"),
    ("versioned-not-dict", VERSIONED, "instance.delete.start", "payload must be a dict, got str"),
    ("versioned-unknown-object", VERSIONED,
     _versioned_envelope(**{"nova_object.name": "InstanceUpdatePayload"}),
     "nova_object.name 'InstanceUpdatePayload' is not one of ['InstanceActionPayload', "),
    ("versioned-no-object-name", VERSIONED, _versioned_envelope(**{"nova_object.name": DROP}),
     "nova_object.name None is not one of"),
    ("versioned-namespace", VERSIONED,
     _versioned_envelope(**{"nova_object.namespace": "cinder"}),
     "nova_object.namespace 'cinder' is not 'nova'"),
    ("versioned-major-2", VERSIONED, _versioned_envelope(**{"nova_object.version": "2.0"}),
     "nova_object.version '2.0' is not a 1.x version"),
    ("versioned-data-list", VERSIONED, _versioned_envelope(**{"nova_object.data": []}),
     "payload nova_object.data must be a dict, got list"),
    ("versioned-data-missing", VERSIONED, _versioned_envelope(**{"nova_object.data": DROP}),
     "payload nova_object.data must be a dict, got NoneType"),
    ("versioned-no-uuid", VERSIONED, versioned(uuid=DROP), "uuid must be a UUID string, got None"),
    ("versioned-flavor-str", VERSIONED, versioned(flavor="m1.tiny"),
     "flavor must be a dict, got str"),
    ("versioned-flavor-data-missing", VERSIONED, versioned(flavor={"nova_object.name": "F"}),
     "flavor nova_object.data must be a dict, got NoneType"),
    ("versioned-flavor-memory-float", VERSIONED,
     versioned(flavor={"nova_object.data": {"memory_mb": 1.5}}),
     "memory_mb must be an integer, got float"),
    ("versioned-flavor-name-int", VERSIONED, versioned(flavor={"nova_object.data": {"name": 1}}),
     "instance_type must be a string, got int"),
]


@pytest.mark.parametrize("event,payload,reason", [m[1:] for m in MALFORMED],
                         ids=[m[0] for m in MALFORMED])
def test_malformed_delete_start_is_rejected_with_the_reason(event, payload, reason):
    with pytest.raises(RejectedMessage) as info:
        run(event, payload)
    assert reason in str(info.value)
    assert len(str(info.value)) < 200


def test_malformed_message_for_another_host_is_still_rejected():
    """The uuid is checked before the host: a broken message is never silently ignored."""
    with pytest.raises(RejectedMessage):
        run(LEGACY, legacy(host="compute-2", instance_id="nope"))


def test_deeply_nested_input_is_not_walked():
    deep: object = {}
    for _ in range(100_000):  # far past the recursion limit: only bounded look-ups may happen
        deep = {"nova_object.data": deep}
    trigger = run(LEGACY, legacy(metadata=deep, display_name="ok"))
    assert trigger.identity["display_name"] == "ok"
    trigger = run(VERSIONED, versioned(flavor=deep))
    assert "memory_mb" not in trigger.identity


@pytest.mark.parametrize("host", ["", None, 3])
def test_bad_own_host_is_a_programming_error(host):
    with pytest.raises(ValueError, match="host must be a non-empty string"):
        nn.parse(*LEGACY, legacy(), host=host, received_at=NOW)


@pytest.mark.parametrize("metadata,expected", [
    ({"timestamp": "2026-01-01 12:00:00.123456"},
     datetime.datetime(2026, 1, 1, 12, 0, 0, 123456, tzinfo=datetime.timezone.utc)),
    ({"timestamp": "2026-01-01T12:00:00+00:00"},
     datetime.datetime(2026, 1, 1, 12, 0, tzinfo=datetime.timezone.utc)),
    ({"timestamp": "2026-01-01T17:00:00+05:00"},
     datetime.datetime(2026, 1, 1, 12, 0, tzinfo=datetime.timezone.utc)),
    ({"timestamp": "yesterday"}, None),
    # before year 1 / after 9999 in UTC: not stored in a capture record (before: the capture
    # of a delete announced so was read, spooled, acknowledged, then lost to the rejects)
    ({"timestamp": "0001-01-01T00:00:00+05:00"}, None),
    ({"timestamp": "9999-12-31T23:59:59-05:00"}, None),
    ({"timestamp": 5}, None),
    ({}, None),
    (None, None),
])
def test_envelope_time_is_nova_send_time_in_utc(metadata, expected):
    assert nn.envelope_time(metadata) == expected


# -- process-ending actions and nova's exists (issue 9) -----------------------------------

@pytest.mark.parametrize("event_type, action", sorted(
    (event, action) for event, action in nn.PROCESS_ENDING.items()
    if event not in (nn.LEGACY_EXISTS, nn.VERSIONED_EXISTS)))
def test_every_process_ending_start_becomes_a_trigger_with_its_action(event_type, action):
    if event_type.startswith("compute."):
        payload, publisher = legacy(), f"compute.{HOST}"
    else:
        payload, publisher = versioned(), f"nova-compute:{HOST}"
        if action in ("rescue", "unrescue", "rebuild"):
            name = {"rebuild": "InstanceActionRebuildPayload"}.get(action,
                                                                 "InstanceActionRescuePayload")
            payload["nova_object.name"] = name
    got = nn.parse(event_type, publisher, payload, host=HOST, received_at=NOW)
    assert (got.instance_id, got.action, got.event_type) == (UUID, action, event_type)
    assert nn.parse(event_type, publisher, payload, host="elsewhere", received_at=NOW) is None


def test_the_list_covers_both_forms_of_each_action():
    assert sorted(nn.LEGACY_PROCESS_ENDING.values()) == sorted(
        nn.VERSIONED_PROCESS_ENDING.values())
    assert {"delete", "power_off", "reboot", "shelve", "rescue", "resize",
            "suspend"} <= set(nn.PROCESS_ENDING.values())
    assert nn.PROCESS_ENDING["compute.instance.soft_delete.start"] == "soft_delete"
    assert nn.PROCESS_ENDING["instance.soft_delete.start"] == "soft_delete"
    # a revert is read on the destination, at nova's exists (below), not at the source's
    # resize.revert.start, which comes after the destination's domain is gone
    assert nn.PROCESS_ENDING["compute.instance.exists"] == "resize_revert"
    assert "compute.instance.resize.revert.start" not in nn.PROCESS_ENDING


def exists_versioned(begin="2026-11-22T01:00:00Z", end="2026-11-22T02:00:00Z", **changes):
    payload = versioned(**changes)
    payload["nova_object.name"] = "InstanceExistsPayload"
    payload["nova_object.version"] = "2.1"
    payload["nova_object.data"]["audit_period"] = {
        "nova_object.name": "AuditPeriodPayload", "nova_object.version": "1.0",
        "nova_object.data": {"audit_period_beginning": begin, "audit_period_ending": end}}
    return payload


def test_nova_legacy_and_versioned_exists_give_the_same_window():
    legacy_payload = legacy(audit_period_beginning="2026-11-22 01:00:00",
                            audit_period_ending="2026-11-22 02:00:00")
    one = nn.parse("compute.instance.exists", f"compute.{HOST}", legacy_payload, host=HOST,
                   received_at=NOW)
    two = nn.parse("instance.exists", f"nova-compute:{HOST}", exists_versioned(), host=HOST,
                   received_at=NOW)
    for window in (one, two):
        assert window.instance_id == UUID
        assert window.begin == datetime.datetime(2026, 11, 22, 1, tzinfo=datetime.timezone.utc)
        assert window.end == datetime.datetime(2026, 11, 22, 2, tzinfo=datetime.timezone.utc)


def test_exists_from_anyone_but_nova_compute_is_not_nova_s():
    payload = legacy(audit_period_beginning="2026-11-22 01:00:00",
                     audit_period_ending="2026-11-22 02:00:00")
    for publisher in (f"lifecycle-stats.{HOST}", None, f"nova-api:{HOST}"):
        assert nn.parse("compute.instance.exists", publisher, payload, host=HOST,
                        received_at=NOW) is None


@pytest.mark.parametrize("begin, end, reason", [
    ("yesterday", "2026-11-22T02:00:00Z", "audit_period_beginning is not a date-time"),
    ("2026-11-22T03:00:00Z", "2026-11-22T02:00:00Z", "ends"),
    (None, "2026-11-22T02:00:00Z", "must be a date-time string"),
    # before: OverflowError, counted as a handler error (the hook answered `error`)
    ("0001-01-01T00:00:00+05:00", "2026-11-22T02:00:00Z", "out of range in UTC"),
])
def test_a_malformed_exists_is_rejected_with_the_reason(begin, end, reason):
    with pytest.raises(RejectedMessage, match=reason):
        nn.parse("instance.exists", f"nova-compute:{HOST}", exists_versioned(begin, end),
                 host=HOST, received_at=NOW)


def test_actions_narrows_what_is_a_trigger():
    only_deletes = frozenset({"delete"})
    assert nn.parse("compute.instance.power_off.start", f"compute.{HOST}", legacy(), host=HOST,
                    received_at=NOW, actions=only_deletes) is None
    assert nn.parse("compute.instance.delete.start", f"compute.{HOST}", legacy(), host=HOST,
                    received_at=NOW, actions=only_deletes).action == "delete"


# -- resize revert: read on the destination before it destroys (defect 9) ------------------

def revert_exists(form: str, task_state="resize_reverting"):
    """What nova's revert_resize sends on the destination before driver.destroy:
    notify_usage_exists(current_period=True), with the instance's task_state."""
    if form == "legacy":
        return ("compute.instance.exists", f"compute.{HOST}",
                legacy(state="resized", state_description=task_state,
                       audit_period_beginning="2026-11-22 02:00:00",
                       audit_period_ending="2026-11-22 02:41:07"))
    return ("instance.exists", f"nova-compute:{HOST}",
            exists_versioned(begin="2026-11-22T02:00:00Z", end="2026-11-22T02:41:07Z",
                             state="resized", task_state=task_state))


@pytest.mark.parametrize("form", ["legacy", "versioned"])
def test_defect_9_a_revert_s_exists_on_the_destination_is_its_closing_read_and_a_window(form):
    event_type, publisher, payload = revert_exists(form)
    trigger, window = nn.parse_all(event_type, publisher, payload, received_at=NOW)
    assert (trigger.action, trigger.instance_id, trigger.host) == ("resize_revert", UUID, HOST)
    assert trigger.identity["tenant_id"] == IDENTITY["tenant_id"]
    assert (window.instance_id, window.host) == (UUID, HOST)
    assert window.end == datetime.datetime(2026, 11, 22, 2, 41, 7, tzinfo=datetime.timezone.utc)
    assert nn.parse(event_type, publisher, payload, host=HOST, received_at=NOW) == trigger


@pytest.mark.parametrize("form", ["legacy", "versioned"])
@pytest.mark.parametrize("task_state", [None, "", "resize_migrating", "rebuilding"])
def test_any_other_exists_is_only_a_window(form, task_state):
    event_type, publisher, payload = revert_exists(form, task_state)
    [window] = nn.parse_all(event_type, publisher, payload, received_at=NOW)
    assert isinstance(window, AuditWindow) and window.instance_id == UUID


def test_a_revert_s_exists_outside_the_wanted_actions_is_only_a_window():
    event_type, publisher, payload = revert_exists("legacy")
    [window] = nn.parse_all(event_type, publisher, payload, received_at=NOW,
                            actions=frozenset({"delete"}))
    assert isinstance(window, AuditWindow)
