"""lifecycle-stats-replay: record a host's event streams, replay them, show them.

  record -o FILE      tap nova's bus, libvirt events and counter reads into FILE (Ctrl-C stops)
  run FILE            replay through the agent's pipeline; notifications as JSON lines
  run --live FILE     publish FILE's nova notifications onto a real bus (a load generator)
  show FILE           a readable timeline of FILE
"""
from __future__ import annotations

import argparse
import logging
import math
import os
import queue
import signal
import socket
import sys
import time
import warnings

from lifecycle_stats.replay import format as fmt

PROG = "lifecycle-stats-replay"
DEFAULT_URL = "rabbit://guest:guest@127.0.0.1:5672/"


class CommandError(Exception):
    """A failure the user can act on; printed as one line."""


def seconds(minimum: float, inclusive: bool):
    """An argparse type: a finite number of at least (or above) minimum."""
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
        if not math.isfinite(value) or value < minimum or (value == minimum and not inclusive):
            raise argparse.ArgumentTypeError(
                f"{text} is not a finite number {'>=' if inclusive else '>'} {minimum:g}")
        return value
    return parse


def read_recording(path: str) -> fmt.Recording:
    """fmt.read, saying on stderr how much of a recording with a cut last frame is kept."""
    recording = fmt.read(path)
    if recording.cut is not None:
        print(f"{PROG}: warning: {recording.cut}; salvaged the {len(recording.entries)} "
              "entries before it", file=sys.stderr)
    return recording


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    _record_parser(sub.add_parser("record", help="record a live host"))
    _run_parser(sub.add_parser("run", help="replay a recording"))
    sub.add_parser("show", help="print a recording's timeline").add_argument("recording")
    return parser


def _record_parser(rec: argparse.ArgumentParser) -> None:
    rec.add_argument("-o", "--output", required=True, help="recording file to write")
    rec.add_argument("--host", default=socket.gethostname(),
                     help="this compute host's name, as nova-compute's `host` "
                          "(default: %(default)s)")
    rec.add_argument("--uri", default="qemu:///system", help="libvirt URI (default: %(default)s)")
    _bus_args(rec)
    rec.add_argument("--pool", default=None,
                     help="pool (queue) prefix of the recorder's own queues "
                          "(default: lifecycle-stats-replay.<host>)")
    rec.add_argument("--poll-interval", type=seconds(0, inclusive=False), default=60.0,
                     help="seconds between bulk polls, as the agent's [poller] interval")
    rec.add_argument("--domain-prefix", default="",
                     help="record only domains whose libvirt name starts with this")
    rec.add_argument("--duration", type=seconds(0, inclusive=False), default=None,
                     help="stop after this many seconds (default: at Ctrl-C / SIGTERM)")


def _run_parser(run: argparse.ArgumentParser) -> None:
    run.add_argument("recording")
    run.add_argument("-o", "--output", default="-", help="JSON lines output (default: stdout)")
    run.add_argument("--telemetry-secret", default=None,
                     help="the agent's [publisher] telemetry_secret, to sign samples as it "
                          "would (default: Ceilometer's default secret, as the agent's)")
    run.add_argument("--config-file", default=None,
                     help="the agent's configuration file: replay as that agent would publish "
                          "([meters] legacy, [publisher] telemetry_secret, [flush], [usage] "
                          "audit_period; default: the agent's defaults)")
    run.add_argument("--brief", action="store_true",
                     help="one readable line per notification instead of JSON")
    run.add_argument("--live", action="store_true",
                     help="publish the nova notifications onto --url instead of replaying")
    _bus_args(run)
    run.add_argument("--speed", type=seconds(0, inclusive=True), default=1.0,
                     help="--live pace: 1 as recorded, 10 ten times faster, 0 at once")
    run.add_argument("--as-host", default=None,
                     help="--live: send as this compute host instead of the recorded one")
    run.add_argument("--recorded-ids", action="store_true",
                     help="--live: send the recorded message and request ids (default: fresh "
                          "ones each run, so a second run is not all duplicates)")


def _bus_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--url", default=DEFAULT_URL, help="transport URL of nova's bus")
    parser.add_argument("--exchange", default="nova", help="nova's exchange")
    parser.add_argument("--legacy-topic", default="notifications")
    parser.add_argument("--versioned-topic", default="versioned_notifications")


def _topics(args) -> dict[str, str]:
    return {"legacy": args.legacy_topic, "versioned": args.versioned_topic}


def _transport(url: str):
    import oslo_messaging
    from oslo_config import cfg

    return oslo_messaging.get_notification_transport(cfg.ConfigOpts(), url=url)


def cmd_record(args) -> int:
    from lifecycle_stats.replay import recorder

    header = _host_header(args)
    try:
        recorder.check_bus(args.url)
    except ConnectionError as exc:
        raise CommandError(f"cannot reach the bus at {args.url.split('@')[-1]}: {exc}") from None
    transport = _transport(args.url)
    writer = fmt.open_writer(args.output, {**header, "exchange": args.exchange,
                                           "topics": _topics(args)})
    rec = recorder.Recorder(writer, host=args.host, libvirt_uri=args.uri, transport=transport,
                            exchange=args.exchange, topics=_topics(args), pool=args.pool,
                            poll_interval=args.poll_interval,
                            domains=lambda name: name.startswith(args.domain_prefix))
    started = time.monotonic()
    try:
        _record_until_stopped(rec, args)
    finally:
        rec.stop()
        writer.close()
        recorder.delete_queues(args.url, rec.pools)
        transport.cleanup()
    counts = rec.counters.snapshot()
    print(f"recorded {writer.count} entries in {time.monotonic() - started:.1f} s: "
          f"{counts.get('record.nova', 0)} nova, {counts.get('record.libvirt', 0)} libvirt, "
          f"{counts.get('record.polls', 0)} polls", file=sys.stderr)
    return 0


def _host_header(args) -> dict:
    """The recording's header from the host's libvirt; first of all, the event loop."""
    import libvirt

    from lifecycle_stats.listeners import libvirt_events
    from lifecycle_stats.replay import recorder

    libvirt_events.ensure_event_loop()  # before any connection opens
    libvirt.registerErrorHandler(lambda _ctx, _err: None, None)
    try:
        conn = libvirt.open(args.uri)
    except libvirt.libvirtError as exc:
        raise CommandError(f"cannot connect to libvirt at {args.uri}: {exc}") from None
    try:
        return recorder.host_header(conn, args.host, args.uri)
    finally:
        conn.close()


def _record_until_stopped(rec, args) -> None:
    """Until Ctrl-C / SIGTERM / --duration. SIGUSR1 and SIGUSR2 note that the agent on this
    host was stopped and started again (a restart in the middle of a case)."""
    marks: queue.Queue = queue.Queue()
    for signum in (signal.SIGINT, signal.SIGTERM):  # every frame is whole: stop between them
        signal.signal(signum, lambda *_: marks.put(None))
    signal.signal(signal.SIGUSR1, lambda *_: marks.put("stopped"))
    signal.signal(signal.SIGUSR2, lambda *_: marks.put("started"))
    rec.start()
    print(f"recording host {args.host} to {args.output} (Ctrl-C to stop; SIGUSR1/SIGUSR2: "
          "the agent stopped/started)", file=sys.stderr, flush=True)
    deadline = None if args.duration is None else time.monotonic() + args.duration
    while deadline is None or time.monotonic() < deadline:
        try:
            mark = marks.get(timeout=0.2)
        except queue.Empty:
            continue
        if mark is None:
            return
        rec.mark_agent(mark)
        print(f"agent {mark} (noted)", file=sys.stderr, flush=True)


def cmd_run(args) -> int:
    recording = read_recording(args.recording)
    if args.live:
        return _run_live(args, recording)
    from lifecycle_stats.replay import player

    player.check(recording)
    secret = {"telemetry_secret": args.telemetry_secret, "conf": _agent_conf(args.config_file)}
    if args.brief:
        counters = _run_brief(recording, secret)
    else:
        out = sys.stdout if args.output == "-" else open(args.output, "w", encoding="utf-8")
        try:
            counters = player.run(recording, out, **secret)
        finally:
            if out is not sys.stdout:
                out.close()
    snap = counters.snapshot()
    flushed = ", ".join(f"{k.split('.', 1)[1]} {v}" for k, v in sorted(snap.items())
                        if k.startswith("flush."))
    print(f"replayed {len(recording.entries)} entries of {recording.host}: "
          f"{snap.get('replay.emitted', 0)} notifications ({flushed or 'no flushes'})",
          file=sys.stderr)
    return 0


def _agent_conf(path: str | None):
    """The agent's options, read from its configuration file; None without one."""
    if path is None:
        return None
    from oslo_config import cfg

    from lifecycle_stats import opts

    if not os.path.isfile(path):
        raise CommandError(f"no configuration file {path}")
    conf = cfg.ConfigOpts()
    opts.register_all(conf)
    conf(["--config-file", path], project="lifecycle-stats", prog=PROG,
         default_config_files=[], default_config_dirs=[])
    return conf


def _run_brief(recording: fmt.Recording, secret: dict):
    import io
    import json

    from lifecycle_stats.replay import player, timeline

    out = io.StringIO()
    counters = player.run(recording, out, **secret)
    for line in out.getvalue().splitlines():
        print(timeline.notification_line(json.loads(line), recording))
    return counters


def _run_live(args, recording: fmt.Recording) -> int:
    from lifecycle_stats.replay import live

    transport = _transport(args.url)
    try:
        summary = live.publish(recording, transport, speed=args.speed,
                               exchange=args.exchange, topics=_topics(args),
                               as_host=args.as_host, recorded_ids=args.recorded_ids)
    except live.PublishError as exc:
        raise CommandError(f"{args.url.split('@')[-1]}: {exc}") from None
    finally:
        transport.cleanup()
    print(summary.line(), file=sys.stderr)
    return 0


def cmd_show(args) -> int:
    from lifecycle_stats.replay import timeline

    recording = read_recording(args.recording)
    for line in timeline.lines(recording):
        print(line)
    return 0


def main(argv=None) -> int:
    # oslo.messaging imports oslo.service, which warns that eventlet (unused here) is deprecated
    warnings.filterwarnings("ignore", message=r"\s*Eventlet is deprecated")
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    command = {"record": cmd_record, "run": cmd_run, "show": cmd_show}[args.command]
    try:
        return command(args)
    except (fmt.RecordingError, CommandError) as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return 1
    except BrokenPipeError:  # `show ... | head`: the reader has all it wanted
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except OSError as exc:  # -o in a missing directory, a full disk
        where = f"{exc.filename}: " if exc.filename else ""
        print(f"{PROG}: {where}{exc.strerror or exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
