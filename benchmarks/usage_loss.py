"""Usage lost per deleted instance: seconds of the guest's life no reading covers.

The real `lifecycle-stats-agent` process, real RabbitMQ and libvirtd, real QEMU guests; nova
played as nova-compute plays it (tests/integration/harness):

  delete Δ       delete.start published, the domain destroyed and undefined Δ ms later.
  power-off Δ    power_off.start published, the domain destroyed Δ ms later (it stays
                 defined, shut off), then delete.start and the undefine a second later.

Per instance the loss is what the agent's final exists reports as `usage.incomplete_seconds`:
the time between the last reading of a QEMU process and its end, summed over the processes
(0 when every process was read as it ended). Beside it, Ceilometer's default: a poll every
300 s and nothing at delete, so a delete at a uniformly random moment loses 150 s on average
(computed: interval / 2), and the same for the agent's own poll interval without any `.start`
reads (what the loss would be with polls alone).

    .venv/bin/python benchmarks/usage_loss.py [--per-scenario 10] [--deltas 0,5,20,100]
                                              [--power-off-deltas 0,20] [--poll-interval 2]
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from benchmarks import _common  # noqa: E402
from benchmarks.e2e_latency import Bench  # noqa: E402
from lifecycle_stats import agent  # noqa: E402

CEILOMETER_INTERVAL_S = 300.0
EVENTS = ("compute.instance.delete.samples", "compute.instance.exists")


def events_of(bench: Bench, instance_id: str, timeout: float = 30.0) -> dict[str, dict]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = {e["event_type"]: e for e in bench.billing.by_instance().get(instance_id, [])}
        if set(EVENTS) <= set(got):
            return got
        time.sleep(0.005)
    return {}


def after(delta_ms: float, since: float) -> None:
    time.sleep(max(0.0, since + delta_ms / 1e3 - time.monotonic()))


def delete(bench: Bench, guest, dom, delta_ms: float) -> dict[str, dict]:
    started = time.monotonic()
    bench.nova.delete_start(guest, bench.host)
    after(delta_ms, started)
    dom.destroy()  # nova's driver.destroy: hard stop, then undefine
    dom.undefine()
    return events_of(bench, guest.instance_id)


def power_off_then_delete(bench: Bench, guest, dom, delta_ms: float) -> dict[str, dict]:
    started = time.monotonic()
    bench.nova.delete_start(guest, bench.host, action="power_off")
    after(delta_ms, started)
    dom.destroy()  # nova's power-off: the QEMU process ends, the domain stays defined
    time.sleep(1.0)
    bench.nova.delete_start(guest, bench.host)
    time.sleep(0.05)
    dom.undefine()
    return events_of(bench, guest.instance_id)


def outcome(events: dict[str, dict]) -> dict:
    if not events:
        return {"missing": True}
    usage = events["compute.instance.exists"]["payload"]["usage"]
    capture = events["compute.instance.delete.samples"]["payload"]["capture"]
    return {"missing": False, "lost_s": usage["incomplete_seconds"],
            "complete": capture.get("complete", False), "kind": capture["kind"]}


def row(label: str, results: list[dict]) -> list:
    got = [r for r in results if not r["missing"]]
    lost = [r["lost_s"] for r in got]
    return [label, len(results), sum(r["complete"] for r in got),
            sum(r["kind"] == "final" for r in got),
            statistics.mean(lost) if lost else "-", statistics.median(lost) if lost else "-",
            max(lost) if lost else "-", len(results) - len(got)]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--per-scenario", type=int, default=10)
    parser.add_argument("--deltas", default="0,5,20,100")
    parser.add_argument("--power-off-deltas", default="0,20")
    parser.add_argument("--poll-interval", type=float, default=2.0)
    parser.add_argument("--uri", default="qemu:///system")
    args = parser.parse_args()
    scenarios = ([(f"delete Δ={d} ms", delete, float(d)) for d in args.deltas.split(",")]
                 + [(f"power-off Δ={d} ms, delete", power_off_then_delete, float(d))
                    for d in args.power_off_deltas.split(",")])
    _common.exit_on_sigterm()
    agent.quiet_libvirt_stderr()
    total = len(scenarios) * args.per_scenario
    with _common.workdir("lifecycle-stats-usage-") as directory, _common.guests(
            args.uri, directory, paused=total, running=0) as (_, made):
        bench = Bench(directory, args.uri, args.poll_interval,
                      extra={"usage": {"audit_period": "day"}}, event_types=EVENTS)
        results: dict[str, list[dict]] = {label: [] for label, _, _ in scenarios}
        try:
            bench.start()
            for i, (guest, dom) in enumerate(made):  # scenarios interleaved
                label, run, delta = scenarios[i % len(scenarios)]
                results[label].append(outcome(run(bench, guest, dom, delta)))
        finally:
            bench.close()
    rows = [row(label, results[label]) for label, _, _ in scenarios]
    rows.append([f"polls only, every {args.poll_interval:g} s (nominal)", "-", "-", "-",
                 args.poll_interval / 2, args.poll_interval / 2, args.poll_interval, "-"])
    rows.append([f"Ceilometer default, every {CEILOMETER_INTERVAL_S:g} s (computed)", "-",
                 "-", "-", CEILOMETER_INTERVAL_S / 2, CEILOMETER_INTERVAL_S / 2,
                 CEILOMETER_INTERVAL_S, "-"])
    print(f"\nusage lost per deleted instance, seconds (agent polls every "
          f"{args.poll_interval:g} s)")
    print(_common.table(["scenario", "n", "complete", "final", "lost mean", "lost med",
                         "lost max", "missing"], rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
