"""One poll cycle: our bulk Inspector.poll() against Ceilometer's per-instance libvirt reads.

Creates N paused nova-like guests on the real daemon, then runs both paths in interleaved
rounds in this process and prints median / p99 wall and client CPU (time.process_time) ms.
The per-instance path reads an instance the way Ceilometer's libvirt inspector does:
lookupByUUIDString, info() (shut-off check), memoryStats(), domainListGetStats([dom], 0)
(0 = every group, as Ceilometer passes; --ceilometer-groups cpu asks CPU_TOTAL|VCPU only),
XMLDesc + parse + interfaceStats per vNIC, and XMLDesc + parse + blockStats per disk.
Guests and images are removed even on Ctrl-C or SIGTERM; a killed run's guests are named
"lst-<pid>-bench<n>" and swept by novalike.sweep_leftovers (here at start, and by the tests).

    .venv/bin/python benchmarks/poll_cycle.py [--guests 20] [--rounds 15]
"""
from __future__ import annotations

import argparse
import concurrent.futures
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET

import libvirt

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from lifecycle_stats.testing import guests as novalike  # noqa: E402
from lifecycle_stats.exceptions import DomainGone, HypervisorError  # noqa: E402
from lifecycle_stats.reading.hypervisor import Hypervisor  # noqa: E402
from lifecycle_stats.reading.inspector import Inspector  # noqa: E402

CEILOMETER_GROUPS = {"all": 0,
                     "cpu": libvirt.VIR_DOMAIN_STATS_CPU_TOTAL | libvirt.VIR_DOMAIN_STATS_VCPU}
PREFIX = "lst"  # novalike's "{prefix}-{pid}-{n}" names: sweep_leftovers removes a killed run's


def make_guest(hv: Hypervisor, workdir: str, made: list[str], n: int) -> str:
    pid = os.getpid()
    image = os.path.join(workdir, f"{n}.qcow2")
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", image, "16M"], check=True)
    guest = novalike.NovaGuest(domain_name=f"{PREFIX}-{pid}-bench{n}", display_name=f"bench-{n}",
                               disk_paths=(image,), vnics=(f"b{pid % 10000}x{n}",))
    made.append(guest.instance_id)  # before creating: cleanup must not miss a half-made one
    xml = novalike.domain_xml(guest, "qemu")
    hv.call(lambda conn: conn.createXML(xml, libvirt.VIR_DOMAIN_START_PAUSED))
    return guest.instance_id


def remove_guest(hv: Hypervisor, instance_id: str) -> None:
    """Destroy (transient: that removes it); survives a libvirtd restart meanwhile."""
    try:
        hv.call(lambda conn: conn.lookupByUUIDString(instance_id).destroy(), instance_id)
    except DomainGone:
        pass
    except HypervisorError as exc:
        print(f"could not remove {instance_id}: {exc}", file=sys.stderr)


def ceilometer_read(conn: libvirt.virConnect, instance_id: str, groups: int = 0) -> dict:
    """One instance, read the way Ceilometer's libvirt inspector reads it."""
    dom = conn.lookupByUUIDString(instance_id)
    if dom.info()[0] == libvirt.VIR_DOMAIN_SHUTOFF:
        return {}
    memory = dom.memoryStats()
    stats = conn.domainListGetStats([dom], groups)[0][1]
    tree = ET.fromstring(dom.XMLDesc(0))
    vnics = {t.get("dev"): dom.interfaceStats(t.get("dev"))
             for t in tree.findall("devices/interface/target")}
    tree = ET.fromstring(dom.XMLDesc(0))
    disks = {t.get("dev"): dom.blockStats(t.get("dev"))
             for t in tree.findall("devices/disk/target")}
    return {"cpu": stats.get("cpu.time"), "memory": memory, "vnics": vnics, "disks": disks}


def timed(fn) -> tuple[float, float, object]:
    wall, cpu = time.perf_counter(), time.process_time()
    result = fn()
    return (time.perf_counter() - wall) * 1e3, (time.process_time() - cpu) * 1e3, result


def p99(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))]  # nearest rank


def run(ids: list[str], rounds: int, uri: str, groups: int) -> None:
    poller = Hypervisor(uri)
    inspector = Inspector(poller)
    ceilometer = Hypervisor(uri)  # its own connection, retried on disconnect like Ceilometer
    paths = {"bulk": inspector.poll,
             "ceilometer": lambda: ceilometer.call(
                 lambda conn: [ceilometer_read(conn, i, groups) for i in ids])}
    results = {name: ([], []) for name in paths}
    for fn in paths.values():
        fn()  # warm up both connections
    polled = 0
    for n in range(rounds):
        order = list(paths) if n % 2 == 0 else list(reversed(paths))
        for name in order:
            wall, cpu, out = timed(paths[name])
            results[name][0].append(wall)
            results[name][1].append(cpu)
            if name == "bulk":
                polled = len(out)
                assert all(i in out for i in ids), "bulk poll missed a benchmark guest"
    ceilometer.close()
    poller.close()
    report(results, len(ids), polled, rounds)


def report(results: dict, guests: int, polled: int, rounds: int) -> None:
    print(f"guests={guests} (bulk poll returned {polled} active domains) rounds={rounds}")
    print(f"{'path':<12}{'wall med':>10}{'wall p99':>10}{'cpu med':>10}{'cpu p99':>10}  (ms)")
    summary = {}
    for name, (wall, cpu) in results.items():
        summary[name] = (statistics.median(wall), p99(wall), statistics.median(cpu), p99(cpu))
        print(f"{name:<12}" + "".join(f"{v:>10.1f}" for v in summary[name]))
    ratios = [c / b if b else float("inf")
              for c, b in zip(summary["ceilometer"], summary["bulk"])]
    print(f"{'ceil/bulk':<12}" + "".join(f"{r:>9.1f}x" for r in ratios))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--guests", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--uri", default="qemu:///system")
    parser.add_argument("--ceilometer-groups", choices=sorted(CEILOMETER_GROUPS), default="all",
                        help="stats groups of the per-instance domainListGetStats: 'all' (0, "
                             "what Ceilometer passes) or 'cpu' (CPU_TOTAL|VCPU only)")
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # so `finally` cleans up
    admin = Hypervisor(args.uri, retry_attempts=20)  # creates and removes the guests
    workdir = tempfile.mkdtemp(prefix="lifecycle-stats-bench-")
    pool = concurrent.futures.ThreadPoolExecutor(max_workers=8)
    made: list[str] = []
    try:
        started = time.perf_counter()
        admin.call(lambda conn: novalike.sweep_leftovers(conn, PREFIX))
        futures = [pool.submit(make_guest, admin, workdir, made, n) for n in range(args.guests)]
        ids = [future.result() for future in futures]
        print(f"created {len(ids)} paused guests in {time.perf_counter() - started:.1f} s")
        run(ids, args.rounds, args.uri, CEILOMETER_GROUPS[args.ceilometer_groups])
    finally:
        pool.shutdown(cancel_futures=True)  # waits for creations under way
        with concurrent.futures.ThreadPoolExecutor(max_workers=8) as removers:
            list(removers.map(lambda i: remove_guest(admin, i), list(made)))
        admin.close()
        shutil.rmtree(workdir, ignore_errors=True)
        print(f"removed {len(made)} guests")
    return 0


if __name__ == "__main__":
    sys.exit(main())
