"""Ceilometer-compatible message signatures (`[publisher] telemetry_secret`).

A consumer holding the same secret checks a sample with Ceilometer's own verify_signature
(ceilometer.publisher.utils) or with `lifecycle-stats-verify`. The digest is HMAC-SHA256 over
the message's (key, value) pairs in sorted key order, nested mappings flattened to
"outer:inner" keys, every key and value fed in as its Python str() in UTF-8. Lists are fed
the way Ceilometer feeds them: strings inside become bytes and mappings inside are key-sorted
first, so str() shows b'...' literals. Re-implemented from that description, and checked
against Ceilometer's code in the interop tier.
"""
from __future__ import annotations

import hashlib
import hmac
from typing import Any, Iterable, Mapping

from oslo_config import cfg

SIGNATURE_KEY = "message_signature"
CEILOMETER_DEFAULT_SECRET = "change this for valid signing"

OPTS = [
    cfg.StrOpt("telemetry_secret", secret=True, default=CEILOMETER_DEFAULT_SECRET,
               help="Secret that signs every published sample (HMAC-SHA256 "
                    "`message_signature`, Ceilometer's algorithm). Use the value of "
                    "Ceilometer's own [publisher] telemetry_secret; the default is "
                    "Ceilometer's default. Empty: samples carry an empty signature."),
]


def register_opts(conf: cfg.ConfigOpts) -> None:
    conf.register_opts(OPTS, group="publisher")


def _as_listed(value: Any) -> Any:
    """A list element as Ceilometer prints it: text as bytes, bytes as text, mappings with
    sorted keys, tuples as lists."""
    if isinstance(value, Mapping):
        return {_as_listed(k): _as_listed(v) for k, v in sorted(value.items())}
    if isinstance(value, (list, tuple)):
        return [_as_listed(v) for v in value]
    if isinstance(value, str):
        return value.encode("utf-8")
    if isinstance(value, bytes):
        return value.decode("utf-8")
    return value


def _is_mapping(value: Any) -> bool:
    # dict first: the Mapping ABC's isinstance is slow, and nearly every value is plain
    return isinstance(value, dict) or (value is not None and not isinstance(
        value, (str, int, float)) and isinstance(value, Mapping))


_PLAIN = frozenset({str, int, float, bool, type(None)})


Memo = dict  # (id of a nested mapping, its prefix) -> (the mapping, its pieces)


def _text(message: Mapping[str, Any], prefix: str, out: list[str],
          memo: Memo | None = None) -> None:
    """The digest's text, appended to out: "<key><value>" per (key, value) pair in sorted key
    order, nested mappings as "outer:inner" keys, lists as Ceilometer prints them. Appended
    in place, without a generator per level: signing was half of a delete.samples build.
    With a memo, a nested mapping met again (the same object: samples of one resource share
    their metadata) gives its pieces from the first time."""
    for key in sorted(message):
        value = message[key]
        if type(value) in _PLAIN:
            out.append(f"{prefix}{key}{value}")
        elif _is_mapping(value):
            inner = f"{prefix}{key}:"
            if memo is None:
                _text(value, inner, out)
                continue
            known = memo.get((id(value), inner))
            if known is None:  # the mapping is kept in the memo: its id stays its own
                known = memo[(id(value), inner)] = (value, [])
                _text(value, inner, known[1], memo)
            out.extend(known[1])
        elif isinstance(value, (list, tuple)):
            out.append(f"{prefix}{key}{_as_listed(value)}")
        else:
            out.append(f"{prefix}{key}{value}")


def signature(message: Mapping[str, Any], secret: str | bytes, memo: Memo | None = None) -> str:
    """The hex signature of message (any existing signature excluded); "" without a secret.
    memo: shared by the messages of one batch (signed_all), never kept beyond it."""
    if not secret:
        return ""
    key = secret.encode("utf-8") if isinstance(secret, str) else secret
    # HMAC of the concatenation equals feeding the pieces one by one; one call is cheaper
    if SIGNATURE_KEY in message and not _is_mapping(message[SIGNATURE_KEY]):
        # only that flat name is left out: a mapping under it is flattened and signed
        message = {k: v for k, v in message.items() if k != SIGNATURE_KEY}
    pieces: list[str] = []
    _text(message, "", pieces, memo)
    return hmac.new(key, "".join(pieces).encode("utf-8"), hashlib.sha256).hexdigest()


def signed(message: Mapping[str, Any], secret: str, memo: Memo | None = None) -> dict[str, Any]:
    """A copy of message carrying its signature."""
    out = {k: v for k, v in message.items() if k != SIGNATURE_KEY}
    out[SIGNATURE_KEY] = signature(out, secret, memo)
    return out


def signed_all(messages: Iterable[Mapping[str, Any]], secret: str) -> list[dict[str, Any]]:
    """signed() of each message; the text of a nested mapping shared by several (the same
    object) is made once. The messages must not change meanwhile."""
    memo: Memo = {}
    return [signed(message, secret, memo) for message in messages]


def verify(message: Mapping[str, Any], secret: str) -> bool:
    """True when message's signature matches secret (always, for an empty secret, as
    Ceilometer does)."""
    if not secret:
        return True
    claimed = message.get(SIGNATURE_KEY)
    if not isinstance(claimed, str) or not claimed.isascii():
        return False
    return hmac.compare_digest(signature(message, secret).encode("ascii"),
                               claimed.encode("ascii"))
