"""The compiled validator (fastjsonschema) never accepts what jsonschema refuses.

payloads.validate answers "valid" from the compiled schema and sends everything it refuses to
jsonschema, whose verdict counts. So the one thing that must never happen is the compiled
validator accepting a payload jsonschema rejects: checked on real delete.samples payloads
mutated at random paths.
"""
from __future__ import annotations

import copy
import datetime
import pathlib
import subprocess
import sys

import jsonschema
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lifecycle_stats.publishing import payloads
from lifecycle_stats.records import StopAnnouncement, Notification
from tests.support.fakes import UUID, make_info, make_reading

NOW = datetime.datetime(2026, 11, 22, 3, 0, tzinfo=datetime.timezone.utc)
ODD_VALUES = [None, "", "x" * 300, -1, 0, 2**64, 1.5, True, False, [], {}, [1], {"a": 1},
              "final", "bogus", UUID, "2026-11-22T03:00:00.000000"]


def notification(kind: str) -> Notification:
    trigger = StopAnnouncement(instance_id=UUID, event_type="compute.instance.delete.start",
                            host="cmp1", received_at=NOW, identity={})
    active = kind == payloads.FINAL
    return payloads.delete_samples(
        kind=kind, trigger=trigger, info=make_info(),
        reading=make_reading(active=active) if kind != payloads.UNAVAILABLE else None,
        host="cmp1", publisher_id="lifecycle-stats.cmp1", now=NOW)


def paths(node, prefix=()):
    """Every (container path, key) in a JSON document."""
    items = node.items() if isinstance(node, dict) else enumerate(node) \
        if isinstance(node, list) else ()
    for key, value in items:
        yield prefix, key
        yield from paths(value, prefix + (key,))


def mutated(payload: dict, choice: int, value_index: int, delete: bool) -> dict:
    copied = copy.deepcopy(payload)
    all_paths = list(paths(copied))
    prefix, key = all_paths[choice % len(all_paths)]
    container = copied
    for step in prefix:
        container = container[step]
    if delete and isinstance(container, dict):
        del container[key]
    else:
        container[key] = copy.deepcopy(ODD_VALUES[value_index % len(ODD_VALUES)])
    return copied


def jsonschema_accepts(payload: dict) -> bool:
    return not list(payloads._validator(payloads.DELETE_SAMPLES).iter_errors(payload))


def compiled_accepts(payload: dict) -> bool:
    try:
        payloads._compiled(payloads.DELETE_SAMPLES)(payload)
    except Exception:
        return False
    return True


def test_the_shipped_schema_compiles():
    assert payloads._compiled(payloads.DELETE_SAMPLES) is not None


@pytest.mark.parametrize("kind", [payloads.FINAL, payloads.LAST_KNOWN, payloads.UNAVAILABLE])
def test_real_payloads_pass_both(kind):
    payload = dict(notification(kind).payload)
    assert compiled_accepts(payload) and jsonschema_accepts(payload)
    payloads.validate(notification(kind))


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(kind=st.sampled_from([payloads.FINAL, payloads.LAST_KNOWN, payloads.UNAVAILABLE]),
       choice=st.integers(0, 10_000), value_index=st.integers(0, 100), delete=st.booleans())
def test_compiled_never_accepts_what_jsonschema_refuses(kind, choice, value_index, delete):
    payload = mutated(dict(notification(kind).payload), choice, value_index, delete)
    if compiled_accepts(payload):
        assert jsonschema_accepts(payload), payload
    if not jsonschema_accepts(payload):
        with pytest.raises(jsonschema.ValidationError):
            payloads.validate(Notification(
                event_type=payloads.DELETE_SAMPLES, priority="INFO", publisher_id="p",
                payload=payload, message_id="m", timestamp="t"))


def test_a_schema_with_keywords_draft7_lacks_is_not_compiled(monkeypatch):
    payloads._compiled.cache_clear()
    try:
        monkeypatch.setattr(payloads, "schema", lambda event_type: {
            "$schema": "https://json-schema.org/draft/2020-12/schema", "type": "object",
            "properties": {"a": {"type": "array", "prefixItems": [{"type": "string"}]}}})
        assert payloads._compiled("x") is None
    finally:
        payloads._compiled.cache_clear()


def test_dependent_required_is_compiled_as_draft7_dependencies(monkeypatch):
    payloads._compiled.cache_clear()
    try:
        monkeypatch.setattr(payloads, "schema", lambda event_type: {
            "$schema": "https://json-schema.org/draft/2020-12/schema", "type": "object",
            "properties": {"dependentRequired": {"type": "string"}},
            "dependentRequired": {"a": ["b"]}})
        compiled = payloads._compiled("x")
        compiled({"a": 1, "b": 2, "dependentRequired": "a property, not the keyword"})
        with pytest.raises(Exception):
            compiled({"a": 1})
    finally:
        payloads._compiled.cache_clear()


VALID_IN_A_CHILD = """
import datetime, sys
from lifecycle_stats.publishing import payloads
from lifecycle_stats.records import StopAnnouncement
from tests.support.fakes import UUID, make_info, make_reading
now = datetime.datetime(2026, 11, 22, 3, 0, tzinfo=datetime.timezone.utc)
trigger = StopAnnouncement(instance_id=UUID, event_type="compute.instance.delete.start",
                           host="cmp1", received_at=now, identity={})
for kind, reading in ((payloads.FINAL, make_reading()), (payloads.UNAVAILABLE, None)):
    payloads.validate(payloads.delete_samples(kind=kind, trigger=trigger, info=make_info(),
                                              reading=reading, host="cmp1", publisher_id="p",
                                              now=now))
print(sorted(name for name in ("jsonschema", "referencing", "rpds") if name in sys.modules))
"""


def test_valid_payloads_never_load_jsonschema():
    """Regression (agent memory): payloads.py imported jsonschema at the top, 2.8 MiB resident
    in every agent for a verdict only a refused payload needs."""
    from tests.support import fakes

    root = str(pathlib.Path(fakes.__file__).resolve().parents[2])
    out = subprocess.run([sys.executable, "-c", VALID_IN_A_CHILD], capture_output=True,
                         text=True, check=True, cwd=root).stdout
    assert out.strip() == "[]"


def test_the_validators_are_compiled_at_start_not_at_the_first_delete():
    """prepare_validators() (Agent.start) compiles each published type's validator: the
    first delete after a start waited ~15 ms for it between capture and publication."""
    payloads._compiled.cache_clear()
    assert payloads.prepare_validators() == 2
    compiled = payloads._compiled.cache_info()
    assert compiled.currsize == 2
    for event_type in (payloads.DELETE_SAMPLES, "compute.instance.exists"):
        payloads._compiled(event_type)
    assert payloads._compiled.cache_info().misses == compiled.misses
