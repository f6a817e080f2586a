"""What meter parity and signing cost a flush: building one delete.samples payload.

Times payloads.delete_samples + payloads.validate (the CPU part of a flush, no libvirt, no
spool) for one instance with D disks and N vNICs, in four interleaved variants measured in the
same run: the Ceilometer-parity catalogue signed (the default), unsigned (empty secret), signed
without legacy meters, and the ceilometer/udp/file conduits' extra work (meter messages, signed
again). Prints medians, p99 and ratios to the unsigned variant.

    .venv/bin/python benchmarks/payload_build.py [--disks 2] [--vnics 2] [--rounds 2000]
"""
from __future__ import annotations

import argparse
import datetime
import os
import statistics
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
    sys.path.insert(0, REPO)

from lifecycle_stats.publishing import meter_messages, payloads  # noqa: E402
from lifecycle_stats.records import (  # noqa: E402
    StopAnnouncement, DiskStats, DomainReading, Flavor, InstanceInfo, VnicStats,
)

UTC = datetime.timezone.utc
NOW = datetime.datetime(2026, 11, 22, 3, 0, tzinfo=UTC)
UUID = "7a1e8d2c-3b4f-4e5a-9c6d-1f2e3d4c5b6a"


def instance(disks: int, vnics: int) -> tuple[InstanceInfo, DomainReading]:
    info = InstanceInfo(
        instance_id=UUID, domain_name="instance-0000002a", display_name="web-1",
        flavor=Flavor("m1.small", 2048, 20, 0, 0, 2, id="f1"), user_id="u" * 32,
        user_name="alice", project_id="p" * 32, project_name="shop", image_ref="img",
        root_type="image", creation_time=None, metadata_version="1.1")
    reading = DomainReading(
        instance_id=UUID, domain_name="instance-0000002a", state="running", active=True,
        cpu_time_ns=10 ** 12, vcpus=2, memory_kib=2 << 20, memory_max_kib=2 << 20,
        disks=tuple(DiskStats(f"vd{chr(97 + i)}", 1, 2, 3, 4, 5, 6, 7, 8, 9)
                    for i in range(disks)),
        vnics=tuple(VnicStats(f"tap{i}", 1, 2, 3, 4, 5, 6, 7, 8) for i in range(vnics)),
        read_at=NOW, path="single", state_code=1,
        memory_stats={"actual": 2 << 20, "available": 2 << 20, "usable": 1 << 20, "rss": 1 << 19,
                      "swap_in": 0, "swap_out": 0})
    return info, reading


def build(info, reading, **options):
    trigger = StopAnnouncement(instance_id=UUID, event_type="compute.instance.delete.start",
                            host="cmp1", received_at=NOW, announced_at=NOW)
    note = payloads.delete_samples(kind=payloads.FINAL, trigger=trigger, info=info,
                                   reading=reading, host="cmp1", publisher_id="p", now=NOW,
                                   **options)
    payloads.validate(note)
    return note


def main(argv=None) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--disks", type=int, default=2)
    parser.add_argument("--vnics", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=2000)
    args = parser.parse_args(argv)
    info, reading = instance(args.disks, args.vnics)
    signed_note = build(info, reading, telemetry_secret="s")
    variants = {
        "unsigned": lambda: build(info, reading, telemetry_secret=""),
        "signed (default)": lambda: build(info, reading, telemetry_secret="s"),
        "signed, no legacy": lambda: build(info, reading, telemetry_secret="s",
                                           legacy_meters=False),
        "meter messages": lambda: list(meter_messages.from_notification(signed_note, "s")),
    }
    times: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(args.rounds):
        for name, run in variants.items():
            began = time.perf_counter()
            run()
            times[name].append((time.perf_counter() - began) * 1000)
    count = len(signed_note.payload["samples"])
    print(f"one instance, {args.disks} disks, {args.vnics} vNICs: {count} samples "
          f"(legacy on); {args.rounds} interleaved rounds, ms")
    base = statistics.median(times["unsigned"])
    print(f"{'variant':<20}{'median':>9}{'p99':>9}{'÷ unsigned':>12}")
    for name, values in times.items():
        ordered = sorted(values)
        p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]
        median = statistics.median(values)
        print(f"{name:<20}{median:>9.3f}{p99:>9.3f}{median / base:>11.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
