"""The shipped recordings, a recording written in memory, the replay command run as a user
meets it, and a listener that hears what `run --live` publishes (oslo.messaging's fake://)."""
from __future__ import annotations

import io
import itertools
import pathlib
import threading

import oslo_messaging

from lifecycle_stats.cmd import replay as cli
from lifecycle_stats.replay import format as fmt

RECORDINGS = pathlib.Path(__file__).resolve().parent.parent / "recordings"
SINGLE = RECORDINGS / "single-delete.lsrec"
BURST = RECORDINGS / "burst-of-deletes.lsrec"
HEADER = {"host": "h1", "started_at": "2026-11-22T00:00:00.000000+00:00"}


def write(entries, monotonic_values=None) -> bytes:
    stream = io.BytesIO()
    stream.close = lambda: None
    ticks = iter(monotonic_values or itertools.count(0.0, 0.5))
    writer = fmt.RecordingWriter(stream, HEADER, monotonic=lambda: next(ticks))
    indexes = [writer.write(source, **fields) for source, fields in entries]
    assert indexes == list(range(len(entries)))
    return stream.getvalue()


def run_cli(capsys, *argv) -> tuple[int, str, str]:
    code = cli.main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


class Heard:
    def __init__(self):
        self.messages = []
        self.contexts = []
        self.cond = threading.Condition()

    def info(self, ctxt, publisher_id, event_type, payload, metadata):
        with self.cond:
            self.messages.append((publisher_id, event_type, payload))
            self.contexts.append(ctxt)
            self.cond.notify_all()


def listen(transport, topic):
    heard = Heard()
    server = oslo_messaging.get_notification_listener(
        transport, [oslo_messaging.Target(exchange="nova-x", topic=topic)], [heard],
        executor="threading", pool=f"test-{topic}")
    server.start()
    return heard, server
