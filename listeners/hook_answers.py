"""What a request from nova's notifier driver becomes, and the answer nova gets.

The request is nova's own .start message (listeners/nova/protocol.py). It is parsed exactly as
the bus listener parses nova's notifications (nova_notifications.parse, here with every action
of the protocol), handed to the core's front door (capture.pipeline.Pipeline.announced), and
the core's outcome is told as the driver's status. The socket it came on is hook_server.py's.
"""
from __future__ import annotations

import datetime
import logging
from typing import Callable

from lifecycle_stats.counters import Counters
from lifecycle_stats.exceptions import CaptureDeferred, RejectedMessage, ShuttingDown
from lifecycle_stats.interfaces import AnnouncementHandler, Outcome
from lifecycle_stats.listeners import nova_notifications
from lifecycle_stats.listeners.nova import protocol as hook_protocol
from lifecycle_stats.records import StopAnnouncement

LOG = logging.getLogger(__name__)
ALL_ACTIONS = frozenset(hook_protocol.ACTIONS)
# The core's outcome of an announcement, as the driver's status (hook_protocol).
STATUS = {
    Outcome.FINAL: hook_protocol.CAPTURED,  # a deletion: its delete.samples is spooled
    Outcome.LAST_KNOWN: hook_protocol.CAPTURED,
    Outcome.UNAVAILABLE: hook_protocol.CAPTURED,
    Outcome.FLAGGED: hook_protocol.CAPTURED,
    Outcome.DUPLICATE: hook_protocol.CAPTURED,  # spooled before (the bus copy was first)
    Outcome.NOT_NOVA: hook_protocol.IGNORED,
    Outcome.READ: hook_protocol.CACHED,  # another stop: its closing reading was taken
    Outcome.MISSED: hook_protocol.IGNORED,
}


def reply(status: str, **extra) -> dict:
    return {"v": hook_protocol.VERSION, "status": status, **extra}


def answered(outcome: Outcome) -> dict:
    return reply(STATUS[outcome], outcome=outcome.value)


class HookAnswers:
    def __init__(self, *, host: str, on_trigger: AnnouncementHandler, counters: Counters,
                 clock: Callable[[], datetime.datetime]) -> None:
        self.host = host
        self._on_trigger = on_trigger
        self.counters = counters
        self._clock = clock

    def answer(self, request: dict, early: Callable[[dict], None] | None = None) -> dict:
        """Parse, hand on, and say what became of it; never raises. ``early`` gets the answer
        as soon as the core knows the outcome, before the core's work that follows it."""
        event_type = request.get("event_type")
        try:
            trigger = nova_notifications.parse(
                event_type, request.get("publisher_id"), request.get("payload"),
                host=self.host, received_at=self._clock(),
                context={"request_id": request.get("request_id")},
                announced_at=nova_notifications.envelope_time(request), actions=ALL_ACTIONS)
        except (RejectedMessage, ValueError) as exc:
            self.counters.incr("hook.rejected")
            LOG.warning("rejected %.80r from the nova driver: %s", event_type, exc)
            return reply(hook_protocol.REJECTED, detail=str(exc))
        except Exception:  # a bug in parse must not leave nova without an answer
            self.counters.incr("hook.handler_errors")
            LOG.exception("could not parse %.80r from the nova driver", event_type)
            return reply(hook_protocol.ERROR, detail="parse failed; see the agent's log")
        if not isinstance(trigger, StopAnnouncement):  # not ours, or an exists that is not a
            self.counters.incr("hook.ignored")      # revert's (the bus brings those)
            return reply(hook_protocol.IGNORED)
        self.counters.incr(f"hook.triggers.{trigger.action}")
        told = None if early is None else (lambda outcome: early(answered(outcome)))
        try:
            outcome = self._on_trigger(trigger, answer=told)
        except (CaptureDeferred, ShuttingDown) as exc:  # nothing spooled; the bus copy is retried
            self.counters.incr("hook.deferred")
            LOG.warning("capture of %s deferred: %s", trigger.instance_id, exc)
            return reply(hook_protocol.ERROR, detail="capture deferred; see the agent's log")
        except Exception:
            self.counters.incr("hook.handler_errors")
            LOG.exception("handling %s of %s failed", trigger.event_type, trigger.instance_id)
            return reply(hook_protocol.ERROR, detail="handler failed; see the agent's log")
        return answered(outcome)
