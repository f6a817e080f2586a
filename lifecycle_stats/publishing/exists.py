"""Build `compute.instance.exists` with usage, per the contract in doc/billing.md.

Nova's legacy exists fields the agent can know (from the domain's nova metadata), the audit
window in nova's own format (`str(datetime)`: "2026-11-22 01:00:00"), `bandwidth` in nova's
historical shape, and `usage`: the counter growth read and not reported in an earlier exists,
up to the window's end, across every QEMU process of the instance, with every interval a
process ran unread and why (doc/billing.md). A billing consumer sums `usage` over all exists
of an instance, deduplicated by message_id.
"""
from __future__ import annotations

import datetime
from typing import Any

from lifecycle_stats.publishing import samples
from lifecycle_stats.records import UTC, InstanceInfo, Notification, Usage, isotime

EXISTS = "compute.instance.exists"
# Where the window came from: the agent's own [usage] audit_period, nova's own exists
# (enrichment), or the instance's deletion (the last, partial period: final).
AGENT_PERIOD, NOVA_AUDIT, DELETED = "agent_period", "nova_audit", "deleted"


def nova_time(moment: datetime.datetime) -> str:
    """nova's audit_period_* format: str() of a naive UTC datetime."""
    return str(moment.astimezone(UTC).replace(tzinfo=None))


def exists_message_id(instance_id: str, begin: datetime.datetime,
                      end: datetime.datetime | None) -> str:
    """Same window, same id (agent period or nova's audit of the same window); the final,
    partial period of a deleted instance has one id whatever its end."""
    return samples.deterministic_id(instance_id, EXISTS, isotime(begin),
                                    "final" if end is None else isotime(end))


def instance_fields(info: InstanceInfo, host: str) -> dict[str, Any]:
    flavor = info.flavor
    return {
        "instance_id": info.instance_id, "tenant_id": info.project_id,
        "user_id": info.user_id, "display_name": info.display_name,
        "hostname": info.display_name, "instance_type": flavor.name,
        "memory_mb": flavor.memory_mb, "vcpus": flavor.vcpus, "root_gb": flavor.root_gb,
        "ephemeral_gb": flavor.ephemeral_gb, "disk_gb": flavor.root_gb + flavor.ephemeral_gb,
        "host": host, "node": host, "image_ref": info.image_ref,
        "created_at": info.creation_time, "domain_name": info.domain_name,
    }


def usage_fields(used: Usage) -> dict[str, Any]:
    missed = [{"last_read_at": isotime(m.last_read_at), "ended_at": isotime(m.ended_at),
               "seconds": round(m.seconds, 3), "reason": m.reason} for m in used.unobserved]
    return {
        "cpu_time_ns": used.cpu_time_ns,
        "disks": {dev: dict(stats) for dev, stats in used.disks.items()},
        "vnics": {dev: dict(stats) for dev, stats in used.vnics.items()},
        "observed_seconds": round(used.observed_seconds, 3),
        "processes": used.processes,
        "first_read_at": isotime(used.first_read_at) if used.first_read_at else None,
        "last_read_at": isotime(used.last_read_at) if used.last_read_at else None,
        "complete": not missed,
        "usage_incomplete": missed,
        "incomplete_seconds": round(sum(m["seconds"] for m in missed), 3),
        "window": {"begin": isotime(used.begin), "end": isotime(used.end)},
    }


def bandwidth(used: Usage) -> dict[str, dict[str, int]]:
    """nova's historical {<vnic>: {"bw_in": B, "bw_out": B}} (XenAPI-only there)."""
    return {dev: {"bw_in": stats["rx_bytes"], "bw_out": stats["tx_bytes"]}
            for dev, stats in used.vnics.items()}


def exists(*, info: InstanceInfo, used: Usage, begin: datetime.datetime,
           end: datetime.datetime, source: str, host: str, publisher_id: str,
           now: datetime.datetime, extra: dict[str, Any] | None = None) -> Notification:
    final = source == DELETED
    message_id = exists_message_id(info.instance_id, begin, None if final else end)
    payload = {
        **instance_fields(info, host),
        "audit_period_beginning": nova_time(begin),
        "audit_period_ending": nova_time(end),
        "message_id": message_id,
        "final": final,
        "period_source": source,
        "bandwidth": bandwidth(used),
        "usage": usage_fields(used),
        **(extra or {}),
    }
    return Notification(event_type=EXISTS, priority="INFO", publisher_id=publisher_id,
                        payload=payload, message_id=message_id, timestamp=isotime(now))
