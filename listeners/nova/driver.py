"""An oslo.messaging notifier driver that runs INSIDE nova-compute: on nova's .start
announcements for this host it asks the local agent to read the instance's counters, and
returns once the agent answers "captured and spooled" -- before nova destroys the domain.

Enabled in nova.conf by one more line, ``[oslo_messaging_notifications] driver =
lifecycle_stats`` (the option is multi-valued; keep ``messagingv2`` for nova's own
notifications). Nova calls every driver synchronously in the thread doing the delete, before
``driver.destroy``; oslo.messaging swallows ``Exception`` from drivers but logs the whole
payload, and lets ``BaseException`` (eventlet.Timeout) through into nova. So this driver:

- imports nothing from nova, eventlet or libvirt (nova >= 2026.2 runs native threads and
  poisons ``import eventlet``; older nova monkey-patches socket, so our socket is green);
- bounds its wait with socket timeouts against one deadline (``[lifecycle_stats] timeout``);
- keeps its connections to the agent open between actions (connections.py);
- catches every Exception itself and logs one line without the payload.
"""
from __future__ import annotations

import collections
import logging
import threading
import time

from oslo_config import cfg
from oslo_messaging.notify import notifier

from lifecycle_stats.listeners.nova import connections, protocol as hook_protocol

LOG = logging.getLogger(__name__)
GROUP = "lifecycle_stats"
DEDUPE_WINDOW = 120.0  # seconds: nova sends its two formats of one action back to back
DEDUPE_MAX = 4096
QUIET_PERIOD = 300.0  # seconds between WARNINGs while the agent keeps failing

OPTS = [
    cfg.StrOpt("socket_path", default=hook_protocol.DEFAULT_SOCKET_PATH,
               help="Unix socket of the local lifecycle-stats agent ([hook] socket_path in "
                    "the agent's configuration)."),
    cfg.FloatOpt("timeout", default=0.5, min=0.01, max=5.0,
                 help="Seconds nova waits at most for the agent to capture an instance "
                      "before nova goes on (with the delete, reboot, ...)."),
    cfg.StrOpt("host", default=None,
               help="This compute host's name as nova reports it. Unset: nova's [DEFAULT] "
                    "host."),
]


def list_opts():
    """For oslo-config-generator (entry point oslo.config.opts: lifecycle_stats.nova)."""
    return [(GROUP, list(OPTS))]


class RecentTriggers:
    """(instance, action, request) keys sent lately. Nova emits legacy then versioned for one
    action through two Notifier objects, hence two driver objects: they share this."""

    def __init__(self, window: float = DEDUPE_WINDOW, limit: int = DEDUPE_MAX,
                 clock=time.monotonic) -> None:
        self._window = window
        self._limit = limit
        self._clock = clock
        self._lock = threading.Lock()
        self._sent: collections.OrderedDict[tuple, float] = collections.OrderedDict()

    def first_time(self, key: tuple) -> bool:
        """True the first time ``key`` is seen within the window, and records it."""
        now = self._clock()
        with self._lock:
            while self._sent and (len(self._sent) >= self._limit
                                  or next(iter(self._sent.values())) < now - self._window):
                self._sent.popitem(last=False)
            if key in self._sent:
                return False
            self._sent[key] = now
            return True


_RECENT = RecentTriggers()


class LifecycleStatsDriver(notifier.Driver):
    """Entry point ``lifecycle_stats`` in ``oslo.messaging.notify.drivers``."""

    def __init__(self, conf, topics, transport, recent: RecentTriggers | None = None,
                 agent: connections.AgentConnections | None = None):
        super().__init__(conf, topics, transport)
        conf.register_opts(OPTS, group=GROUP)
        opts = conf[GROUP]
        self.socket_path = opts.socket_path
        self.timeout = opts.timeout
        self.host = opts.host or _nova_host(conf)
        self._recent = recent if recent is not None else _RECENT
        self._agent = agent if agent is not None else connections.shared(self.socket_path)
        self._quiet_until = 0.0

    def notify(self, ctxt, msg, priority, retry):
        try:
            trigger = self._trigger(ctxt, msg)
            if trigger is not None:
                self._send(trigger)
        except Exception as exc:  # never into nova; never with the payload
            event_type = msg.get("event_type") if isinstance(msg, dict) else None
            self._warn("lifecycle-stats driver failed on %.80r: %s", event_type, exc)

    def _trigger(self, ctxt, msg) -> dict | None:
        """The frame to send for ``msg``, or None when it is not ours to send."""
        payload = msg.get("payload")
        found = hook_protocol.action_of(msg.get("event_type"), payload)
        if found is None or str(msg.get("publisher_id", "")).startswith("nova-api:"):
            return None
        action, form = found
        fields = payload
        if form == hook_protocol.VERSIONED and isinstance(payload, dict):
            fields = payload.get("nova_object.data")
        if not isinstance(fields, dict) or not self.host or fields.get("host") != self.host:
            return None  # nova-api (host null), another host, or not nova's shape
        instance = fields.get("uuid" if form == hook_protocol.VERSIONED else "instance_id")
        request_id = _request_id(ctxt)
        # Marked before sending: when the agent is down, the second format must not make nova
        # wait a second timeout for the same action.
        if not self._recent.first_time((instance, action, request_id)):
            return None
        return {"v": hook_protocol.VERSION, "event_type": msg["event_type"],
                "publisher_id": msg.get("publisher_id"), "payload": payload,
                "message_id": msg.get("message_id"), "request_id": request_id,
                "timestamp": msg.get("timestamp")}

    def _send(self, trigger: dict) -> None:
        started = time.monotonic()
        try:
            reply = self._agent.request(trigger, self.timeout)
        except (OSError, hook_protocol.ProtocolError) as exc:
            self._warn("lifecycle-stats agent at %s did not capture %s within %.2fs (%s: %s); "
                       "nova goes on", self.socket_path, trigger["event_type"], self.timeout,
                       type(exc).__name__, exc)
            return
        done = time.monotonic()
        if reply.get("status") in (hook_protocol.CAPTURED, hook_protocol.CACHED,
                                   hook_protocol.IGNORED):
            self._quiet_until = 0.0
            LOG.debug("lifecycle-stats: %s %s (%s) in %.1f ms, %s ms of it in the agent%s",
                      trigger["event_type"], reply.get("status"), reply.get("outcome"),
                      (done - started) * 1000, reply.get("agent_ms"),
                      _way_there_and_back(reply, started, done))
        else:
            self._warn("lifecycle-stats agent answered %s for %s: %s", reply.get("status"),
                       trigger["event_type"], str(reply.get("detail", ""))[:200])

    def _warn(self, text: str, *args) -> None:
        """WARNING once per quiet period, DEBUG in between: a stopped agent must not flood
        nova's log with one line per instance action."""
        now = time.monotonic()
        if now >= self._quiet_until:
            self._quiet_until = now + QUIET_PERIOD
            LOG.warning(text, *args)
        else:
            LOG.debug(text, *args)


def _way_there_and_back(reply: dict, started: float, done: float) -> str:
    """The rest of the wait: to the agent's reading of the request (connect, frame, its
    wake-up), and from its answer back (frame, nova's wake-up). Both clocks are the host's
    monotonic clock; an agent before read_at leaves it out."""
    read_at, agent_ms = reply.get("read_at"), reply.get("agent_ms")
    if not isinstance(read_at, float) or not isinstance(agent_ms, (int, float)):
        return ""
    there = (read_at - started) * 1000
    return f" ({there:.1f} ms to reach it, {(done - read_at) * 1000 - agent_ms:.1f} ms back)"


def _request_id(ctxt) -> str | None:
    """Nova's serializer turns its RequestContext into a dict; others pass the object."""
    value = ctxt.get("request_id") if isinstance(ctxt, dict) else getattr(ctxt, "request_id",
                                                                          None)
    return value if isinstance(value, str) else None


def _nova_host(conf) -> str | None:
    try:
        return conf.host  # nova registers [DEFAULT] host; NoSuchOptError is an AttributeError
    except AttributeError:
        return None
