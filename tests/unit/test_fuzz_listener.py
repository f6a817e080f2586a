"""Fuzzing the bus side: whatever arrives on nova's topics, the endpoint never raises, counts
every message exactly once, hands on only well-formed triggers for this host, and the flush
behind it (a real Flusher and a real Spool) never spools a notification that breaks the
published JSON Schema -- nor loses a trigger it was handed.

Envelopes are generated from the two real delete.start shapes with every field replaced, now
and then, by something hostile: wrong types, huge or unencodable strings, deeply nested
containers, unknown nova_object names/versions, other hosts, non-UUID ids, None.
"""
from __future__ import annotations

import dataclasses
import datetime
import tempfile
import uuid

import oslo_messaging
from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st

from lifecycle_stats import counters as counters_mod
from lifecycle_stats.capture.pipeline import Pipeline, Readers, Settings
from lifecycle_stats.interfaces import Outcome
from lifecycle_stats.usage import periods
from lifecycle_stats.usage.ledger import UsageLedger
from lifecycle_stats.publishing import payloads, spool
from lifecycle_stats.exceptions import RejectedMessage
from lifecycle_stats.records import StopAnnouncement
from lifecycle_stats.listeners import bus, nova_notifications
from tests.support.fakes import FakeInspector, FakeRegistry, make_info, make_reading

HOST = "cmp1"
NOW = datetime.datetime(2026, 11, 21, 12, 0, 42, tzinfo=datetime.timezone.utc)
HANDLED = oslo_messaging.NotificationResult.HANDLED
LEGACY, VERSIONED = nova_notifications.LEGACY_DELETE_START, nova_notifications.VERSIONED_DELETE_START

# instances the fake hypervisor knows: live (-> final), gone but polled (-> last_known),
# a domain that is not nova's (-> never reported); any other UUID -> unavailable
LIVE = "7a1e8d2c-3b4f-4e5a-9c6d-1f2e3d4c5b6a"
CACHED = "0b5c5f0e-8d4a-4c59-9a4e-3b1f6a2d7c11"
NOT_NOVA = "c3d2e1f0-1a2b-4c3d-8e4f-5a6b7c8d9e0f"

FUZZ = settings(max_examples=200, deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

# -- strategies -----------------------------------------------------------------------------------

odd_chars = st.sampled_from(["\ud800", "\udfff", "\x00", "\uffff", "\u202e", "é", "😀", "&", "<"])
texts = (st.text(st.characters(exclude_categories=()), max_size=30)
         | st.text(odd_chars, min_size=1, max_size=5))
huge_strings = st.builds(lambda ch, n: ch * n, st.characters(exclude_categories=()) | odd_chars,
                         st.integers(200, 70_000))
scalars = (st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats() | texts
           | st.binary(max_size=10))
json_values = st.recursive(
    scalars, lambda kids: st.lists(kids, max_size=4) | st.dictionaries(texts, kids, max_size=4),
    max_leaves=25)


def _nest(value, depth: int, as_list: bool):
    for _ in range(depth):
        value = [value] if as_list else {"nova_object.data": value}
    return value


deep = st.builds(_nest, json_values, st.integers(1, 400), st.booleans())
junk = json_values | deep | huge_strings


def _uuid_forms(value: str):
    u = uuid.UUID(value)
    return st.sampled_from([value, value.upper(), u.hex, "{" + value + "}", u.urn,
                            value + " ", value[:-1], value.replace("-", "_")])


instance_ids = st.one_of(
    st.sampled_from([LIVE, CACHED, NOT_NOVA]).flatmap(_uuid_forms),
    st.uuids().map(str), texts, junk)
hosts = st.sampled_from([HOST, HOST, "cmp2", "", HOST.upper(), HOST + " "]) | texts | junk
publishers = (st.sampled_from([f"compute.{HOST}", f"nova-compute:{HOST}", "compute.cmp2",
                               "compute.", "nova-compute:", HOST]) | texts | junk)
event_types = st.sampled_from([LEGACY, VERSIONED, LEGACY, VERSIONED, "compute.instance.delete.end",
                               "instance.delete.end"]) | texts | junk
# JSON may carry lone surrogates ("\ud800" escapes): json.loads keeps them, msgpack, UTF-8
# files and many consumers cannot encode them
strings = (st.sampled_from(["t1", "u1", "web-1", "m1.tiny", "", "web-\ud800", "\udfff"])
           | texts | huge_strings)
counts = st.integers(0, 64) | st.integers(-2**70, 2**70) | st.booleans() | st.floats() | texts
identity_values = strings | counts | st.none() | junk
IDENTITY = {"tenant_id": identity_values, "user_id": identity_values,
            "display_name": identity_values, "instance_type": identity_values}
FLAVOR = {"memory_mb": counts | junk, "vcpus": counts, "root_gb": counts, "ephemeral_gb": counts}


def _with_extras(fixed):
    """fixed's keys over some random ones, and now and then over a thousand of them."""
    extras = st.dictionaries(texts, json_values, max_size=3) | st.builds(
        lambda n: {f"k{i}": i for i in range(n)}, st.integers(1000, 1100))
    return st.tuples(extras, fixed).map(lambda pair: {**pair[0], **pair[1]})


legacy_payloads = _with_extras(st.fixed_dictionaries(
    {"instance_id": instance_ids},
    optional={"host": hosts, **IDENTITY, **{k: v | st.none() for k, v in FLAVOR.items()}}))
flavor_payloads = st.none() | junk | st.fixed_dictionaries({}, optional={
    "nova_object.name": st.just("FlavorPayload") | texts,
    "nova_object.data": _with_extras(st.fixed_dictionaries({}, optional={
        "name": identity_values, **FLAVOR})) | junk})
versioned_data = _with_extras(st.fixed_dictionaries(
    {"uuid": instance_ids}, optional={"host": hosts, "flavor": flavor_payloads, **IDENTITY}))
versioned_payloads = _with_extras(st.fixed_dictionaries(
    {"nova_object.data": versioned_data | junk},
    optional={"nova_object.name": st.just("InstanceActionPayload") | texts | junk,
              "nova_object.namespace": st.just("nova") | texts | junk,
              "nova_object.version": st.sampled_from(["1.8", "1.0", "1.99", "2.0", "0.9", "1",
                                                      "", "1.8.1"]) | texts | junk}))
payloads_any = legacy_payloads | versioned_payloads | junk

envelopes = st.one_of(
    st.tuples(st.just(LEGACY), publishers, legacy_payloads),
    st.tuples(st.just(VERSIONED), publishers, versioned_payloads),
    st.tuples(event_types, publishers, payloads_any),
)


# -- the box under test ---------------------------------------------------------------------------

class Box:
    """A real endpoint over the real core (Pipeline), Spool and ledger; the libvirt side is in memory."""

    def __init__(self, state_dir: str):
        self.counters = counters_mod.Counters()
        self.spool = spool.Spool(f"{state_dir}/spool.sqlite", conduits=["test"],
                                 counters=self.counters)
        self.ledger = UsageLedger(f"{state_dir}/usage.sqlite", periods.parse("hour"))
        self.core = Pipeline(
            readers=Readers.one(FakeInspector({LIVE: make_reading()})),
            registry=FakeRegistry({LIVE: make_info(instance_id=LIVE)}, not_nova={NOT_NOVA}),
            spool=self.spool, ledger=self.ledger, settings=Settings.for_host(HOST),
            counters=self.counters, clock=lambda: NOW)
        self.core.observations.cache.update(
            make_info(instance_id=CACHED), dataclasses.replace(make_reading(), instance_id=CACHED))
        self.triggers: list[StopAnnouncement] = []
        self.outcomes: list[Outcome] = []
        self.endpoint = bus.DeleteStartEndpoint(host=HOST, on_trigger=self._on_trigger,
                                                counters=self.counters, clock=lambda: NOW,
                                                allow_requeue=False)

    def _on_trigger(self, trigger: StopAnnouncement) -> None:
        self.triggers.append(trigger)
        self.outcomes.append(self.core.announced(trigger))

    def spooled(self):
        """The delete.samples spooled (each deletion's final exists follows it), once the
        publication thread's work is done (here synchronously)."""
        self.core.publication.build_waiting()
        return [n for _, n in self.spool.pending("test", 10_000)
                if n.event_type == payloads.DELETE_SAMPLES]


def _check_trigger(trigger: StopAnnouncement) -> None:
    assert isinstance(trigger, StopAnnouncement)
    assert trigger.host == HOST
    assert trigger.instance_id == str(uuid.UUID(trigger.instance_id))
    assert trigger.event_type in (LEGACY, VERSIONED)
    for key, value in trigger.identity.items():
        assert key in nova_notifications.IDENTITY_FIELDS
        if key in nova_notifications.INT_FIELDS:
            assert type(value) is int and 0 <= value <= nova_notifications.MAX_COUNT
        else:
            assert isinstance(value, str) and len(value) <= nova_notifications.MAX_STRING
            value.encode("utf-8")  # no lone surrogates: the spool and the bus need UTF-8


# -- properties -----------------------------------------------------------------------------------

@FUZZ
@given(st.lists(envelopes, min_size=1, max_size=6))
def test_endpoint_counts_every_message_once_and_spools_only_valid_notifications(batch):
    with tempfile.TemporaryDirectory() as state_dir:
        box = Box(state_dir)
        try:
            for event_type, publisher_id, payload in batch:
                result = box.endpoint.info({}, publisher_id, event_type, payload,
                                           {"message_id": str(uuid.uuid4())})
                assert result == HANDLED
            seen = box.counters.snapshot()
            triggered = sum(v for k, v in seen.items() if k.startswith("bus.triggers."))
            assert seen.get("bus.handler_errors", 0) == 0, seen
            assert triggered + seen.get("bus.ignored", 0) + seen.get("bus.rejected", 0) \
                == len(batch), seen
            assert triggered == len(box.triggers)
            for outcome in box.outcomes:
                event(f"flush outcome {outcome.value}")
            for trigger in box.triggers:
                _check_trigger(trigger)
            spooled = box.spooled()
            for notification in spooled:
                payloads.validate(notification)
                assert notification.payload["host"] == HOST
            # every trigger of a nova instance ended up spooled, once per instance
            reported = {t.instance_id for t, o in zip(box.triggers, box.outcomes)
                        if o is not Outcome.NOT_NOVA}
            assert {n.payload["instance_id"] for n in spooled} == reported
            assert len(spooled) == len(reported)
            assert NOT_NOVA not in reported
        finally:
            box.spool.close()
            box.ledger.close()


@FUZZ
@given(envelopes)
@example((VERSIONED, f"compute.{HOST}", {"nova_object.name": [], "nova_object.data": {}}))
def test_parse_returns_a_trigger_for_this_host_none_or_rejects(envelope):
    event_type, publisher_id, payload = envelope
    try:
        trigger = nova_notifications.parse(event_type, publisher_id, payload, host=HOST,
                                           received_at=NOW)
    except RejectedMessage as exc:
        assert nova_notifications.classify(event_type) != "other"
        assert len(str(exc)) < 1000  # errors name the problem, never echo a huge payload
        return
    if trigger is not None:
        _check_trigger(trigger)
        assert trigger.received_at == NOW


# well-typed identities with arbitrary content: these reach the flush every time
typed_strings = (st.none() | st.text(st.characters(exclude_categories=()), max_size=300)
                 | st.text(odd_chars, min_size=1, max_size=5))
typed_counts = st.none() | st.integers(0, nova_notifications.MAX_COUNT)
TYPED_IDENTITY = {"tenant_id": typed_strings, "user_id": typed_strings,
                  "display_name": typed_strings | huge_strings, "instance_type": typed_strings,
                  "memory_mb": typed_counts, "vcpus": typed_counts, "root_gb": typed_counts,
                  "ephemeral_gb": typed_counts}


@FUZZ
@given(st.sampled_from([LIVE, CACHED, None]), st.uuids(), st.sampled_from([LEGACY, VERSIONED]),
       st.fixed_dictionaries({}, optional=TYPED_IDENTITY))
@example(None, uuid.UUID(int=1), LEGACY, {"display_name": "web-\ud800"})
@example(None, uuid.UUID(int=1), VERSIONED, {"tenant_id": "\udfff"})
def test_our_deletes_are_always_captured_whatever_the_identity(known, other, event_type,
                                                             identity):
    """A delete.start for this host naming one of our live or polled instances, or one never
    seen, is either rejected as a whole (a field too long) or spooled as a schema-valid
    final / last_known / unavailable: never lost in between."""
    instance_id = known or str(other)
    payload = {"instance_id": instance_id, "host": HOST, **identity}
    if event_type == VERSIONED:
        flavor = {k: identity.pop(k) for k in nova_notifications.INT_FIELDS if k in identity}
        if "instance_type" in identity:
            flavor["name"] = identity.pop("instance_type")
        payload = {"nova_object.name": "InstanceActionPayload",
                   "nova_object.data": {"uuid": instance_id, "host": HOST, **identity,
                                        "flavor": {"nova_object.data": flavor}}}
    with tempfile.TemporaryDirectory() as state_dir:
        box = Box(state_dir)
        try:
            box.endpoint.info({}, f"compute.{HOST}", event_type, payload, {})
            assert box.counters.get("bus.handler_errors") == 0
            if box.counters.get("bus.rejected"):
                assert box.triggers == []
                return
            [notification] = box.spooled()
            payloads.validate(notification)
            expected = {LIVE: payloads.FINAL, CACHED: payloads.LAST_KNOWN}.get(
                instance_id, payloads.UNAVAILABLE)
            assert notification.payload["capture"]["kind"] == expected
            assert bool(notification.payload["samples"]) == (expected != payloads.UNAVAILABLE)
        finally:
            box.spool.close()
            box.ledger.close()
