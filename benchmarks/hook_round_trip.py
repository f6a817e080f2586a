"""The driver's round trip alone: nova's side of the socket against the real HookServer whose
handler answers at once (no libvirt, no broker), one connection per request (drivers before
keep-alive, protocol.request) against the driver's kept connections (connections.py), in
alternating blocks. Prints the time outside the agent's answer (its agent_ms), per request.

    .venv/bin/python benchmarks/hook_round_trip.py [--requests 1000] [--blocks 10]
"""
from __future__ import annotations

import argparse
import datetime
import os
import sys
import tempfile
import time
import uuid

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from benchmarks import _common  # noqa: E402
from lifecycle_stats.listeners import hook_server  # noqa: E402
from lifecycle_stats.listeners.nova import connections, protocol  # noqa: E402
from tests.support.fakes import TriggerRecorder  # noqa: E402
from tests.support.nova import legacy_start_payload  # noqa: E402

HOST = "cmp1"


def delete_start() -> dict:
    return {"v": protocol.VERSION, "event_type": "compute.instance.delete.start",
            "publisher_id": f"compute.{HOST}",
            "payload": legacy_start_payload(str(uuid.uuid4()), HOST)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=1000, help="per way")
    parser.add_argument("--blocks", type=int, default=10)
    args = parser.parse_args()
    path = os.path.join(tempfile.mkdtemp(prefix="lifecycle-stats-rtt-"), "run", "hook.sock")
    server = hook_server.HookServer(
        path, host=HOST, on_trigger=TriggerRecorder(), group="",
        clock=lambda: datetime.datetime.now(datetime.timezone.utc))
    server.start()
    kept = connections.AgentConnections(path)
    ways = {"one connection per request": lambda m: protocol.request(path, m, 2.0),
            "kept connection": lambda m: kept.request(m, 2.0)}
    outside = {way: [] for way in ways}
    try:
        for _ in range(args.blocks):
            for way, send in ways.items():
                for _ in range(args.requests // args.blocks):
                    started = time.perf_counter()
                    reply = send(delete_start())
                    outside[way].append(_common.ms_since(started) - reply["agent_ms"])
    finally:
        kept.close()
        server.stop()
    rows = [[way, s["n"], f"{s['p50']:.3f}", f"{s['p99']:.3f}", f"{s['max']:.3f}"]
            for way, s in ((way, _common.summary(v)) for way, v in outside.items())]
    print("round trip outside the agent's answer, ms")
    print(_common.table(["", "n", "p50", "p99", "max"], rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
