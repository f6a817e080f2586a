"""The wire between the driver inside nova-compute and the agent's hook server.

Requests and replies on a local unix socket, each one frame: a 4-byte big-endian length, then
a msgpack map. A connection carries one request, then its reply, then maybe the next request:
an agent that keeps connections open says so in every reply (KEEP, the seconds it keeps an
idle one); without it, the connection ends with the reply. Both are version 1: a driver that
sends one request per connection, and an agent that closes after each reply, still work with
the other side's newer copy. This module is imported by nova_driver INSIDE
nova-compute, so it imports only the standard library and msgpack (which nova already has
through oslo.serialization); it must never import the agent's core, eventlet or libvirt.

Every read and write runs against one deadline (a monotonic time): socket timeouts, never
eventlet.Timeout, so the same code is bounded under native threads and green sockets alike.
"""
from __future__ import annotations

import socket
import struct
import time

import msgpack

VERSION = 1
DEFAULT_SOCKET_PATH = "/run/lifecycle-stats/hook.sock"
MAX_FRAME = 1024 * 1024  # nova's .start payloads are a few KiB; more is not nova
_HEADER = struct.Struct("!I")

# THE table of what nova announces before a domain's QEMU process ends, in the thread that
# then ends it (read from nova/compute/manager.py, master; doc/architecture.md §2 and the
# "closing reads" section): the agent reads the counters then (while nova waits, through the
# driver). "delete" alone means the instance ends; the others end one QEMU process (usage
# accounting). Here, in the module the driver inside nova imports, so nova's side stays
# stdlib-only; listeners.nova_notifications and the router derive their tables from it.
# action -> (legacy suffix after "compute.instance.", versioned suffix after "instance.")
ACTION_EVENTS: dict[str, tuple[str, str]] = {
    "delete": ("delete.start", "delete.start"),
    "power_off": ("power_off.start", "power_off.start"),
    "reboot": ("reboot.start", "reboot.start"),
    "rebuild": ("rebuild.start", "rebuild.start"),
    "shelve": ("shelve.start", "shelve.start"),
    "shelve_offload": ("shelve_offload.start", "shelve_offload.start"),
    "rescue": ("rescue.start", "rescue.start"),
    "unrescue": ("unrescue.start", "unrescue.start"),
    "resize": ("resize.start", "resize.start"),  # source host, before migrate_disk_and_power_off
    "suspend": ("suspend.start", "suspend.start"),
    # delete with [DEFAULT] reclaim_instance_interval: soft_delete_instance powers the guest
    # off hard (libvirt has no soft_delete); the instance may be restored, the real delete
    # (delete.start) comes at reclaim. A closing read, not a delete.
    "soft_delete": ("soft_delete.start", "soft_delete.start"),
    # Destination host of a resize revert: revert_resize (and the cross-cell
    # revert_snapshot_based_resize_at_dest) sends nova's mid-period exists first, then tears
    # down networks and calls driver.destroy. resize.revert.start comes later, from the
    # source host (finish_revert_resize), when the destination's domain is gone.
    "resize_revert": ("exists", "exists"),
}
# Announcements nova also sends for other reasons stand for their action only while the
# instance's task_state (legacy payload "state_description", versioned "task_state") is this.
ACTION_TASK_STATES: dict[str, str] = {"resize_revert": "resize_reverting"}
ACTIONS = tuple(ACTION_EVENTS)
LEGACY = "legacy"
VERSIONED = "versioned"
START_EVENTS: dict[str, tuple[str, str]] = {  # event type -> (action, format)
    **{f"compute.instance.{legacy}": (action, LEGACY)
       for action, (legacy, _) in ACTION_EVENTS.items()},
    **{f"instance.{versioned}": (action, VERSIONED)
       for action, (_, versioned) in ACTION_EVENTS.items()},
}


def action_of(event_type: object, payload: object) -> tuple[str, str] | None:
    """(action, format) when this notification announces a process-ending action, else None:
    START_EVENTS, with ACTION_TASK_STATES checked in the payload."""
    found = START_EVENTS.get(event_type) if isinstance(event_type, str) else None
    if found is None:
        return None
    action, form = found
    wanted = ACTION_TASK_STATES.get(action)
    if wanted is None:
        return found
    fields = payload
    if form == VERSIONED and isinstance(payload, dict):
        fields = payload.get("nova_object.data")
    key = "task_state" if form == VERSIONED else "state_description"
    return found if isinstance(fields, dict) and fields.get(key) == wanted else None


# Reply field: the agent serves further requests on this connection until it has been idle
# this many seconds (absent: it closes the connection after this reply).
KEEP = "keep"

# Reply statuses. CAPTURED: the delete's notification is spooled (or already was); CACHED:
# a non-delete action's reading is cached; IGNORED: not an instance of this host; the rest
# are failures the driver only logs.
CAPTURED = "captured"
CACHED = "cached"
IGNORED = "ignored"
REJECTED = "rejected"
BUSY = "busy"
ERROR = "error"
STATUSES = frozenset({CAPTURED, CACHED, IGNORED, REJECTED, BUSY, ERROR})


class ProtocolError(Exception):
    """A frame that is not ours: wrong length, not msgpack, not a map, wrong version."""


class Closed(ProtocolError):
    """The peer closed the connection between frames (nothing of a frame was read)."""


class DeadlineExceeded(socket.timeout):
    """The deadline passed before the peer answered."""


def encode(message: dict) -> bytes:
    body = msgpack.packb(message, use_bin_type=True, default=str)
    if len(body) > MAX_FRAME:
        raise ProtocolError(f"frame of {len(body)} bytes is larger than {MAX_FRAME}")
    return _HEADER.pack(len(body)) + body


def decode(body: bytes) -> dict:
    try:
        message = msgpack.unpackb(body, raw=False, strict_map_key=True)
    except Exception as exc:  # msgpack raises several unrelated types for bad input
        raise ProtocolError(f"not a msgpack frame: {type(exc).__name__}") from None
    if not isinstance(message, dict):
        raise ProtocolError(f"frame holds a {type(message).__name__}, not a map")
    if message.get("v") != VERSION:
        raise ProtocolError(f"protocol version {message.get('v')!r} is not {VERSION}")
    return message


def send_frame(sock: socket.socket, message: dict, deadline: float) -> None:
    set_remaining(sock, deadline)
    sock.sendall(encode(message))


def read_frame(sock: socket.socket, deadline: float) -> dict:
    (length,) = _HEADER.unpack(_read_exactly(sock, _HEADER.size, deadline, at_boundary=True))
    if length > MAX_FRAME:
        raise ProtocolError(f"frame of {length} bytes announced, more than {MAX_FRAME}")
    return decode(_read_exactly(sock, length, deadline))


def _read_exactly(sock: socket.socket, count: int, deadline: float,
                  at_boundary: bool = False) -> bytes:
    chunks, missing = [], count
    while missing:
        set_remaining(sock, deadline)
        chunk = sock.recv(min(missing, 65536))
        if not chunk:
            if at_boundary and missing == count:
                raise Closed("peer closed the connection")
            raise ProtocolError(f"peer closed with {missing} of {count} bytes unread")
        chunks.append(chunk)
        missing -= len(chunk)
    return b"".join(chunks)


def set_remaining(sock: socket.socket, deadline: float) -> None:
    remaining = deadline - time.monotonic()
    if remaining <= 0:
        raise DeadlineExceeded("deadline passed")
    sock.settimeout(remaining)


def request(path: str, message: dict, timeout: float) -> dict:
    """One request on a connection of its own (as drivers before KEEP did; the driver now
    keeps connections: connections.py): connect to ``path``, send ``message``, return the
    reply; everything within ``timeout`` seconds. Raises OSError (incl. socket.timeout) or
    ProtocolError."""
    deadline = time.monotonic() + timeout
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        set_remaining(sock, deadline)
        sock.connect(path)
        send_frame(sock, message, deadline)
        return read_frame(sock, deadline)
