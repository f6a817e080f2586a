"""`lifecycle-stats-replay run --live` as a load generator, on the real RabbitMQ.

A synthetic recording of N legacy delete.start messages, --gap-ms apart, is published in
interleaved rounds three ways: a bare loop of transport._send_notification over the same
messages (the baseline: what the bus takes), live.publish at --speed 0 (back to back, the
replay's own overhead on top), and live.publish at the recorded pace (--speed 1: how close it
keeps to the schedule). A queue of its own is bound to the run's exchange so the broker
really stores every message; queue and exchange are removed at the end. Also: offline replay
(`run`) throughput of a recording of D deletes, each answered by a live read.

    .venv/bin/python benchmarks/replay_live.py [--messages 1000] [--gap-ms 5] [--rounds 3] [--deletes 200]
"""
from __future__ import annotations

import argparse
import datetime
import io
import itertools
import os
import statistics
import sys
import tempfile
import time
import uuid

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import kombu  # noqa: E402
import oslo_messaging  # noqa: E402
from oslo_config import cfg  # noqa: E402

from benchmarks._common import percentile, table  # noqa: E402
from lifecycle_stats.records import DomainReading, Flavor, InstanceInfo  # noqa: E402
from lifecycle_stats.replay import format as fmt  # noqa: E402
from lifecycle_stats.replay import live, player  # noqa: E402
from tests.support import nova  # noqa: E402
from tests.support.guests import NovaGuest  # noqa: E402

HOST = "bench-host"
START = datetime.datetime(2026, 11, 22, tzinfo=datetime.timezone.utc)


def synthetic(path: str, messages: int, answered: bool, gap: float = 0.0) -> fmt.Recording:
    """messages delete.start gap seconds apart; answered: each followed by the read of its
    domain (and its metadata), all at once."""
    per_message = 3 if answered else 1
    times = itertools.chain.from_iterable((i * gap,) * per_message
                                          for i in range(1, messages + 1))
    ticks = itertools.chain([0.0], times)
    with open(path, "wb") as stream:
        writer = fmt.RecordingWriter(stream, {"host": HOST, "started_at": START.isoformat()},
                                     monotonic=lambda: next(ticks))
        for _ in range(messages):
            guest = NovaGuest(domain_name=f"instance-{uuid.uuid4().hex[:6]}")
            index = writer.write(fmt.NOVA, topic="legacy", priority="INFO",
                                 publisher_id=f"compute.{HOST}", event_type=nova.LEGACY,
                                 payload=nova.legacy_payload(guest, HOST),
                                 message_id=str(uuid.uuid4()), timestamp=START.isoformat())
            if answered:
                writer.write(fmt.INSTANCE, cause=index, instance_id=guest.instance_id,
                             gone=False, info=fmt.info_to_data(info(guest)))
                writer.write(fmt.READING, cause=index, instance_id=guest.instance_id,
                             reading=fmt.reading_to_data(reading(guest)))
    return fmt.read(path)


def info(guest: NovaGuest) -> InstanceInfo:
    return InstanceInfo(
        instance_id=guest.instance_id, domain_name=guest.domain_name, display_name="bench",
        flavor=Flavor("m1.nano", 32, 1, 0, 0, 1), user_id=guest.user_id, user_name="u",
        project_id=guest.project_id, project_name="p", image_ref=guest.image_ref,
        root_type="image", creation_time=None, metadata_version="1.1")


def reading(guest: NovaGuest) -> DomainReading:
    return DomainReading(instance_id=guest.instance_id, domain_name=guest.domain_name,
                         state="running", active=True, cpu_time_ns=10**9, vcpus=1,
                         memory_kib=32768, memory_max_kib=32768, disks=(), vnics=(),
                         read_at=START, path="single")


def bare_loop(recording: fmt.Recording, transport, exchange: str) -> float:
    """Seconds to send every nova entry with nothing else around it."""
    target = oslo_messaging.Target(exchange=exchange, topic="notifications.info")
    started = time.perf_counter()
    for entry in recording.entries:
        data = entry.data
        transport._send_notification(target, {}, {
            "message_id": data["message_id"], "publisher_id": data["publisher_id"],
            "event_type": data["event_type"], "priority": "INFO", "payload": data["payload"],
            "timestamp": data["timestamp"]}, version=2.0, retry=3)
    return time.perf_counter() - started


def measure_live(recording: fmt.Recording, url: str, rounds: int):
    """Seconds per round of each path, and the --speed 1 lags; removes its queue/exchange."""
    run = uuid.uuid4().hex[:8]
    exchange, queue = f"lst-bench-nova-{run}", f"lst-bench-replay-{run}"
    amqp = kombu.Connection("amqp://" + url.split("://", 1)[1], connect_timeout=5)
    channel = amqp.channel()
    kombu.Queue(queue, kombu.Exchange(exchange, "topic", durable=False),
                routing_key="notifications.info", channel=channel).declare()
    transport = oslo_messaging.get_notification_transport(cfg.ConfigOpts(), url=url)
    rows = {"bare loop (baseline)": [], "run --live --speed 0": [], "run --live --speed 1": []}
    lags: list[float] = []
    try:
        bare_loop(recording, transport, exchange)  # warm-up: connection, exchange
        channel.queue_purge(queue)
        paths = list(rows)
        for round_number in range(rounds):  # the order rotates: no path always first
            for path in paths[round_number % 3:] + paths[:round_number % 3]:
                if path.startswith("bare"):
                    rows[path].append(bare_loop(recording, transport, exchange))
                else:
                    summary = live.publish(recording, transport, speed=float(path[-1]),
                                           exchange=exchange, progress=io.StringIO())
                    rows[path].append(summary.seconds)
                    lags.extend(summary.lags_ms if path.endswith("1") else ())
                channel.queue_purge(queue)  # every path meets an empty queue
    finally:
        channel.queue_delete(queue)
        channel.exchange_delete(exchange)
        amqp.release()
        transport.cleanup()
    return rows, lags


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--messages", type=int, default=1000)
    parser.add_argument("--gap-ms", type=float, default=5.0,
                        help="recorded spacing of the messages (5 ms: 200/s at --speed 1)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--deletes", type=int, default=200)
    parser.add_argument("--url", default="rabbit://guest:guest@127.0.0.1:5672/")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        recording = synthetic(os.path.join(tmp, "load.lsrec"), args.messages, answered=False,
                              gap=args.gap_ms / 1000)
        rows, lags = measure_live(recording, args.url, args.rounds)
        offline = synthetic(os.path.join(tmp, "offline.lsrec"), args.deletes, answered=True)
        started = time.perf_counter()
        counters = player.run(offline, io.StringIO())
        offline_s = time.perf_counter() - started
    base = statistics.median(rows["bare loop (baseline)"])
    print(f"{args.messages} delete.start on real RabbitMQ, {args.rounds} interleaved rounds "
          f"(median seconds per round)")
    print(table(["path", "s", "msg/s", "x baseline"],
                [[name, statistics.median(v), args.messages / statistics.median(v),
                  f"{statistics.median(v) / base:.2f}"] for name, v in rows.items()]))
    print(f"--speed 1 lag behind schedule: p50 {statistics.median(lags):.2f} ms, "
          f"p99 {percentile(lags, 99):.2f} ms, max {max(lags):.2f} ms "
          f"(recorded span {recording.entries[-1].t - recording.entries[0].t:.2f} s)")
    print(f"offline run: {args.deletes} deletes -> {counters.get('replay.emitted')} "
          f"notifications in {offline_s:.2f} s ({args.deletes / offline_s:.0f} deletes/s; "
          f"each an fsynced spool put)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
