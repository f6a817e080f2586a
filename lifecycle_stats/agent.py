"""The agent: listeners → core → spool → emitters, on native threads.

Threads: libvirt's event loop; the lifecycle listener's worker and reconnect threads; the
bulk poller; oslo.messaging's threading executor for the bus listener (each delete.start is
flushed on the thread that received it and acknowledged once spooled); the hook server's
accept thread and one thread per connection from nova's driver (answered once spooled); one
sender per conduit; the status writer. Flush, poller and events each own their libvirt
connections (the flush a small pool: the reads of a burst of deletes run at once), so a flush
never waits behind a bulk poll.
"""
from __future__ import annotations

import logging
import os
import socket
import sys
import time

from oslo_config import cfg

from lifecycle_stats import counters as counters_mod
from lifecycle_stats import interpreter, records
from lifecycle_stats.capture.pipeline import Pipeline, Readers, Settings
from lifecycle_stats.operations import exposition, metrics, status
from lifecycle_stats.emitters import loader
from lifecycle_stats.interfaces import Conduit
from lifecycle_stats.listeners import bus, hook_server, libvirt_events
from lifecycle_stats.publishing import checkpoints, payloads, sender, spool
from lifecycle_stats.reading import hypervisor, inspector, processes, reader_pool, registry
from lifecycle_stats.usage import closer, store
from lifecycle_stats.usage.ledger import UsageLedger

LOG = logging.getLogger(__name__)

OPTS = [
    cfg.StrOpt("host", default=socket.gethostname(), sample_default="<hostname>",
               help="This hypervisor's name. Must equal nova-compute's `host`: delete "
                    "announcements for other hosts are ignored by it."),
    cfg.StrOpt("state_path", default="/var/lib/lifecycle-stats",
               help="Directory for the agent's local state: the delivery spool, the usage "
                    "ledger (usage.sqlite) and the "
                    "status file read by lifecycle-stats-status."),
    cfg.StrOpt("publisher_id", default="lifecycle-stats.$host",
               help="publisher_id of the notifications the agent publishes."),
    cfg.StrOpt("sample_source", default="openstack",
               help="`source` field of every sample (Ceilometer's default source name)."),
    cfg.FloatOpt("status_interval", default=10.0, min=0.5, mutable=True,
                 help="Seconds between writes of the status file."),
    cfg.FloatOpt("stop_timeout", default=8.0, min=1.0,
                 help="Seconds a stop may take in all (flushes in flight, senders draining, "
                      "threads ending); whatever runs longer is left behind."),
]


def refuse_green_threads() -> None:
    """oslo.messaging imports eventlet (through oslo.service) but must not patch anything:
    the agent's concurrency is native threads, and a patched process would block in libvirt."""
    patcher = sys.modules.get("eventlet.patcher")
    if patcher is not None and patcher.is_monkey_patched("thread"):
        raise RuntimeError("eventlet has monkey-patched this process; lifecycle-stats runs on "
                           "native threads and must not be loaded into a patched process")


def quiet_libvirt_stderr() -> None:
    """libvirt's default handler prints every error to stderr, including the expected ones
    (a domain gone mid-read, no nova metadata); each still raises libvirtError, which is
    translated and logged where it happens, so the duplicate print is switched off."""
    import libvirt

    libvirt.registerErrorHandler(lambda _ctx, _err: None, None)


class Agent:
    """The composition root: the one place that picks every implementation and wires
    listeners -> core -> spool -> conduits. Read __init__ top to bottom; the delete path goes
    on in capture/pipeline.py (Pipeline.announced)."""

    def __init__(self, conf: cfg.ConfigOpts, *, emitters: dict[str, Conduit] | None = None,
                 listen_transport=None) -> None:
        refuse_green_threads()
        quiet_libvirt_stderr()
        libvirt_events.ensure_event_loop()  # before any libvirt connection opens
        self.conf = conf
        self.counters = counters_mod.Counters()
        self._build_reading()
        self._build_publishing(emitters)
        self._build_usage()
        self._build_core()
        self._build_senders()
        self._build_listeners(listen_transport)
        self.metrics = exposition.MetricsExporter(conf, exposition.make_registry(
            metrics.AgentCollector(self.snapshot, self.counters)))
        self.status = status.StatusWriter(status.status_path(conf.state_path), self.snapshot,
                                          conf.status_interval, host=conf.host,
                                          after_write=self.metrics.write_textfile,
                                          counters=self.counters)
        conf.register_mutate_hook(self._apply_mutable_options)

    def _build_reading(self) -> None:
        """Separate libvirt connections, so no reader waits behind another: the flush's (a
        pool: the reads at nova's announcements run at once), the bulk poller's, and the event
        handler's (which the registry's metadata reads share)."""
        first = hypervisor.Hypervisor.from_conf(self.conf)  # registers [libvirt]
        self.flush_hvs = [first] + [hypervisor.Hypervisor.from_conf(self.conf)
                                    for _ in range(self.conf.libvirt.read_connections - 1)]
        self.poll_hv = hypervisor.Hypervisor.from_conf(self.conf)
        self.events_hv = hypervisor.Hypervisor.from_conf(self.conf)
        self.registry = registry.DomainRegistry(self.events_hv, self.counters)
        self.device_memory = processes.DeviceMemory()  # shared: the torn rule's memory
        self.process_facts = inspector.process_facts(self.poll_hv)  # shared: names, starts

    def _build_publishing(self, emitters: dict[str, Conduit] | None) -> None:
        conf = self.conf
        self.emitters = emitters if emitters is not None else loader.load(
            conf, loader.driver_names(conf))
        os.makedirs(conf.state_path, mode=0o700, exist_ok=True)
        self.spool = spool.Spool(spool.spool_path(conf.state_path),
                                 conduits=list(self.emitters), counters=self.counters,
                                 max_records=conf.spool.max_records)
        self.checkpoints = checkpoints.Checkpointer(self.spool)  # never in a capture's commit

    def _build_senders(self) -> None:
        """One per conduit; each publishes a capture as soon as it is durable, built by the
        core's publication (one build per capture, shared)."""
        conf = self.conf
        self.senders = [
            sender.Sender(self.spool, name, emitter, counters=self.counters,
                          wait_initial=conf.spool.retry_initial_wait,
                          wait_max=conf.spool.retry_max_wait,
                          probe_after=conf.spool.poison_probe_attempts,
                          max_age_seconds=conf.spool.max_age_seconds,
                          build=self.pipeline.publication.build,
                          on_drained=interpreter.release_free_heap,
                          before_batch=self.pipeline.nova_waiting.wait_clear)
            for name, emitter in self.emitters.items()]

    def _build_usage(self) -> None:
        """The usage ledger: its own SQLite file beside the spool."""
        period, retention = closer.settings(self.conf["usage"])  # conf.usage is taken
        self.ledger = UsageLedger(store.ledger_path(self.conf.state_path), period,
                                  retention=retention, counters=self.counters)

    def _build_core(self) -> None:
        """The core, through its one front door (capture/pipeline.py), and its period closer."""
        conf = self.conf
        self.pipeline = Pipeline(
            readers=Readers(announced=reader_pool.ReaderPool(
                                [self._inspector(hv) for hv in self.flush_hvs]),
                            poll=self._inspector(self.poll_hv),
                            events=self._inspector(self.events_hv)),
            registry=self.registry, spool=self.spool, ledger=self.ledger,
            settings=Settings.from_conf(conf), counters=self.counters,
            on_spooled=self._wake_senders)
        self.poller = self.pipeline.poller
        self.periods = closer.PeriodCloser(
            reporter=self.pipeline.reporter, instances=self.registry.instances,
            poll=self.pipeline.poll, emit_own=not conf["usage"].enrich_nova_exists,
            backlog=conf["usage"].max_backlog_periods, counters=self.counters)

    def _build_listeners(self, listen_transport) -> None:
        conf, core = self.conf, self.pipeline
        self.lifecycle = libvirt_events.LifecycleListener.from_conf(
            conf, core.lifecycle, core.resync, self.counters)
        on_trigger = metrics.timed(core.announced, self.counters)
        on_audit = core.audit if conf["usage"].enrich_nova_exists else None
        self.bus = bus.from_conf(conf, conf.host, on_trigger, self.counters,
                                 transport=listen_transport, holds=self.registry.is_known,
                                 on_audit=on_audit)
        # nova's notifier driver (zero race): same triggers, same door; None when disabled
        self.hook = hook_server.from_conf(conf, conf.host, on_trigger, self.counters)

    def _inspector(self, connection: hypervisor.Hypervisor) -> inspector.Inspector:
        return inspector.Inspector(connection, counters=self.counters,
                                   memory=self.device_memory, processes=self.process_facts)

    def start(self) -> None:
        self.metrics.start()  # first: a taken port fails the start before anything runs
        payloads.prepare_validators()  # not on the first delete's way to the bus
        self.checkpoints.start()
        for s in self.senders:
            s.start()
        self.pipeline.publication.start()  # builds first what a crash left captured
        self.lifecycle.start()  # before the resync, so no domain change falls in between
        self.pipeline.resync()
        self.poller.start()
        self.periods.start()
        self.bus.start()  # returns soon even when the broker is unreachable: connects later
        if self.hook is not None:
            self.hook.start()
        self.status.start()
        LOG.info("lifecycle-stats agent started on host %s (%d domains known, conduits %s)",
                 self.conf.host, len(self.registry.instances()), ", ".join(self.emitters))

    def stop(self, timeout: float | None = None) -> None:
        """Stop taking triggers, finish flushes in flight, give senders a moment to drain;
        every wait shares one bound ([DEFAULT] stop_timeout). A flush that outlives it never
        writes to the spool, and its trigger is left unacknowledged for redelivery."""
        deadline = time.monotonic() + (timeout or self.conf.stop_timeout)

        def left(share: float = 1.0) -> float:
            return max(0.0, (deadline - time.monotonic()) * share)

        if self.hook is not None:  # nova has stopped waiting for these after its timeout
            self.hook.stop(timeout=left(0.1))
        self.bus.stop(timeout=left(0.4))
        if not self.pipeline.close(left(0.3)):
            LOG.warning("flushes still running at stop: their triggers will be redelivered")
        self.lifecycle.stop(timeout=left(0.3))
        self.periods.request_stop()  # ends with the poller's join (a pre-end poll at worst)
        self.poller.stop(timeout=left(0.3))
        self.periods.stop(timeout=min(1.0, left(0.1)))
        self.pipeline.publication.stop(left(0.3))  # what is not built now is built at start
        for s in self.senders:
            s.drain(left(0.5))
        for s in self.senders:
            s.stop(left(0.5))
        self.status.stop(timeout=left(0.5))
        self.metrics.stop()
        for emitter in self.emitters.values():
            emitter.close()
        self.checkpoints.stop(min(1.0, left()))  # the spool's close checkpoints the rest
        self.spool.close()
        self.ledger.close()
        for connection in (*self.flush_hvs, self.poll_hv, self.events_hv):
            connection.close()
        LOG.info("lifecycle-stats agent stopped")

    def snapshot(self) -> dict:
        return {
            "host": self.conf.host,
            "connections": {
                "libvirt_flush": ("connected" if any(hv.is_alive() for hv in self.flush_hvs)
                                  else "disconnected"),
                "libvirt_poll": "connected" if self.poll_hv.is_alive() else "disconnected",
                "libvirt_metadata": "connected" if self.events_hv.is_alive() else "disconnected",
                "libvirt_events": "connected" if self.lifecycle.is_connected else "disconnected",
                "bus": {True: "connected", False: "disconnected"}.get(
                    self.bus.is_connected(), "unknown"),
            },
            "conduits": list(self.emitters),
            "threads": self.thread_states(),
            "last_poll_at": (records.isotime(self.poller.last_success_at)
                             if self.poller.last_success_at else None),
            "counters": self.counters.snapshot(),
            "spool": status.spool_snapshot(self.spool),
            "instances": len(self.registry.instances()),
            "usage_ledger": ({"state": "moved_aside", "moved_to": self.ledger.moved_aside}
                             if self.ledger.moved_aside else {"state": "ok"}),
        }

    def _apply_mutable_options(self, conf: cfg.ConfigOpts, _changed) -> None:
        """oslo.config mutate hook (SIGHUP, reload.py): options marked mutable=True. Every
        value is read (and so checked) before any is applied: one bad value keeps them all;
        the intervals count at once, from the last poll or write."""
        try:
            poll_interval, status_interval = conf.poller.interval, conf.status_interval
            textfile = conf[exposition.GROUP].textfile
        except (ValueError, cfg.Error) as exc:
            LOG.error("reload: a mutable option has a bad value, running values kept: %s", exc)
            return
        self.poller.reschedule(poll_interval)
        self.status.reschedule(status_interval)
        self.metrics.textfile = textfile

    def thread_states(self) -> dict[str, str]:
        """Every long-lived thread: alive, stopped, dead (ended unasked) or not started; the
        bus listener is "connecting" while the broker cannot be reached."""
        states = {"libvirt-event-loop": libvirt_events.event_loop_state(),
                  **self.lifecycle.thread_states(),
                  "poller": self.poller.thread_state,
                  "publication": self.pipeline.publication.thread_state,
                  "spool-checkpoints": self.checkpoints.thread_state,
                  "bus": self.bus.state,
                  "status-writer": self.status.thread_state}
        states.update({f"sender-{s.conduit}": s.thread_state for s in self.senders})
        if self.metrics.thread_state is not None:
            states["metrics-http"] = self.metrics.thread_state
        return states

    def _wake_senders(self) -> None:
        for s in self.senders:
            s.wake()
