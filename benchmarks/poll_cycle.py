"""One poll cycle: our bulk Inspector.poll() against Ceilometer's real LibvirtInspector.

Creates N paused nova-like guests on the real daemon, then runs both paths in interleaved
rounds and prints median / p99 wall and client CPU (time.process_time) ms, the ratio
ceilometer/ours, and whether issue 14's target (client CPU >= 50x below Ceilometer) is met.
Ours runs in this process. The baseline is Ceilometer's own LibvirtInspector (ceilometer
27.0.0 from .ceilometer-venv, tools/ceilometer_venv.sh) in a worker subprocess
(_ceilometer_inspector_worker.py) that times each cycle itself: per instance
inspect_instance, inspect_vnics, inspect_disks and inspect_disk_info, as the compute
pollsters call them once per cycle. Guests and images are removed even on Ctrl-C or SIGTERM;
a killed run's guests are named "lst-<pid>-bench<n>" and swept by novalike.sweep_leftovers
(here at start, and by the tests).

    .venv/bin/python benchmarks/poll_cycle.py [--guests 30] [--rounds 10]
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

import libvirt

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from benchmarks import _ceilometer_inspector as ceilometer_side  # noqa: E402
from tests.support import guests as novalike  # noqa: E402
from lifecycle_stats.exceptions import DomainGone, HypervisorError  # noqa: E402
from lifecycle_stats.reading.hypervisor import Hypervisor  # noqa: E402
from lifecycle_stats.reading.inspector import Inspector  # noqa: E402

CPU_TARGET = 50.0  # issue 14: bulk poll client CPU >= 50x below Ceilometer's inspector
PREFIX = "lst"  # novalike's "{prefix}-{pid}-{n}" names: sweep_leftovers removes a killed run's


def make_guest(hv: Hypervisor, workdir: str, made: list[str], n: int) -> dict:
    """A paused guest; returned as the nova Server fields Ceilometer's inspector reads."""
    pid = os.getpid()
    image = os.path.join(workdir, f"{n}.qcow2")
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", image, "16M"], check=True)
    guest = novalike.NovaGuest(domain_name=f"{PREFIX}-{pid}-bench{n}", display_name=f"bench-{n}",
                               disk_paths=(image,), vnics=(f"b{pid % 10000}x{n}",))
    made.append(guest.instance_id)  # before creating: cleanup must not miss a half-made one
    xml = novalike.domain_xml(guest, "qemu")
    hv.call(lambda conn: conn.createXML(xml, libvirt.VIR_DOMAIN_START_PAUSED))
    return {"id": guest.instance_id, "name": guest.display_name,
            "instance_name": guest.domain_name}


def remove_guest(hv: Hypervisor, instance_id: str) -> None:
    """Destroy (transient: that removes it); survives a libvirtd restart meanwhile."""
    try:
        hv.call(lambda conn: conn.lookupByUUIDString(instance_id).destroy(), instance_id)
    except DomainGone:
        pass
    except HypervisorError as exc:
        print(f"could not remove {instance_id}: {exc}", file=sys.stderr)


def timed(fn) -> tuple[float, float, object]:
    wall, cpu = time.perf_counter(), time.process_time()
    result = fn()
    return (time.perf_counter() - wall) * 1e3, (time.process_time() - cpu) * 1e3, result


def p99(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))]  # nearest rank


def run(guests: list[dict], rounds: int, uri: str, ceilometer_python: str) -> None:
    ids = [g["id"] for g in guests]
    ceilometer = ceilometer_side.CeilometerInspector(uri, ceilometer_python)
    poller = Hypervisor(uri)
    inspector = Inspector(poller)
    results = {"ours": ([], []), "ceilometer": ([], [])}
    try:
        inspector.poll(), ceilometer.cycle(guests)  # warm up both connections
        polled, theirs = 0, None
        for n in range(rounds):
            for name in ("ours", "ceilometer") if n % 2 == 0 else ("ceilometer", "ours"):
                if name == "ours":
                    wall, cpu, out = timed(inspector.poll)
                    polled = len(out)
                    assert all(i in out for i in ids), "bulk poll missed a benchmark guest"
                else:
                    theirs = ceilometer.cycle(guests)
                    wall, cpu = theirs.wall_ms, theirs.cpu_ms
                    assert theirs.read == len(guests), f"Ceilometer's inspector: {theirs}"
                results[name][0].append(wall)
                results[name][1].append(cpu)
    finally:
        ceilometer.close()
        poller.close()
    print(f"guests={len(guests)} rounds={rounds}; ours: bulk poll returned {polled} active "
          f"domains; ceilometer {ceilometer.versions['ceilometer']} LibvirtInspector read "
          f"{theirs.read if theirs else 0} instances per cycle")
    report(results)


def report(results: dict) -> None:
    print(f"{'path':<12}{'wall med':>10}{'wall p99':>10}{'cpu med':>10}{'cpu p99':>10}  (ms)")
    summary = {}
    for name, (wall, cpu) in results.items():
        summary[name] = (statistics.median(wall), p99(wall), statistics.median(cpu), p99(cpu))
        print(f"{name:<12}" + "".join(f"{v:>10.1f}" for v in summary[name]))
    ratios = [c / b if b else float("inf")
              for c, b in zip(summary["ceilometer"], summary["ours"])]
    print(f"{'ceil/ours':<12}" + "".join(f"{r:>9.1f}x" for r in ratios))
    met = "met" if ratios[2] >= CPU_TARGET else "NOT met"
    print(f"client CPU median: ceilometer/ours {ratios[2]:.1f}x, "
          f"target >= {CPU_TARGET:.0f}x: {met}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--guests", type=int, default=30)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--uri", default="qemu:///system")
    parser.add_argument("--ceilometer-python", default=ceilometer_side.DEFAULT_PYTHON,
                        help="the Python of the venv tools/ceilometer_venv.sh builds "
                             "(default: %(default)s)")
    args = parser.parse_args()
    if not os.access(args.ceilometer_python, os.X_OK):  # before making any guest
        sys.exit(ceilometer_side.NO_WORKER.format(why=f"{args.ceilometer_python} missing"))
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # so `finally` cleans up
    admin = Hypervisor(args.uri, retry_attempts=20)  # creates and removes the guests
    workdir = tempfile.mkdtemp(prefix="lifecycle-stats-bench-")
    pool = concurrent.futures.ThreadPoolExecutor(max_workers=8)
    made: list[str] = []
    try:
        started = time.perf_counter()
        admin.call(lambda conn: novalike.sweep_leftovers(conn, PREFIX))
        futures = [pool.submit(make_guest, admin, workdir, made, n) for n in range(args.guests)]
        guests = [future.result() for future in futures]
        print(f"created {len(guests)} paused guests in {time.perf_counter() - started:.1f} s")
        run(guests, args.rounds, args.uri, args.ceilometer_python)
    except ceilometer_side.WorkerError as exc:
        print(f"poll_cycle: {exc}", file=sys.stderr)
        return 1
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
