"""Build the notifications the agent publishes, per the contracts in doc/billing.md.

`compute.instance.delete.samples`: who the instance was (nova metadata, completed from the
trigger), how its figures were captured (`capture`), and one sample per meter and device.
"""
from __future__ import annotations

import datetime
import functools
import json
from importlib import resources
from typing import TYPE_CHECKING, Any, Callable

import fastjsonschema

from lifecycle_stats.publishing import samples, signing
from lifecycle_stats.publishing.exists import EXISTS
from lifecycle_stats.records import (
    StopAnnouncement, DomainReading, InstanceInfo, Notification, isotime, sample_dicts,
)

if TYPE_CHECKING:
    import jsonschema

DELETE_SAMPLES = "compute.instance.delete.samples"
FINAL = "final"  # read from the live domain after the delete was announced
LAST_KNOWN = "last_known"  # the domain was already gone: newest cached reading, with its age
UNAVAILABLE = "unavailable"  # nothing was ever read: identity only, no samples


def delete_message_id(trigger: StopAnnouncement) -> str:
    """One delete.samples per delete attempt: every trigger of one attempt (legacy and
    versioned, redeliveries) gives the same id; a retried delete (a new nova request) or a
    delete on another host after a migration gives a new one."""
    if trigger.attempt_id is None:  # nothing tells attempts apart: one id per instance
        return samples.deterministic_id(trigger.instance_id, DELETE_SAMPLES)
    return samples.deterministic_id(trigger.instance_id, DELETE_SAMPLES, trigger.attempt_id)


def identity(info: InstanceInfo | None, trigger: StopAnnouncement, host: str) -> dict[str, Any]:
    """Nova's legacy identity fields; the domain's metadata wins, the trigger fills gaps."""
    known = dict(trigger.identity)
    if info is not None:
        flavor = info.flavor
        known.update(
            tenant_id=info.project_id, user_id=info.user_id, display_name=info.display_name,
            instance_type=flavor.name, vcpus=flavor.vcpus, memory_mb=flavor.memory_mb,
            root_gb=flavor.root_gb, ephemeral_gb=flavor.ephemeral_gb,
            domain_name=info.domain_name, image_ref=info.image_ref,
        )
    fields = ("tenant_id", "user_id", "display_name", "instance_type", "vcpus", "memory_mb",
              "root_gb", "ephemeral_gb", "domain_name", "image_ref")
    return {"instance_id": trigger.instance_id, "host": host,
            **{name: known.get(name) for name in fields}}


def capture(kind: str, trigger: StopAnnouncement, reading: DomainReading | None,
            now: datetime.datetime, errors: list[str] | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {
        "kind": kind,
        "trigger": trigger.event_type,
        "captured_at": isotime(reading.read_at if reading else now),
    }
    if trigger.attempt_id is not None:
        out["attempt_id"] = trigger.attempt_id
    if errors:  # the capture could not be published as read: see the spool's rejects
        out["flagged"] = True
        out["errors"] = [error[:500] for error in errors[:10]]
    if reading is not None:
        out["read_path"] = reading.path
        out["domain_state"] = reading.state
    if kind == LAST_KNOWN and reading is not None:
        out["age_ms"] = max(0, round((now - reading.read_at).total_seconds() * 1000))
    return out


def sample_time(trigger: StopAnnouncement, reading: DomainReading) -> datetime.datetime:
    """The timestamp of a deleted instance's samples: the read time, but never later than
    nova's delete announcement. Ceilometer's Gnocchi publisher ends the instance's resources
    (ended_at = its own clock) when it processes that announcement, which is after nova sent
    it, and Gnocchi un-ends a resource that gets a measure at or after ended_at. Stamped no
    later than the announcement, a final sample can never resurrect its instance."""
    if trigger.announced_at is None or reading.read_at <= trigger.announced_at:
        return reading.read_at
    return trigger.announced_at


def with_figures(captured: dict[str, Any], figures: dict[str, Any] | None) -> dict[str, Any]:
    if not figures:
        return captured
    if "domain_state" in captured:
        captured["read_state"] = captured["domain_state"]
    return {**captured, **figures}


def delete_samples(
    *, kind: str, trigger: StopAnnouncement, info: InstanceInfo | None,
    reading: DomainReading | None, host: str, publisher_id: str, now: datetime.datetime,
    source: str = "openstack", supersedes: str | None = None, errors: list[str] | None = None,
    legacy_meters: bool = True, telemetry_secret: str = signing.CEILOMETER_DEFAULT_SECRET,
    figures: dict[str, Any] | None = None,
) -> Notification:
    """figures: `complete` and the domain's real `domain_state`, merged into `capture`
    (the state in the reading itself stays as `read_state`)."""
    message_id = delete_message_id(trigger)
    built = []
    if info is not None and reading is not None:
        built = samples.build_samples(info, reading, host=host, capture_id=message_id,
                                      source=source, legacy=legacy_meters,
                                      timestamp=sample_time(trigger, reading))
    payload = {
        **identity(info, trigger, host),
        "message_id": message_id,
        "supersedes": supersedes,
        "capture": with_figures(capture(kind, trigger, reading, now, errors), figures),
        "samples": signing.signed_all(sample_dicts(built), telemetry_secret),
    }
    # The envelope time too: Ceilometer's stock meters.yaml stamps the samples it makes of
    # delete.samples (memory, vcpus, disk.*.size) with it.
    sent = now if trigger.announced_at is None else min(now, trigger.announced_at)
    return Notification(event_type=DELETE_SAMPLES, priority="INFO", publisher_id=publisher_id,
                        payload=payload, message_id=message_id, timestamp=isotime(sent))


@functools.cache
def schema(event_type: str) -> dict[str, Any]:
    """The shipped JSON Schema of an event's payload."""
    name = event_type.replace("compute.instance.", "").replace(".", "_") + ".schema.json"
    text = resources.files("lifecycle_stats.publishing").joinpath("schemas", name).read_text()
    return json.loads(text)


@functools.cache
def _validator(event_type: str) -> "jsonschema.protocols.Validator":
    """Built once: jsonschema.validate() would re-check the schema itself on every call,
    which measured as half of an idle flush (~11 of 22 ms) and holds the GIL in a burst.
    Imported here, not at the top: only a payload the compiled validator refuses needs it,
    and its import (referencing, rpds, ~40 modules) kept 2.8 MiB in every agent."""
    import jsonschema

    document = schema(event_type)
    cls = jsonschema.validators.validator_for(document)
    cls.check_schema(document)
    return cls(document)


# Keywords whose meaning differs in (or is absent from) draft-07, which fastjsonschema compiles;
# dependentRequired is draft-07's array-valued "dependencies" under a new name.
_NOT_DRAFT7 = frozenset({"prefixItems", "unevaluatedProperties", "unevaluatedItems",
                         "dependentSchemas", "$dynamicRef", "$dynamicAnchor", "$recursiveRef",
                         "$recursiveAnchor", "$anchor", "minContains", "maxContains",
                         "$vocabulary", "dependencies"})
_NAMED_CHILDREN = frozenset({"properties", "$defs", "definitions", "patternProperties",
                             "dependentRequired"})


class _NotDraft7(Exception):
    pass


@functools.cache
def _compiled(event_type: str) -> Callable[[Any], Any] | None:
    """The schema compiled to Python code (~20x faster than jsonschema's walk, measured), when
    it means the same in draft-07; None otherwise."""
    try:
        draft7 = _as_draft7(schema(event_type))
    except _NotDraft7:
        return None
    draft7["$schema"] = "http://json-schema.org/draft-07/schema#"
    return fastjsonschema.compile(draft7, use_default=False)  # never fill in the payload


def _as_draft7(node: Any) -> Any:
    """A copy with dependentRequired renamed; _NotDraft7 for keywords draft-07 reads otherwise."""
    if isinstance(node, list):
        return [_as_draft7(child) for child in node]
    if not isinstance(node, dict):
        return node
    out = {}
    for key, value in node.items():
        if key in _NOT_DRAFT7:
            raise _NotDraft7(key)
        if key in _NAMED_CHILDREN and isinstance(value, dict):
            value = {name: _as_draft7(child) for name, child in value.items()}
        else:
            value = _as_draft7(value)
        out["dependencies" if key == "dependentRequired" else key] = value
    return out


def prepare_validators() -> int:
    """Compile the validator of every published event type now (at the agent's start): a
    compile takes ~15 ms, and the first delete after a start would otherwise wait for it
    between its capture and its publication. How many were compiled."""
    return sum(_compiled(event_type) is not None for event_type in (DELETE_SAMPLES, EXISTS))


def validate(notification: Notification) -> None:
    """Raise jsonschema.ValidationError when a payload breaks its published contract.

    The compiled validator answers "valid" fast; anything it refuses goes to jsonschema, whose
    verdict (and best-matching error) is the one that counts.
    """
    validate_payload(notification.event_type, notification.payload)


def validate_payload(event_type: str, payload: Any) -> None:
    payload = dict(payload)
    compiled = _compiled(event_type)
    if compiled is not None:
        try:
            compiled(payload)
            return
        except fastjsonschema.JsonSchemaException:
            pass
    import jsonschema  # loaded by _validator

    error = jsonschema.exceptions.best_match(_validator(event_type).iter_errors(payload))
    if error is not None:
        raise error
