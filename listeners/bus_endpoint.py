"""The bus listener's oslo.messaging endpoint: parse nova's notification, count it, hand a
stop announcement to the core (the AnnouncementHandler: capture.pipeline.Pipeline.announced) and
nova's exists to the audit handler, and answer oslo with the reply for what became of it.

Delivery is at-least-once: the handler runs synchronously in the executor's thread and the
message is acknowledged only after it returns. CaptureDeferred (nothing spooled yet) and
ShuttingDown (the agent stops) always requeue; an unexpected failure requeues only with
[notification_listener] allow_requeue.
"""
from __future__ import annotations

import datetime
import logging
import reprlib
from typing import Any, Callable

import oslo_messaging

from lifecycle_stats.counters import Counters
from lifecycle_stats.exceptions import CaptureDeferred, RejectedMessage, ShuttingDown
from lifecycle_stats.interfaces import Outcome, AnnouncementHandler
from lifecycle_stats.listeners import nova_notifications
from lifecycle_stats.records import AuditWindow, StopAnnouncement

# the bus listener's logger, as before this module was split from it (log configurations name it)
LOG = logging.getLogger("lifecycle_stats.listeners.bus")

# The core's outcome of an announcement, as the bus's reply: whatever became of it (spooled,
# spooled before, read, not nova's), the message is done; only an exception requeues it.
REPLY = dict.fromkeys(Outcome, oslo_messaging.NotificationResult.HANDLED)

_PAYLOAD_REPR = reprlib.Repr()
_PAYLOAD_REPR.maxlevel = 3
_PAYLOAD_REPR.maxdict = 12
_PAYLOAD_REPR.maxstring = 80
_PAYLOAD_REPR.maxother = 80



class DeleteStartEndpoint:
    """oslo.messaging endpoint: parse, count, hand triggers on; never raises."""

    def __init__(self, *, host: str, on_trigger: AnnouncementHandler,
                 counters: Counters, clock: Callable[[], datetime.datetime],
                 allow_requeue: bool, holds: Callable[[str], bool] = lambda _uuid: False,
                 on_audit: Callable[[AuditWindow], Any] | None = None):
        self._host = host
        self._holds = holds
        self._on_trigger = on_trigger
        self._on_audit = on_audit
        self._counters = counters
        self._clock = clock
        self._allow_requeue = allow_requeue

    def info(self, ctxt, publisher_id, event_type, payload, metadata):
        # Here and below: log first, count second; whoever sees a counter may rely on the log.
        received_at = self._clock()
        try:
            found = nova_notifications.parse_all(
                event_type, publisher_id, payload, received_at=received_at, context=ctxt,
                announced_at=nova_notifications.envelope_time(metadata))
        except RejectedMessage as exc:
            LOG.warning("rejected %s from %s: %s; payload %s", _short(event_type),
                        _short(publisher_id), exc, _PAYLOAD_REPR.repr(payload))
            self._counters.incr("bus.rejected")
            return oslo_messaging.NotificationResult.HANDLED
        except Exception:  # a bug in parse must not kill the listener or loop on requeue
            LOG.exception("could not parse %s from %s", _short(event_type), _short(publisher_id))
            self._counters.incr("bus.handler_errors")
            return oslo_messaging.NotificationResult.HANDLED
        if not found or found[0].host != self._host:
            self._not_mine(event_type, publisher_id, found[0] if found else None)
            return oslo_messaging.NotificationResult.HANDLED
        outcome = oslo_messaging.NotificationResult.HANDLED
        for trigger in found:  # a resize revert's exists: the closing read, then the window
            if isinstance(trigger, AuditWindow) and self._on_audit is None:
                self._counters.incr("bus.ignored")  # nova's exists, enrichment off
                continue
            outcome = self._deliver(trigger)
            if outcome != oslo_messaging.NotificationResult.HANDLED:
                break
        return outcome

    def _not_mine(self, event_type, publisher_id,
                  trigger: StopAnnouncement | AuditWindow | None) -> None:
        """Another host's (or, host null, nobody's) message. If this host holds the domain
        nevertheless, [DEFAULT] host probably differs from nova-compute's: say so."""
        if trigger is not None and trigger.host is not None and self._holds(trigger.instance_id):
            LOG.warning("%s of %s names host %s, but its domain is on this host (%s): is "
                        "[DEFAULT] host the same as nova-compute's host?", trigger.event_type,
                        trigger.instance_id, _short(trigger.host), self._host)
            self._counters.incr("bus.host_mismatch")
        else:
            LOG.debug("ignored %s from %s", _short(event_type), _short(publisher_id))
        self._counters.incr("bus.ignored")

    def _deliver(self, trigger: StopAnnouncement | AuditWindow):
        form = nova_notifications.classify(trigger.event_type)
        if isinstance(trigger, AuditWindow):
            self._counters.incr("bus.audits." + form)
            handler = self._on_audit
        else:
            self._counters.incr("bus.triggers." + form)
            handler = self._on_trigger
        try:
            outcome = handler(trigger)
        except CaptureDeferred as exc:  # nothing spooled yet: the message must come back
            LOG.info("requeued %s of %s: %s", trigger.event_type, trigger.instance_id, exc)
            self._counters.incr("bus.requeued")
            return oslo_messaging.NotificationResult.REQUEUE
        except ShuttingDown:  # the agent stops: the next run gets it
            LOG.warning("stopping: %s of %s left for redelivery", trigger.event_type,
                        trigger.instance_id)
            self._counters.incr("bus.requeued_at_stop")
            return oslo_messaging.NotificationResult.REQUEUE
        except Exception:
            LOG.exception("handling %s of %s failed", trigger.event_type, trigger.instance_id)
            self._counters.incr("bus.handler_errors")
            return self.failure_outcome()
        # an audit (or a handler that answers no Outcome) is done too; an answer that is not
        # an Outcome (unhashable, say) must not raise here: oslo would requeue it for ever
        if isinstance(outcome, Outcome):
            return REPLY[outcome]
        return oslo_messaging.NotificationResult.HANDLED

    def failure_outcome(self):
        """REQUEUE (redeliver later) only when allowed; else HANDLED (acknowledge, drop)."""
        if self._allow_requeue:
            return oslo_messaging.NotificationResult.REQUEUE
        return oslo_messaging.NotificationResult.HANDLED


def _short(value: object) -> str:
    return _PAYLOAD_REPR.repr(value)
