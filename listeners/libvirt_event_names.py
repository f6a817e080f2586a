"""libvirt's numeric domain event codes as names (records.LifecycleEvent.event / .detail)."""
from __future__ import annotations

_EVENTS = ("defined", "undefined", "started", "suspended", "resumed", "stopped", "shutdown",
           "pmsuspended", "crashed")
# Index = libvirt's VIR_DOMAIN_EVENT_<EVENT>_<DETAIL> value; name = <DETAIL> lower-cased.
_DETAILS = {
    "defined": ("added", "updated", "renamed", "from_snapshot"),
    "undefined": ("removed", "renamed"),
    "started": ("booted", "migrated", "restored", "from_snapshot", "wakeup"),
    "suspended": ("paused", "migrated", "ioerror", "watchdog", "restored", "from_snapshot",
                  "api_error", "postcopy", "postcopy_failed"),
    "resumed": ("unpaused", "migrated", "from_snapshot", "postcopy", "postcopy_failed"),
    "stopped": ("shutdown", "destroyed", "crashed", "migrated", "saved", "failed",
                "from_snapshot"),
    "shutdown": ("finished", "guest", "host"),
    "pmsuspended": ("memory", "disk"),
    "crashed": ("panicked", "crashloaded"),
}
_METADATA_TYPES = ("description", "title", "element")  # VIR_DOMAIN_METADATA_*
METADATA_CHANGED = "metadata_changed"


def _name(names: tuple[str, ...], code: int) -> str:
    return names[code] if 0 <= code < len(names) else f"unknown-{code}"


def translate_lifecycle(event: int, detail: int) -> tuple[str, str]:
    """(event, detail) names for a VIR_DOMAIN_EVENT_* code and its detail code."""
    name = _name(_EVENTS, event)
    return name, _name(_DETAILS.get(name, ()), detail)


def translate_metadata(mtype: int) -> tuple[str, str]:
    """(event, detail) names for a metadata change of VIR_DOMAIN_METADATA_<TYPE> mtype."""
    return METADATA_CHANGED, _name(_METADATA_TYPES, mtype)
