"""Process and broker figures for the benchmarks: CPU seconds and RSS from /proc, RabbitMQ's
global counters through `rabbitmqctl eval`, and a sampler over a measured window."""
from __future__ import annotations

import os
import pathlib
import re
import subprocess
import threading
import time

CLK_TCK = os.sysconf("SC_CLK_TCK")


def beam_pid() -> int:
    for entry in pathlib.Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if (entry / "comm").read_text().strip() == "beam.smp":
                    return int(entry.name)
            except OSError:
                continue
    raise SystemExit("no beam.smp process: is RabbitMQ running (tools/start_rabbitmq.sh)?")


def cpu_seconds(pid: int) -> float:
    fields = pathlib.Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime + stime


def rss_mib(pid: int, key: str = "VmRSS") -> float:
    """A /proc/<pid>/status memory figure (VmRSS, VmHWM) in MiB."""
    for line in pathlib.Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


def broker_counters() -> dict[str, int]:
    """RabbitMQ's global counters (all traffic on the broker); {} when rabbitmqctl fails."""
    try:
        out = subprocess.run(["rabbitmqctl", "eval", "rabbit_global_counters:overview()."],
                             capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.TimeoutExpired):
        return {}
    found: dict[str, int] = {}
    for name in ("messages_delivered_total", "messages_routed_total",
                 "messages_received_total"):
        found[name] = sum(int(v) for v in re.findall(rf"{name} => (\d+)", out))
    return found if out else {}


class Sampler:
    """Broker CPU/RSS (and the routers' CPU) over a window; RSS peak sampled every 0.5 s."""

    def __init__(self, beam: int, routers: list[int]):
        self.beam, self.routers = beam, routers
        self.rss_peak = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)

    def __enter__(self) -> "Sampler":
        self.counters0 = broker_counters()
        self.t0, self.cpu0 = time.monotonic(), cpu_seconds(self.beam)
        self.router0 = sum(cpu_seconds(p) for p in self.routers)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.elapsed = time.monotonic() - self.t0
        self.cpu = cpu_seconds(self.beam) - self.cpu0
        self.router_cpu = sum(cpu_seconds(p) for p in self.routers) - self.router0
        self._stop.set()
        self._thread.join()
        counters1 = broker_counters()
        self.broker = {k: counters1[k] - self.counters0.get(k, 0) for k in counters1}

    def _watch(self) -> None:
        while not self._stop.wait(0.5):
            self.rss_peak = max(self.rss_peak, rss_mib(self.beam))
