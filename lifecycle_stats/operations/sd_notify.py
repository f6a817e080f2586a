"""systemd's readiness protocol (sd_notify(3)) in a few lines of stdlib, no new dependency.

Under `Type=notify` systemd sets NOTIFY_SOCKET; the agent sends READY=1 once it listens,
RELOADING=1/READY=1 around a SIGHUP reload and STOPPING=1 when it starts draining. Outside
systemd (no NOTIFY_SOCKET) every call is a no-op.
"""
from __future__ import annotations

import logging
import os
import socket

LOG = logging.getLogger(__name__)


def notify(state: str, environ=os.environ) -> bool:
    """Send state (e.g. "READY=1") to NOTIFY_SOCKET; True if sent, False if not under systemd."""
    address = environ.get("NOTIFY_SOCKET")
    if not address:
        return False
    if address.startswith("@"):  # abstract namespace
        address = "\0" + address[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.connect(address)
            sock.sendall(state.encode())
    except OSError as exc:  # readiness is advisory: never fail the agent over it
        LOG.warning("could not notify systemd (%s) of %s: %s", address.lstrip("\0"), state, exc)
        return False
    return True
