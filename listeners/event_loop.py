"""libvirt's process-wide event loop: registered once, run on one daemon thread.

Every libvirt event (lifecycle, metadata, a connection's close notice, keepalive) is delivered
on this thread, so nothing here may block; the lifecycle listener only enqueues from it.
"""
from __future__ import annotations

import logging
import threading
import time

import libvirt

from lifecycle_stats import threads

LOG = logging.getLogger("lifecycle_stats.listeners.libvirt_events")  # where operators look

_loop_lock = threading.Lock()
_loop_started = False  # libvirt's event implementation is process-wide, so is this flag
_loop_thread: threading.Thread | None = None


def ensure_event_loop() -> None:
    """Register libvirt's default event implementation and run it on a daemon thread.

    Idempotent and thread-safe. It MUST be called before the process opens any libvirt
    connection: keepalive and close callbacks only work on connections opened after the
    event implementation was registered. The agent calls it first thing.
    """
    global _loop_started, _loop_thread
    with _loop_lock:
        if _loop_started:
            return
        libvirt.virEventRegisterDefaultImpl()
        _loop_thread = threading.Thread(target=_run_event_loop, name="libvirt-event-loop",
                                        daemon=True)
        _loop_thread.start()
        _loop_started = True


def event_loop_state() -> str:
    return threads.state(_loop_thread, stopping=False)


def _run_event_loop() -> None:
    while True:
        try:
            libvirt.virEventRunDefaultImpl()
        except Exception:  # keep the process's only event loop alive whatever happens
            LOG.exception("libvirt event loop iteration failed")
            time.sleep(0.1)
