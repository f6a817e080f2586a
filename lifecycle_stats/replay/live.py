"""`run --live`: publish a recording's nova notifications onto a real bus, at the recorded
pace or `speed` times faster — a load generator for the agent and for billing pipelines.

Each notification goes to nova's exchange on the topic it was heard on, with its recorded
publisher_id, event_type and payload, as nova-compute sent it (transport._send_notification,
as the demo's nova does (cmd/demo_nova.py), so the envelope keeps nova's publisher_id).
`as_host` replays a recording as another compute host.

Ids are fresh for every run: each message gets a new message_id, and each recorded request
id (request_id, global_request_id, in the context and the payload) a new one, the same
wherever it recurs, so the legacy and versioned announcements of one delete still make one
event while a second run is not all duplicates of the first. `recorded_ids` sends the
recorded ones (to reproduce a duplicate, or compare with the recorded outputs).
"""
from __future__ import annotations

import copy
import dataclasses
import statistics
import sys
import time
import uuid
from typing import IO, Any, Callable

from lifecycle_stats.records import isotime, utcnow
from lifecycle_stats.replay import format as fmt


class PublishError(Exception):
    """The bus refused a notification; str() says how far the replay got."""


DEFAULT_TOPICS = {"legacy": "notifications", "versioned": "versioned_notifications"}


@dataclasses.dataclass
class Summary:
    sent: int
    total: int
    seconds: float
    lags_ms: list[float]

    def line(self) -> str:
        rate = self.sent / self.seconds if self.seconds > 0 else float("inf")
        lags = sorted(self.lags_ms) or [0.0]
        p99 = lags[min(len(lags) - 1, int(len(lags) * 0.99))]
        return (f"sent {self.sent} of {self.total} nova notifications in {self.seconds:.2f} s "
                f"({rate:.1f}/s); lag median {statistics.median(lags):.1f} ms, "
                f"p99 {p99:.1f} ms, max {lags[-1]:.1f} ms")


class Progress:
    """A one-line bar on a terminal, redrawn at most 10 times a second; silent otherwise."""

    WIDTH = 30

    def __init__(self, stream: IO[str], total: int) -> None:
        self._stream = stream
        self._total = total
        self._tty = stream.isatty()
        self._drawn = 0.0

    def update(self, done: int, elapsed: float, force: bool = False) -> None:
        now = time.monotonic()
        if not self._tty or (not force and now - self._drawn < 0.1):
            return
        self._drawn = now
        filled = self.WIDTH * done // max(self._total, 1)
        rate = done / elapsed if elapsed > 0 else 0.0
        self._stream.write(f"\r[{'#' * filled}{'.' * (self.WIDTH - filled)}] "
                           f"{done}/{self._total}  {rate:.1f}/s ")
        self._stream.flush()

    def end(self) -> None:
        if self._tty:
            self._stream.write("\n")


def rehost(entry: dict[str, Any], old: str, new: str) -> dict[str, Any]:
    """The notification as host `new` would have sent it (host, node, publisher_id)."""
    out = copy.deepcopy(entry)
    fields = out.get("payload") or {}
    if isinstance(fields.get("nova_object.data"), dict):
        fields = fields["nova_object.data"]
    for key in ("host", "node"):
        if fields.get(key) == old:
            fields[key] = new
    publisher = out.get("publisher_id")
    if isinstance(publisher, str) and publisher.endswith(old):
        out["publisher_id"] = publisher[:-len(old)] + new
    return out


class FreshIds:
    """This run's ids: a new message id per message, one new request id per recorded one."""

    REQUEST_KEYS = ("request_id", "global_request_id")

    def __init__(self) -> None:
        self._requests: dict[str, str] = {}

    def request(self, recorded: str) -> str:
        if recorded not in self._requests:
            self._requests[recorded] = f"req-{uuid.uuid4()}"
        return self._requests[recorded]

    def renew(self, value: Any) -> Any:
        """A copy of value (context, payload) with every request id replaced."""
        if isinstance(value, dict):
            return {k: self.request(v) if k in self.REQUEST_KEYS and isinstance(v, str)
                    else self.renew(v) for k, v in value.items()}
        if isinstance(value, list):
            return [self.renew(v) for v in value]
        return value

    def message(self, context: dict[str, Any], message: dict[str, Any]):
        return self.renew(context), {**message, "message_id": str(uuid.uuid4()),
                                     "payload": self.renew(message["payload"])}


def publish(recording: fmt.Recording, transport, *, speed: float, exchange: str = "nova",
            topics: dict[str, str] | None = None, as_host: str | None = None,
            recorded_ids: bool = False, progress: IO[str] = sys.stderr, monotonic: Callable[[], float] = time.monotonic,
            sleep: Callable[[float], None] = time.sleep) -> Summary:
    """speed: 1 is the recorded pace, 10 ten times faster, 0 as fast as the bus takes them.
    Every entry is checked before the first is sent (fmt.RecordingError names a bad one).
    recorded_ids: send the recorded message and request ids instead of fresh ones."""
    entries = [e for e in recording.entries if e.source == fmt.NOVA]
    messages = [message_of(recording, e, as_host) for e in entries]
    if not recorded_ids:
        ids = FreshIds()
        messages = [(topic, *ids.message(context, message))
                    for topic, context, message in messages]
    send = Sender(transport, exchange, {**DEFAULT_TOPICS, **(topics or {})})
    bar = Progress(progress, len(entries))
    first = entries[0].t if entries else 0.0
    start = monotonic()
    lags = []
    for done, (entry, (topic, context, message)) in enumerate(zip(entries, messages)):
        due = start + ((entry.t - first) / speed if speed > 0 else 0.0)
        if (wait := due - monotonic()) > 0:
            sleep(wait)
        try:
            send(topic, context, {**message, "timestamp": isotime(utcnow())})
        except Exception as exc:  # any failure of the bus ends the run: say where it stopped
            bar.end()
            raise PublishError(f"bus refused notification {done + 1} of {len(entries)} "
                               f"(offset {entry.offset}): {type(exc).__name__}: {exc}") from exc
        lags.append(max(0.0, (monotonic() - due) * 1000))
        bar.update(done + 1, monotonic() - start)
    bar.update(len(entries), monotonic() - start, force=True)
    bar.end()
    return Summary(sent=len(lags), total=len(entries), seconds=monotonic() - start,
                   lags_ms=lags)


def message_of(recording: fmt.Recording, entry: fmt.Entry,
               as_host: str | None) -> tuple[str, dict[str, Any], dict[str, Any]]:
    """(topic role, request context, message) of a nova entry, as nova sent it."""
    data = entry.data if as_host is None else rehost(entry.data, recording.host, as_host)
    for key in ("publisher_id", "event_type"):
        if not isinstance(data.get(key), str):
            raise fmt.RecordingError(recording.path, entry.offset,
                                     f"corrupt: nova entry {entry.index} has no {key}")
    context = data.get("context")
    message = {"message_id": data.get("message_id"), "publisher_id": data["publisher_id"],
               "event_type": data["event_type"], "priority": str(data.get("priority", "INFO")),
               "payload": data.get("payload")}
    return str(data.get("topic")), context if isinstance(context, dict) else {}, message


class Sender:
    """Sends to nova's exchange on the topic of a role (legacy/versioned) and priority."""

    def __init__(self, transport, exchange: str, topics: dict[str, str]) -> None:
        self._transport = transport
        self._exchange = exchange
        self._topics = topics
        self._targets: dict[tuple[str, str], Any] = {}

    def __call__(self, role: str, context: dict[str, Any], message: dict[str, Any]) -> None:
        key = (self._topics.get(role, self._topics["legacy"]), message["priority"].lower())
        if key not in self._targets:
            import oslo_messaging

            self._targets[key] = oslo_messaging.Target(exchange=self._exchange,
                                                       topic=".".join(key))
        self._transport._send_notification(self._targets[key], context, message, version=2.0,
                                           retry=3)
