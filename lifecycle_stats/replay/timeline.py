"""`show`: a recording as a readable timeline — when, which instance, what happened."""
from __future__ import annotations

from typing import Any, Iterator

from lifecycle_stats.listeners import nova_notifications
from lifecycle_stats.replay import format as fmt


def names(recording: fmt.Recording) -> dict[str, str]:
    """instance id -> display name (nova metadata) or domain name, whichever was seen."""
    out: dict[str, str] = {}
    for entry in recording.entries:
        data = entry.data
        if entry.source == fmt.INSTANCE and isinstance(data.get("info"), dict):
            out[data["instance_id"]] = data["info"].get("display_name") or data["instance_id"]
        elif entry.source == fmt.LIBVIRT:
            out.setdefault(data["instance_id"], data["domain_name"])
    return out


def header_lines(recording: fmt.Recording) -> list[str]:
    h = recording.header
    return [f"recording {recording.path} (format {h['format_version']})",
            f"  host {h['host']}, {h.get('hypervisor') or 'hypervisor ?'} "
            f"{h.get('qemu_version') or ''}, libvirt {h.get('libvirt_version')}, "
            f"started {h['started_at']}, {len(recording.entries)} entries"]


def lines(recording: fmt.Recording) -> Iterator[str]:
    yield from header_lines(recording)
    known = names(recording)
    last_event = None  # the newest entry that is not an answer
    for entry in recording.entries:
        data = entry.data
        who, what = describe(entry.source, data)
        label = f"{known.get(who, '')} {who[:8]}".strip() if who else ""
        indent = ""
        if "cause" in data:
            indent = "    ↳ "
            if data["cause"] != last_event:  # answers a call made earlier: say which
                what += f"  (answers +{recording.entries[data['cause']].t:.3f}s)"
        else:
            last_event = entry.index
        yield f"  +{entry.t:9.3f}s  {label:<22} {indent}{what}"


def describe(source: str, data: dict[str, Any]) -> tuple[str | None, str]:
    """(instance id or None, what happened) of one entry."""
    if source == fmt.NOVA:
        return _nova_instance(data), (f"nova {data.get('event_type')} "
                                      f"({data.get('topic')}, from {data.get('publisher_id')})")
    if source == fmt.LIBVIRT:
        return data["instance_id"], f"libvirt {data['event']}/{data['detail']}"
    if source == fmt.READING:
        return data["instance_id"], _reading(data.get("reading"))
    if source == fmt.INSTANCE:
        info = data.get("info")
        if data.get("gone"):
            return data["instance_id"], "metadata: domain gone"
        if info is None and data.get("unusable"):
            return data["instance_id"], f"metadata: nova's but unusable ({data['unusable']})"
        if info is None:
            return data["instance_id"], "metadata: not nova's"
        return data["instance_id"], (f"metadata: nova's, {info['flavor']['name']}, "
                                     f"project {info['project_id'][:8]}")
    if source == fmt.POLL:
        return None, f"poll: {len(data['readings'])} active domain(s)"
    return None, f"agent {data.get('state')}"


def _reading(reading: dict[str, Any] | None) -> str:
    if reading is None:
        return "read: domain gone"
    if not reading["active"]:
        return f"read: {reading['state']} (no counters)"
    return (f"read: {reading['state']}, cpu {reading['cpu_time_ns']} ns, "
            f"{len(reading['disks'])} disk(s), {len(reading['vnics'])} vnic(s)")


def _nova_instance(data: dict[str, Any]) -> str | None:
    payload = data.get("payload")
    if not isinstance(payload, dict):
        return None
    if nova_notifications.classify(data.get("event_type")) == "versioned" or \
            "nova_object.data" in payload:
        inner = payload.get("nova_object.data")
        return inner.get("uuid") if isinstance(inner, dict) else None
    value = payload.get("instance_id")
    return value if isinstance(value, str) else None


def notification_line(doc: dict[str, Any], recording: fmt.Recording) -> str:
    """One produced notification, briefly: when, which instance, how it was captured (a
    delete.samples) or what usage it reports (a compute.instance.exists)."""
    payload = doc["payload"]
    if "capture" not in payload:
        return exists_line(doc, recording)
    capture = payload["capture"]
    offset = (fmt.parse_time(doc["timestamp"]) - recording.started_at).total_seconds()
    how = capture["kind"]
    if "age_ms" in capture:
        how += f" age {capture['age_ms']} ms"
    volumes = {s["name"]: s["volume"] for s in payload["samples"]
               if s["resource_id"] == payload["instance_id"]}
    figures = ", ".join(f"{name}={volumes[name]}" for name in ("cpu", "disk.read.bytes")
                        if name in volumes)
    return (f"  +{offset:9.3f}s  {str(payload.get('display_name'))[:12]:<12} "
            f"{payload['instance_id'][:8]}  {how:<22} via {capture['trigger']:<30} "
            f"{len(payload['samples'])} samples{': ' + figures if figures else ''}")


def exists_line(doc: dict[str, Any], recording: fmt.Recording) -> str:
    payload = doc["payload"]
    usage = payload.get("usage") or {}
    offset = (fmt.parse_time(doc["timestamp"]) - recording.started_at).total_seconds()
    what = "final exists" if payload.get("final") else "exists"
    state = "complete" if usage.get("complete") else \
        f"incomplete {usage.get('incomplete_seconds')} s"
    return (f"  +{offset:9.3f}s  {str(payload.get('display_name'))[:12]:<12} "
            f"{str(payload.get('instance_id'))[:8]}  {what:<22} "
            f"cpu_time_ns={usage.get('cpu_time_ns')}, {state}")
