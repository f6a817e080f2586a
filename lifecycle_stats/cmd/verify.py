"""lifecycle-stats-verify: check the message signatures of published samples.

Reads JSON lines (the file conduit's output, or notifications dumped one per line: every
element of a `payload.samples` list is checked) or listens for UDP datagrams (the udp conduit,
or Ceilometer's own UDP publisher). The secret comes from `[publisher] telemetry_secret` of
--config-file (the agent's or Ceilometer's), or from --secret-file; never from the command line,
where other users would see it. No secret is an error, never a fallback: an empty or missing
secret file, or a config that sets no (or an empty) telemetry_secret -- Ceilometer's public
default would make a forged record pass. Exit 0: everything checked was valid; 1: an invalid signature
or an unreadable record; 2: usage error or nothing to check.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import socket
import sys
from typing import Any, Iterable, Iterator

import msgpack
from oslo_config import cfg

from lifecycle_stats.emitters.udp import parse_target

from lifecycle_stats.publishing import signing
from lifecycle_stats.exceptions import ConfigError


@dataclasses.dataclass
class Tally:
    valid: int = 0
    invalid: int = 0
    unreadable: int = 0

    @property
    def checked(self) -> int:
        return self.valid + self.invalid


def signed_messages(record: Any) -> Iterator[dict]:
    """The signed dicts in one record: a notification's samples, else the record itself."""
    payload = record.get("payload") if isinstance(record, dict) else None
    if isinstance(payload, dict) and isinstance(payload.get("samples"), list):
        yield from payload["samples"]
    elif isinstance(record, dict):
        yield record
    else:
        raise ValueError(f"not a JSON object: {type(record).__name__}")


def check(records: Iterable[tuple[str, Any]], secret: str, tally: Tally, out) -> None:
    for where, record in records:
        try:
            messages = list(signed_messages(record))
        except ValueError as exc:
            tally.unreadable += 1
            print(f"{where}: unreadable: {exc}", file=out)
            continue
        for message in messages:
            if signing.verify(message, secret):
                tally.valid += 1
            else:
                tally.invalid += 1
                print(f"{where}: INVALID signature on {message.get('message_id')} "
                      f"({message.get('counter_name', message.get('name'))})", file=out)


def json_lines(path: str, tally: Tally, out) -> Iterator[tuple[str, Any]]:
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                yield f"{path}:{number}", json.loads(line)
            except ValueError as exc:
                tally.unreadable += 1
                print(f"{path}:{number}: unreadable: {exc}", file=out)


def datagrams(target: str, count: int, timeout: float, tally: Tally,
              out) -> Iterator[tuple[str, Any]]:
    host, port = parse_target(target, option="--udp")
    family, _, _, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_DGRAM)[0]
    with socket.socket(family, socket.SOCK_DGRAM) as sock:
        sock.bind(address)
        sock.settimeout(timeout)
        for number in range(1, count + 1):
            try:
                data, sender = sock.recvfrom(65535)
            except socket.timeout:
                print(f"udp: timed out after {number - 1} of {count} datagrams", file=out)
                return
            try:
                yield f"udp#{number} from {sender[0]}", msgpack.unpackb(data, raw=False)
            except (ValueError, msgpack.UnpackException) as exc:
                tally.unreadable += 1
                print(f"udp#{number}: unreadable: {exc}", file=out)


class SecretError(Exception):
    """No secret to check with: checking would report anything, forgeries included, valid."""


def read_secret(args) -> str:
    if args.secret_file:
        with open(args.secret_file, encoding="utf-8") as handle:
            secret = handle.read().strip()
        if not secret:
            raise SecretError(f"the secret file {args.secret_file} is empty")
        return secret
    conf = cfg.ConfigOpts()
    signing.register_opts(conf)
    conf(["--config-file", args.config_file], project="lifecycle-stats",
         default_config_files=[])
    where = conf.get_location("telemetry_secret", "publisher")
    if where is None or where.location == cfg.Locations.opt_default:
        raise SecretError(f"{args.config_file} sets no [publisher] telemetry_secret: the "
                          f"agent would sign with Ceilometer's public default, which proves "
                          f"nothing (put that value in a --secret-file to check it anyway)")
    secret = conf.publisher.telemetry_secret
    if not secret:
        raise SecretError(f"[publisher] telemetry_secret in {args.config_file} is empty")
    return secret


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="lifecycle-stats-verify", description=__doc__.split("\n")[0])
    key = p.add_mutually_exclusive_group(required=True)
    key.add_argument("--config-file", help="file with [publisher] telemetry_secret")
    key.add_argument("--secret-file", help="file holding only the secret")
    p.add_argument("files", nargs="*", help="JSON-lines files to check")
    p.add_argument("--udp", metavar="udp://HOST:PORT", help="listen for datagrams instead")
    p.add_argument("--count", type=int, default=1, help="datagrams to wait for (--udp)")
    p.add_argument("--timeout", type=float, default=10.0, help="seconds per datagram (--udp)")
    return p


def main(argv=None, out=None) -> int:
    out = out or sys.stdout
    args = parser().parse_args(argv)
    if bool(args.files) == bool(args.udp):
        print("lifecycle-stats-verify: give JSON-lines files or --udp, not both", file=sys.stderr)
        return 2
    try:
        secret = read_secret(args)
    except (OSError, cfg.Error, SecretError) as exc:
        print(f"lifecycle-stats-verify: cannot read the secret: {exc}", file=sys.stderr)
        return 2
    tally = Tally()
    try:
        if args.udp:
            check(datagrams(args.udp, args.count, args.timeout, tally, out), secret, tally, out)
        for path in args.files:
            check(json_lines(path, tally, out), secret, tally, out)
    except (OSError, ValueError, ConfigError) as exc:
        print(f"lifecycle-stats-verify: {exc}", file=sys.stderr)
        return 2
    print(f"checked {tally.checked}: valid {tally.valid}, invalid {tally.invalid}, "
          f"unreadable {tally.unreadable}", file=out)
    if not tally.checked and not tally.unreadable:
        return 2
    return 0 if not tally.invalid and not tally.unreadable else 1
