"""libvirt domain lifecycle and metadata events, translated to records.LifecycleEvent.

The listener keeps its own connection to libvirtd. libvirt delivers events (and the
connection's close notice) on the process-wide event-loop thread started by
ensure_event_loop(); the callbacks here only translate and enqueue, a worker thread of the
listener calls on_event in order, and a reconnect thread of the listener re-opens a lost
connection with exponential backoff, so the event-loop thread never blocks.
"""
from __future__ import annotations

import logging
import queue
import threading
from typing import Callable

import libvirt

from lifecycle_stats import exceptions, records, threads
from lifecycle_stats.counters import Counters
from lifecycle_stats.listeners.event_loop import (  # noqa: F401 (re-exported)
    ensure_event_loop,
    event_loop_state,
)
from lifecycle_stats.listeners.libvirt_event_names import (  # noqa: F401 (re-exported)
    METADATA_CHANGED,
    translate_lifecycle,
    translate_metadata,
)
from lifecycle_stats.reading import hypervisor

LOG = logging.getLogger(__name__)

_NO_SUPPORT = 3  # VIR_ERR_NO_SUPPORT: local drivers (test://) have no keepalive

class LifecycleListener:
    """Delivers LifecycleEvents of every domain on `uri` to on_event, in order, on one thread.

    on_reconnect() runs on the same worker thread after a lost connection was re-opened and
    its callbacks registered again (the agent re-syncs its registry there), so on_event and
    on_reconnect never run concurrently. `sleep` waits between reconnect attempts; by default
    it waits on the stop signal, so stop() interrupts a backoff. open_connection is
    libvirt.open unless a test passes a fake.
    """

    JOIN_TIMEOUT = 10.0

    def __init__(self, uri: str, on_event: Callable[[records.LifecycleEvent], None], *,
                 on_reconnect: Callable[[], None] | None = None, counters: Counters | None = None,
                 clock: Callable[[], object] = records.utcnow, keepalive_interval: int = 5,
                 keepalive_count: int = 3, reconnect_max_wait: float = 10.0,
                 sleep: Callable[[float], None] | None = None,
                 open_connection: Callable[[str], libvirt.virConnect] = libvirt.open):
        if keepalive_interval < 1 or keepalive_count < 1:
            raise ValueError("keepalive_interval and keepalive_count must be >= 1, got "
                             f"{keepalive_interval} and {keepalive_count}")
        if reconnect_max_wait <= 0:
            raise ValueError(f"reconnect_max_wait must be > 0, got {reconnect_max_wait}")
        self.uri = uri
        self.counters = counters if counters is not None else Counters()
        self._on_event = on_event
        self._on_reconnect = on_reconnect
        self._clock = clock
        self._keepalive = (keepalive_interval, keepalive_count)
        self._max_wait = reconnect_max_wait
        self._stopping = threading.Event()
        self._sleep = sleep if sleep is not None else self._stopping.wait
        self._open = open_connection
        self._lock = threading.Lock()  # guards _conn/_callback_ids/_generation swaps only
        self._conn = None
        self._callback_ids: list[int] = []
        self._generation = 0
        self._connected = threading.Event()
        self._lost = threading.Event()
        self._queue: queue.Queue = queue.Queue()
        self._threads: list[threading.Thread] = []

    @classmethod
    def from_conf(cls, conf, on_event, on_reconnect=None, counters=None,
                  **kwargs) -> "LifecycleListener":
        """Built from the [libvirt] group (uri, keepalive_*, reconnect_max_wait), which the
        reading room defines (reading/hypervisor.py) and registers here if needed.

        kwargs (clock, sleep, open_connection) pass through to the constructor.
        """
        conf.register_opts(hypervisor.OPTS, group=hypervisor.GROUP)
        group = conf[hypervisor.GROUP]
        return cls(group.uri, on_event, on_reconnect=on_reconnect, counters=counters,
                   keepalive_interval=group.keepalive_interval,
                   keepalive_count=group.keepalive_count,
                   reconnect_max_wait=group.reconnect_max_wait, **kwargs)

    @property
    def is_connected(self) -> bool:
        return self._connected.is_set()

    def thread_states(self) -> dict[str, str]:
        """{"libvirt-events-worker": ..., "libvirt-reconnect": ...} (see threads.state)."""
        worker, supervisor = self._threads or (None, None)
        stopping = self._stopping.is_set()
        return {"libvirt-events-worker": threads.state(worker, stopping),
                "libvirt-reconnect": threads.state(supervisor, stopping)}

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> None:
        """Open the connection, register callbacks, start the worker and reconnect threads.

        Raises exceptions.ConnectionLost when libvirtd cannot be reached.
        """
        if self._threads:
            raise RuntimeError("LifecycleListener already started")
        self._install(self._connect())
        suffix = f"{id(self):x}"
        self._threads = [
            threading.Thread(target=self._work, name=f"libvirt-events-worker-{suffix}",
                             daemon=True),
            threading.Thread(target=self._supervise, name=f"libvirt-reconnect-{suffix}",
                             daemon=True),
        ]
        for thread in self._threads:
            thread.start()

    def stop(self, timeout: float | None = None) -> None:
        """Deregister, close the connection and join this listener's threads, each within
        timeout (JOIN_TIMEOUT by default). Events already queued are still delivered before
        the worker ends, if it has the time."""
        self._stopping.set()
        self._lost.set()  # wake the reconnect thread so it sees _stopping
        worker, supervisor = self._threads or (None, None)
        bound = self.JOIN_TIMEOUT if timeout is None else timeout
        self._join(supervisor, bound)
        with self._lock:
            conn, ids, self._conn, self._callback_ids = self._conn, self._callback_ids, None, []
        self._connected.clear()
        if conn is not None:
            _discard(conn, ids)
        self._queue.put(_STOP)
        self._join(worker, bound)

    def _join(self, thread: threading.Thread | None, timeout: float) -> None:
        if thread is None or thread is threading.current_thread():
            return  # stop() called from on_event/on_reconnect: the worker ends after it
        thread.join(timeout)
        if thread.is_alive():
            LOG.warning("thread %s did not end within %.1f s", thread.name, timeout)

    # ------------------------------------------------------------------ connection
    def _connect(self):
        """A new connection with keepalive and every callback registered, as a tuple."""
        conn = hypervisor.open_connection(self.uri, self._open)
        generation = self._generation + 1
        try:
            with hypervisor.translated():
                self._set_keepalive(conn)
                conn.registerCloseCallback(self._on_close, generation)
                ids = self._register_events(conn)
        except exceptions.HypervisorError:
            _discard(conn, [])
            raise
        return conn, ids, generation

    def _install(self, connection) -> None:
        conn, ids, generation = connection
        with self._lock:
            self._conn, self._callback_ids, self._generation = conn, ids, generation
        self._connected.set()
        LOG.info("listening for libvirt domain events on %s", self.uri)

    def _set_keepalive(self, conn) -> None:
        try:
            conn.setKeepAlive(*self._keepalive)
        except libvirt.libvirtError as exc:
            if exc.get_error_code() != _NO_SUPPORT:
                raise
            LOG.debug("%s has no keepalive (local driver)", self.uri)

    def _register_events(self, conn) -> list[int]:
        ids = [conn.domainEventRegisterAny(
            None, libvirt.VIR_DOMAIN_EVENT_ID_LIFECYCLE, self._on_lifecycle, None)]
        if hasattr(libvirt, "VIR_DOMAIN_EVENT_ID_METADATA_CHANGE"):  # libvirt >= 3.0
            ids.append(conn.domainEventRegisterAny(
                None, libvirt.VIR_DOMAIN_EVENT_ID_METADATA_CHANGE, self._on_metadata, None))
        return ids

    def _supervise(self) -> None:
        """Reconnect thread: waits for a lost connection and re-opens it; whatever fails in
        one attempt is logged and counted, and the next attempt follows after a backoff."""
        while True:
            self._lost.wait()
            if self._stopping.is_set():
                return
            self._lost.clear()
            try:
                self._reconnect()
            except Exception:
                LOG.exception("reconnect to %s failed unexpectedly; trying again in %.0f s",
                              self.uri, self._max_wait)
                self.counters.incr("libvirt.reconnect_errors")
                self._sleep(self._max_wait)
                self._lost.set()

    def _reconnect(self) -> None:
        self._connected.clear()
        with self._lock:
            conn, ids, self._conn, self._callback_ids = self._conn, self._callback_ids, None, []
        if conn is not None:
            _discard(conn, ids)
        try:
            connection = self._retrying()(self._connect)
        except exceptions.ConnectionLost:  # only when stopping
            return
        except exceptions.HypervisorError as exc:  # retrying cannot help; try again later
            self.counters.incr("libvirt.reconnect_errors")
            LOG.error("cannot reconnect to %s: %s; next attempt in %.0f s", self.uri, exc,
                      self._max_wait)
            self._sleep(self._max_wait)
            self._lost.set()
            return
        if self._stopping.is_set():
            _discard(*connection[:2])
            return
        self._install(connection)
        self.counters.incr("libvirt.reconnects")
        LOG.warning("reconnected to %s", self.uri)
        self._queue.put(_RESYNC)

    def _retrying(self):
        return hypervisor.reconnect_policy(
            stop=lambda _state: self._stopping.is_set(), max_wait=self._max_wait,
            sleep=self._sleep,
            before_sleep=lambda state: LOG.warning(
                "reconnect to %s failed (attempt %d): %s", self.uri, state.attempt_number,
                state.outcome.exception()))

    # ------------------------------------------------------------------ event-loop callbacks
    def _on_close(self, _conn, reason: int, generation: int) -> None:
        if generation < self._generation or self._stopping.is_set():
            return  # an older connection, already replaced, or our own stop()
        self._connected.clear()
        self.counters.incr("libvirt.disconnects")
        LOG.warning("connection to %s lost (close reason %d); reconnecting", self.uri, reason)
        self._lost.set()

    def _on_lifecycle(self, _conn, dom, event: int, detail: int, _opaque) -> None:
        self._enqueue(dom, *translate_lifecycle(event, detail))

    def _on_metadata(self, _conn, dom, mtype: int, _nsuri, _opaque) -> None:
        self._enqueue(dom, *translate_metadata(mtype))

    def _enqueue(self, dom, event: str, detail: str) -> None:
        self._queue.put(records.LifecycleEvent(
            instance_id=dom.UUIDString(), domain_name=dom.name(), event=event, detail=detail,
            received_at=self._clock()))

    # ------------------------------------------------------------------ worker
    def _work(self) -> None:
        while (item := self._queue.get()) is not _STOP:
            if item is _RESYNC:
                self._call(self._on_reconnect, "libvirt.resync_errors")
            else:
                self._call(lambda: self._on_event(item), "events.handler_errors")

    def _call(self, handler: Callable[[], None] | None, error_counter: str) -> None:
        if handler is None:
            return
        try:
            handler()
        except Exception:  # one bad event must never stop the ones after it
            self.counters.incr(error_counter)
            LOG.exception("libvirt event handler failed (%s)", error_counter)


_STOP = object()
_RESYNC = object()


def _discard(conn, callback_ids: list[int]) -> None:
    """Deregister, drop the close callback and close; a dead connection may refuse all three."""
    for callback_id in callback_ids:
        _quietly(conn.domainEventDeregisterAny, callback_id)
    _quietly(conn.unregisterCloseCallback)
    _quietly(conn.close)


def _quietly(call, *args) -> None:
    try:
        call(*args)
    except libvirt.libvirtError as exc:
        LOG.debug("ignored while closing a libvirt connection: %s", exc)
