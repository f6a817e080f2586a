"""lifecycle-stats-agent: run the agent until SIGTERM or SIGINT; SIGHUP reloads (reload.py).

Under systemd (Type=notify) it reports READY=1 once listening and STOPPING=1 when it drains.
"""
from __future__ import annotations

import signal
import sys
import threading

from oslo_config import cfg
from oslo_log import log

from lifecycle_stats import interpreter, opts
from lifecycle_stats.operations import reload, sd_notify
from lifecycle_stats.exceptions import ConfigError, HypervisorError

LOG = log.getLogger(__name__)
EXIT_UNAVAILABLE = 1  # libvirt unreachable, cannot start: systemd retries (Restart=)
EXIT_CONFIG = 2  # a configuration error: RestartPreventExitStatus= in the shipped unit


def parse_config(argv, prog: str) -> cfg.ConfigOpts:
    conf = cfg.ConfigOpts()
    opts.register_all(conf)
    log.register_options(conf)
    conf(argv, project="lifecycle-stats", prog=prog)
    log.setup(conf, "lifecycle-stats")
    return conf


def check_values(conf: cfg.ConfigOpts) -> None:
    """Read every registered option once: oslo.config converts a value when it is first read,
    so a bad one would otherwise surface whenever its code first runs (a traceback at start,
    exit 1, restarted for ever) instead of as a configuration error now."""
    for name in list(conf):
        value = conf[name]
        if isinstance(value, cfg.ConfigOpts.GroupAttr):
            for option in list(value):
                value[option]


def main(argv=None) -> int:
    interpreter.skip_green_dns()  # before the agent's imports bring eventlet in
    from lifecycle_stats.agent import Agent

    argv = sys.argv[1:] if argv is None else argv
    interpreter.limit_malloc_arenas()  # before any thread starts
    try:
        conf = parse_config(argv, "lifecycle-stats-agent")
        agent = Agent(conf)  # registers the conduits' options too
        check_values(conf)
    except (cfg.Error, ConfigError, ValueError) as exc:
        print(f"lifecycle-stats-agent: configuration error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    stopping, reloading = threading.Event(), threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stopping.set())
    signal.signal(signal.SIGHUP, lambda *_: reloading.set())  # before start: never fatal
    try:
        agent.start()
    except (HypervisorError, ConfigError, cfg.Error) as exc:
        what = (f"cannot reach libvirt at {conf.libvirt.uri}" if isinstance(exc, HypervisorError)
                else "configuration error")
        print(f"lifecycle-stats-agent: {what}: {exc}", file=sys.stderr)
        agent.stop()
        return EXIT_UNAVAILABLE if isinstance(exc, HypervisorError) else EXIT_CONFIG
    except OSError as exc:  # e.g. no permission to create the hook socket's directory
        print(f"lifecycle-stats-agent: cannot start: {exc}", file=sys.stderr)
        agent.stop()
        return EXIT_UNAVAILABLE
    interpreter.tune_for_latency()
    sd_notify.notify("READY=1")
    run_until(stopping, reloading, conf)
    LOG.info("signal received: finishing flushes in flight")
    sd_notify.notify("STOPPING=1")
    agent.stop()
    return 0


def run_until(stopping: threading.Event, reloading: threading.Event, conf) -> None:
    """Wait in slices: a signal the kernel hands to another thread (libvirt's, oslo's) only
    sets a flag, and the handler runs when the main thread next executes Python code.
    A reload runs here, on the main thread, while every listener keeps working."""
    while not stopping.wait(0.5):
        if reloading.is_set():
            reloading.clear()
            sd_notify.notify("RELOADING=1")
            reload.reload(conf)
            sd_notify.notify("READY=1")


if __name__ == "__main__":
    sys.exit(main())
