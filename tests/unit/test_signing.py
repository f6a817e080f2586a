import copy
import hashlib
import hmac

from lifecycle_stats.publishing import signing


def manual(secret, pairs):
    digest = hmac.new(secret.encode(), b"", hashlib.sha256)
    for name, value in pairs:
        digest.update(name.encode())
        digest.update(value.encode())
    return digest.hexdigest()


def test_flat_message_is_hmac_over_sorted_key_value_text():
    message = {"b": 2, "a": "x", "c": None}
    assert signing.signature(message, "s3") == manual("s3", [("a", "x"), ("b", "2"),
                                                             ("c", "None")])


def test_nested_mappings_flatten_and_lists_print_like_ceilometer():
    message = {"meta": {"z": 1, "flavor": {"id": "f"}}, "tags": ["a", {"k": "v"}]}
    assert signing.signature(message, "k") == manual("k", [
        ("meta:flavor:id", "f"), ("meta:z", "1"), ("tags", "[b'a', {b'k': b'v'}]")])


def test_signed_roundtrip_tamper_and_wrong_secret():
    message = signing.signed({"counter_volume": 5, "resource_metadata": {"host": "h"}}, "k")
    assert len(message["message_signature"]) == 64
    assert signing.verify(message, "k")
    assert not signing.verify(message, "other")
    assert not signing.verify({**message, "counter_volume": 6}, "k")
    assert not signing.verify({**message, "resource_metadata": {"host": "x"}}, "k")
    assert not signing.verify({k: v for k, v in message.items() if k != "message_signature"},
                              "k")


def test_existing_signature_is_not_signed_and_key_order_does_not_matter():
    one = signing.signed({"a": 1, "b": 2}, "k")
    two = signing.signed({"b": 2, "a": 1, "message_signature": "stale"}, "k")
    assert one == two


def test_no_secret_means_empty_signature_and_everything_verifies():
    assert signing.signed({"a": 1}, "")["message_signature"] == ""
    assert signing.verify({"a": 1, "message_signature": "junk"}, "")


def test_non_ascii_or_missing_signature_is_invalid():
    assert not signing.verify({"a": 1, "message_signature": "é" * 64}, "k")
    assert not signing.verify({"a": 1, "message_signature": 5}, "k")


class Port(int):
    """An int subclass with its own format(): fed as f-string formatting does."""

    def __format__(self, spec):
        return f"port-{int(self)}"


def test_scalars_and_odd_values_feed_their_text_as_before_the_in_place_build():
    """The digest's text made in place (signing._text) gives the pieces the generator gave:
    str() of plain values, f-string formatting of others, mappings of any kind flattened,
    lists and tuples as Ceilometer prints them."""
    import decimal
    import types

    message = {"t": True, "n": None, "f": 0.1, "inf": float("inf"), "neg": -0.0,
               "big": 10 ** 30, "port": Port(8), "dec": decimal.Decimal("1.50"),
               "raw": b"\xc3\xa9", "tuple": (1, "a"), "proxy": types.MappingProxyType({"k": 1})}
    assert signing.signature(message, "s") == manual("s", [
        ("big", "1" + "0" * 30), ("dec", "1.50"), ("f", "0.1"), ("inf", "inf"), ("n", "None"),
        ("neg", "-0.0"), ("port", "port-8"), ("proxy:k", "1"), ("raw", "b'\\xc3\\xa9'"),
        ("t", "True"), ("tuple", "[1, b'a']")])


def test_a_mapping_under_the_signature_key_is_signed_like_any_other():
    """Only the flat name message_signature is left out (Ceilometer compares the flattened
    name), so a mapping under it is flattened and fed in."""
    message = {"a": 1, "message_signature": {"x": 1}}
    assert signing.signature(message, "k") == manual("k", [("a", "1"),
                                                           ("message_signature:x", "1")])
    assert signing.signature({"a": 1, "message_signature": "old"}, "k") == manual(
        "k", [("a", "1")])


def test_signed_all_gives_each_message_the_signature_it_has_alone():
    """signed_all makes the text of a nested mapping shared by several messages once: each
    signature is still the one the message has alone, whatever the others hold."""
    shared = {"flavor": {"id": "f", "ram": 512}, "host": "h", "image": {"id": "i"}}
    other = {"flavor": {"id": "g", "ram": 512}, "host": "h"}  # equal to nothing above
    messages = [{"counter_volume": n, "resource_metadata": meta, "tags": [n]}
                for n, meta in enumerate([shared, shared, other, shared, {**shared, "x": 1}])]
    messages.append({"resource_metadata": shared, "outer": {"resource_metadata": shared}})
    batch = signing.signed_all(messages, "k")
    assert [m["message_signature"] for m in batch] == [
        signing.signature(copy.deepcopy(m), "k") for m in messages]
    assert len(set(m["message_signature"] for m in batch)) == len(messages)
    assert all(signing.verify(m, "k") for m in batch)
