"""Replay a recording through the agent's real pipeline, deterministically.

The core is built as the agent builds it (agent.py), through its one front door
(capture.pipeline.Pipeline), with the agent's settings (Settings below): nova notifications go
through the bus listener's endpoint to Pipeline.announced, libvirt events to
Pipeline.lifecycle, polls to Pipeline.poll; notifications go into a real spool and out of it to
a conduit that writes JSON lines. Only libvirt and time are stand-ins (standins.py): every clock
is the recording's virtual clock and every id derives from the recorded data, so the same
recording always gives byte-identical output.

Entries that answer another (`cause`: the reads the recorder made because of a delete.start,
an event, an agent start) are applied to the host stand-in just before the entry they answer.
An `agent` stopped/started pair models a restart: nova's messages wait in the bus queue, libvirt
events and polls are missed, and the agent comes back with empty memory over the same spool.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
import tempfile
from typing import IO

from oslo_config import cfg

from lifecycle_stats.capture.pipeline import Pipeline, Readers, Retry, Settings
from lifecycle_stats.counters import Counters
from lifecycle_stats.listeners import bus
from lifecycle_stats.publishing import spool as spool_mod
from lifecycle_stats.records import Notification
from lifecycle_stats.replay import format as fmt
from lifecycle_stats.replay.entries import (  # noqa: F401 (check: the player's public check)
    answers_by_cause, check, leading_sync, lifecycle_event, metadata_of,
)
from lifecycle_stats.usage import closer, periods
from lifecycle_stats.usage import store as usage_store
from lifecycle_stats.usage.ledger import UsageLedger
from lifecycle_stats.replay.standins import RecordedHost, RecordedRegistry, VirtualClock

LOG = logging.getLogger(__name__)
CONDUIT = "replay"


class JsonLinesConduit:
    """A Conduit (interfaces.Conduit) writing each notification as one sorted-keys JSON line."""

    def __init__(self, out: IO[str]) -> None:
        self._out, self.count = out, 0

    def emit(self, notification: Notification) -> None:
        doc = dataclasses.asdict(notification)
        doc["payload"] = dict(notification.payload)
        self._out.write(json.dumps(doc, sort_keys=True) + "\n")
        self.count += 1

    def close(self) -> None:
        self._out.flush()


@dataclasses.dataclass(frozen=True)
class Replayed:
    """What shapes a replay's output besides the recording: the core's settings (the agent's
    own, for the recorded host) and the usage ledger's audit period."""

    settings: Settings
    period: periods.AuditPeriod

    @classmethod
    def of(cls, recording: fmt.Recording, conf: cfg.ConfigOpts | None = None,
           telemetry_secret: str | None = None) -> "Replayed":
        """The recording's host and publisher_id; the rest from the agent's configuration
        (conf, with every option registered: opts.register_all), else the agent's defaults."""
        publisher_id = (recording.header.get("publisher_id")
                        or f"lifecycle-stats.{recording.host}")  # the agent's default
        options, period = {}, periods.parse("hour")
        if conf is not None:
            flush = conf.flush
            options = {"legacy_meters": conf.meters.legacy,
                       "telemetry_secret": conf.publisher.telemetry_secret,
                       "retry": Retry(flush.max_attempts, flush.tries_per_attempt,
                                      flush.retry_wait, flush.retry_max_wait)}
            period, _ = closer.settings(conf["usage"])
        if telemetry_secret is not None:
            options["telemetry_secret"] = telemetry_secret
        return cls(Settings(host=recording.host, publisher_id=publisher_id, **options), period)


class AgentState:
    """What one agent process holds in memory; a restart builds a new one over the same spool
    and ledger. The core is the agent's own (capture.pipeline.Pipeline)."""

    def __init__(self, host: RecordedHost, store: spool_mod.Spool, ledger: UsageLedger,
                 clock: VirtualClock, settings: Settings, counters: Counters) -> None:
        self.registry = RecordedRegistry(host)
        self.core = Pipeline(readers=Readers.one(host), registry=self.registry, spool=store,
                             ledger=ledger, settings=settings, counters=counters,
                             clock=clock, sleep=clock.sleep)
        self.endpoint = bus.DeleteStartEndpoint(
            host=settings.host, on_trigger=self.core.announced, counters=counters,
            clock=clock, allow_requeue=False)

    def start(self) -> None:
        """As Agent.start: resync the registry, then the poller's first poll."""
        self.core.resync()
        self.core.poll()


class Player:
    def __init__(self, recording: fmt.Recording, out: IO[str], state_dir: str,
                 replayed: Replayed | None = None) -> None:
        self.recording = recording
        self.counters = Counters()
        self.clock = VirtualClock(recording.started_at)
        self.host = RecordedHost()
        self.conduit = JsonLinesConduit(out)
        self.spool = spool_mod.Spool(os.path.join(state_dir, spool_mod.SPOOL_FILENAME),
                                     conduits=[CONDUIT], clock=self.clock,
                                     counters=self.counters)
        self.replayed = replayed if replayed is not None else Replayed.of(recording)
        # on disk beside the spool: like the spool, the ledger outlives an agent restart.
        # Periodic exists are not replayed (no period closer: a recording spans minutes);
        # the final exists at deletion is.
        self._ledger_path = usage_store.ledger_path(state_dir)
        self.ledger = self._open_ledger()
        self.agent: AgentState | None = None
        self.waiting: list[fmt.Entry] = []  # nova messages queued while the agent is down

    def run(self) -> Counters:
        answers = answers_by_cause(self.recording)
        entries = self.recording.entries
        known = leading_sync(entries)
        for entry in entries[:known]:  # the host as it was when recording began
            self._apply_to_host(entry)
        self._start_agent()  # an agent already running then: its registry knows those domains
        for entry in entries[known:]:
            if "cause" in entry.data:
                continue
            self.clock.advance_to(entry.t)
            for answer in answers.get(entry.index, ()):
                self._apply_to_host(answer)
            self._dispatch(entry)
            self._deliver()
        self.spool.close()
        self.ledger.close()
        self.conduit.close()
        return self.counters

    # -- entries -----------------------------------------------------------------------
    def _dispatch(self, entry: fmt.Entry) -> None:
        self.counters.incr(f"replay.entries.{entry.source}")
        if entry.source == fmt.NOVA:
            self._nova(entry)
        elif entry.source == fmt.AGENT:
            self._agent(entry)
        elif entry.source == fmt.LIBVIRT and self.agent is not None:
            self.agent.core.lifecycle(lifecycle_event(entry, self.clock()))
        elif entry.source in (fmt.READING, fmt.INSTANCE, fmt.POLL):
            self._apply_to_host(entry)
            if entry.source == fmt.POLL and self.agent is not None:
                self.agent.core.poll()

    def _nova(self, entry: fmt.Entry) -> None:
        if self.agent is None:
            self.waiting.append(entry)  # the agent's queue keeps it until it is back
            return
        data = entry.data
        context = data.get("context")
        self.agent.endpoint.info(context if isinstance(context, dict) else {},
                                 data.get("publisher_id"), data.get("event_type"),
                                 data.get("payload"), {"message_id": data.get("message_id"),
                                                       "timestamp": data.get("timestamp")})

    def _agent(self, entry: fmt.Entry) -> None:
        state = entry.data.get("state")
        if state == "stopped":
            self.agent = None
            self.ledger.close()
        elif state == "started" and self.agent is None:
            # reopened as a starting agent opens it: the ledger records the outage since its
            # last write (incomplete_seconds), as the real agent's would
            self.ledger = self._open_ledger()
            self._start_agent()
            waiting, self.waiting = self.waiting, []
            for queued in waiting:
                self._nova(queued)

    def _open_ledger(self) -> UsageLedger:
        return UsageLedger(self._ledger_path, self.replayed.period, counters=self.counters,
                           clock=self.clock)

    def _start_agent(self) -> None:
        self.agent = AgentState(self.host, self.spool, self.ledger, self.clock,
                                self.replayed.settings, self.counters)
        self.agent.start()

    def _apply_to_host(self, entry: fmt.Entry) -> None:
        data = entry.data
        if entry.source == fmt.READING:
            reading = data.get("reading")
            self.host.set_reading(data["instance_id"],
                                  None if reading is None else fmt.reading_from_data(reading))
        elif entry.source == fmt.INSTANCE:
            self.host.set_metadata(data["instance_id"], metadata_of(data))
        elif entry.source == fmt.POLL:
            self.host.set_poll([fmt.reading_from_data(r) for r in data["readings"]])

    def _deliver(self) -> None:
        """What the publication and sender threads do, synchronously: build the captures
        waiting, emit pending records in spool order."""
        if self.agent is not None:
            self.agent.core.publication.build_waiting()
        while pending := self.spool.pending(CONDUIT, 1000):
            for seq, notification in pending:
                self.conduit.emit(notification)
                self.spool.confirm(seq, CONDUIT)
                self.counters.incr("replay.emitted")


def run(recording: fmt.Recording, out: IO[str], telemetry_secret: str | None = None,
        conf: cfg.ConfigOpts | None = None) -> Counters:
    """Replay a checked recording into out, with a throw-away spool; as an agent configured by
    conf (the agent's options registered) would have, else as one with default options."""
    replayed = Replayed.of(recording, conf, telemetry_secret)
    with tempfile.TemporaryDirectory(prefix="lifecycle-stats-replay-") as state_dir:
        return Player(recording, out, state_dir, replayed).run()
