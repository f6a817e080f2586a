"""lifecycle-stats-agent: run the agent until SIGTERM or SIGINT."""
from __future__ import annotations

import signal
import sys
import threading

from oslo_config import cfg
from oslo_log import log

from lifecycle_stats import opts
from lifecycle_stats.exceptions import ConfigError, HypervisorError

LOG = log.getLogger(__name__)


def parse_config(argv, prog: str) -> cfg.ConfigOpts:
    conf = cfg.ConfigOpts()
    opts.register_all(conf)
    log.register_options(conf)
    conf(argv, project="lifecycle-stats", prog=prog)
    log.setup(conf, "lifecycle-stats")
    return conf


def main(argv=None) -> int:
    from lifecycle_stats.agent import Agent

    argv = sys.argv[1:] if argv is None else argv
    try:
        conf = parse_config(argv, "lifecycle-stats-agent")
        agent = Agent(conf)
    except (cfg.Error, ConfigError, ValueError) as exc:
        print(f"lifecycle-stats-agent: configuration error: {exc}", file=sys.stderr)
        return 2
    stopping = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stopping.set())
    try:
        agent.start()
    except HypervisorError as exc:
        print(f"lifecycle-stats-agent: cannot reach libvirt at {conf.libvirt.uri}: {exc}",
              file=sys.stderr)
        agent.stop()
        return 1
    # Wait in slices: a signal the kernel hands to another thread (libvirt's, oslo's) only
    # sets a flag, and the handler runs when the main thread next executes Python code.
    while not stopping.wait(0.5):
        pass
    LOG.info("signal received: finishing flushes in flight")
    agent.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
