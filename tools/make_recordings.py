"""Capture the shipped recordings (tests/recordings/*.lsrec) from real QEMU guests on the real
libvirtd and RabbitMQ, and write each one's golden replay output (*.jsonl) beside it.

Each case creates nova-like guests with the guest factory, records the host with
lifecycle_stats.replay.recorder (on bus names of its own), plays nova (delete.start on the bus,
then the domain's destroy and undefine, as nova-compute does), and stops. Run as root after
tools/setup_hypervisor.sh and tools/start_rabbitmq.sh:

    .venv/bin/python tools/make_recordings.py [--only NAME ...]

Re-running replaces the recordings (new uuids, new timings) and their goldens; commit both.
After a change of what the agent publishes, `--goldens-only` re-derives the goldens from the
same recordings: review the diff, it is the change as billing sees it.
"""
from __future__ import annotations

import argparse
import os
import pathlib
import sys
import tempfile
import threading
import time
import uuid

import libvirt
import oslo_messaging
from oslo_config import cfg

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # tests.support
from lifecycle_stats.listeners import libvirt_events  # noqa: E402
from lifecycle_stats.replay import format as fmt  # noqa: E402
from lifecycle_stats.replay import player, recorder  # noqa: E402
from tests.support.guests import GuestFactory  # noqa: E402
from tests.support.nova import publish_delete_start  # noqa: E402

HOST = "compute-rec-1"
OUT = pathlib.Path(__file__).resolve().parent.parent / "tests" / "recordings"
SETTLE = 1.5  # seconds for libvirt's events of the last destroy to arrive


class Case:
    """One recording session: a recorder on run-specific bus names plus nova's side."""

    def __init__(self, conn, transport, workdir: str, path: pathlib.Path, uri: str) -> None:
        run = uuid.uuid4().hex[:8]
        self.exchange = f"lst-rec-nova-{run}"
        self.topics = {"legacy": f"lst-rec-notifications-{run}",
                       "versioned": f"lst-rec-versioned-{run}"}
        self.transport = transport
        self.factory = GuestFactory(conn, workdir, hypervisor="qemu", prefix="lst")
        prefix = f"lst-{os.getpid()}-"
        self.writer = fmt.open_writer(str(path), {
            **recorder.host_header(conn, HOST, uri), "exchange": "nova",
            "topics": {"legacy": "notifications", "versioned": "versioned_notifications"}})
        self.recorder = recorder.Recorder(
            self.writer, host=HOST, libvirt_uri=uri, transport=transport,
            exchange=self.exchange, topics=self.topics, pool=f"lst-rec-{run}",
            poll_interval=2.0, domains=lambda name: name.startswith(prefix))

    def guests(self, n: int):
        return [self.factory.create(paused=False, display_name=f"web-{i + 1}",
                                    flavor_name="m1.nano")
                for i in range(n)]

    def delete_start(self, guest, *, versioned: bool = False) -> None:
        topic = self.topics["versioned" if versioned else "legacy"]
        publish_delete_start(self.transport, guest, HOST, versioned=versioned,
                             exchange=self.exchange, topic=topic)

    def destroy(self, guest) -> None:
        self.factory.destroy(guest)

    def finish(self, url: str) -> None:
        time.sleep(SETTLE)
        self.recorder.stop()
        self.writer.close()
        recorder.delete_queues(url, self.recorder.pools)
        self.factory.cleanup()


def single_delete(case: Case) -> None:
    """One running instance: delete.start, then nova destroys it."""
    (guest, _), = case.guests(1)
    case.recorder.start()
    time.sleep(0.5)
    case.delete_start(guest)
    time.sleep(0.3)
    case.destroy(guest)


def burst_of_deletes(case: Case) -> None:
    """Four instances deleted at once, both notification formats, one announced twice."""
    made = case.guests(4)
    case.recorder.start()
    time.sleep(0.5)
    for i, (guest, _) in enumerate(made):
        case.delete_start(guest, versioned=bool(i % 2))
    case.delete_start(made[0][0], versioned=True)  # nova's second announcement of the same
    time.sleep(0.3)
    case.factory.cleanup()


def power_cycle_then_delete(case: Case) -> None:
    """Powered off, on again, polled, then deleted: the new QEMU process's counters count."""
    (guest, dom), = case.guests(1)
    case.recorder.start()
    time.sleep(0.5)
    dom.destroy()  # power off (the domain stays defined)
    time.sleep(0.5)
    dom.create()  # power on: a new QEMU process, its counters start again
    time.sleep(2.5)  # one periodic poll of the new process
    case.delete_start(guest)
    time.sleep(0.3)
    case.destroy(guest)


def delete_racing_destroy(case: Case) -> None:
    """nova's destroy is under way (begun 0.5 s earlier; QEMU takes ~2 s to stop here) when
    its delete.start arrives: the read waits behind the destroy and finds the domain shut off."""
    (guest, _), = case.guests(1)
    case.recorder.start()
    time.sleep(2.5)  # a periodic poll caches the domain's figures
    racer = threading.Thread(target=case.destroy, args=(guest,))
    racer.start()
    time.sleep(0.5)
    case.delete_start(guest)
    racer.join()


def agent_restart(case: Case) -> None:
    """The agent is down while one instance is deleted; the other is deleted after it is back,
    and nova's first announcement is delivered again."""
    (first, _), (second, _) = case.guests(2)
    case.recorder.start()
    time.sleep(0.5)
    case.recorder.mark_agent("stopped")
    case.delete_start(first)
    time.sleep(0.3)
    case.destroy(first)
    time.sleep(0.5)
    case.recorder.mark_agent("started")
    time.sleep(0.3)
    case.delete_start(second, versioned=True)
    case.delete_start(first)  # redelivered
    time.sleep(0.3)
    case.destroy(second)


CASES = {
    "single-delete": single_delete,
    "burst-of-deletes": burst_of_deletes,
    "power-cycle-then-delete": power_cycle_then_delete,
    "delete-racing-destroy": delete_racing_destroy,
    "agent-restart": agent_restart,
}


def golden(path: pathlib.Path) -> pathlib.Path:
    out = path.with_suffix(".jsonl")
    recording = fmt.read(str(path))
    player.check(recording)
    with open(out, "w", encoding="utf-8") as stream:
        player.run(recording, stream)
    return out


def record_case(name: str, args) -> Case:
    """One attempt at one case, on a fresh libvirt connection and transport. Recorded beside
    the shipped recording and moved over it only once whole: a failed attempt leaves the
    shipped one (and its golden) as they were."""
    final = args.out / f"{name}.lsrec"
    partial = final.with_name(final.name + ".partial")
    transport = oslo_messaging.get_notification_transport(cfg.ConfigOpts(), url=args.url)
    conn = libvirt.open(args.uri)
    try:
        with tempfile.TemporaryDirectory(prefix="lst-rec-") as workdir:
            case = Case(conn, transport, workdir, partial, args.uri)
            try:
                CASES[name](case)
            finally:
                case.finish(args.url)
        os.replace(partial, final)
        return case
    finally:
        partial.unlink(missing_ok=True)
        conn.close()
        transport.cleanup()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", nargs="*", choices=sorted(CASES), default=sorted(CASES))
    parser.add_argument("--uri", default="qemu:///system")
    parser.add_argument("--url", default="rabbit://guest:guest@127.0.0.1:5672/")
    parser.add_argument("--out", type=pathlib.Path, default=OUT)
    parser.add_argument("--goldens-only", action="store_true",
                        help="only replay the shipped recordings into their goldens again "
                             "(after a change of the payloads; no services needed)")
    parser.add_argument("--attempts", type=int, default=3,
                        help="tries per case: a daemon or broker restarted by someone else "
                             "on a shared machine spoils a recording")
    args = parser.parse_args(argv)
    if args.goldens_only:
        for name in args.only:
            out = golden(args.out / f"{name}.lsrec")
            print(f"{name}: {sum(1 for _ in open(out))} notifications -> {out.name}")
        return 0
    libvirt_events.ensure_event_loop()
    libvirt.registerErrorHandler(lambda _ctx, _err: None, None)
    failed = []
    for name in args.only:
        for attempt in range(1, args.attempts + 1):
            try:
                case = record_case(name, args)
                break
            except Exception as exc:  # infrastructure trouble: record the case again
                print(f"{name}: attempt {attempt} failed: {type(exc).__name__}: {exc}",
                      file=sys.stderr)
                time.sleep(5)
        else:
            failed.append(name)
            continue
        path = args.out / f"{name}.lsrec"
        out = golden(path)
        print(f"{name}: {path.stat().st_size} bytes, {case.writer.count} entries, "
              f"{sum(1 for _ in open(out))} notifications -> {out.name}")
    if failed:
        print(f"not recorded: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
