"""How a long-lived thread is doing, in the words the status file uses."""
from __future__ import annotations

import threading

NOT_STARTED = "not started"
ALIVE = "alive"
STOPPED = "stopped"
DEAD = "dead"  # ended although nobody stopped it: a bug the status command must show


def state(thread: threading.Thread | None, stopping: bool) -> str:
    if thread is None:
        return NOT_STARTED
    if thread.is_alive():
        return ALIVE
    return STOPPED if stopping else DEAD
