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
