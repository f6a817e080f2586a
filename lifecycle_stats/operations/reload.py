"""SIGHUP: reopen log files and re-read mutable options, without stopping anything.

`systemctl reload` and logrotate's postrotate send SIGHUP. The listeners, flushes in flight,
senders and the spool keep running: a reload never drops a trigger. Options marked
`mutable=True` take effect through oslo.config's mutate hooks (the agent registers one for
its own; oslo.log's applies `debug`); a changed immutable option is logged by oslo.config
and waits for a restart.
"""
from __future__ import annotations

import logging

from oslo_config import cfg

LOG = logging.getLogger(__name__)


def reopen_log_files(logger: logging.Logger | None = None) -> int:
    """Reopen every file handler of logger (the root logger): after logrotate moved the file,
    logging continues in a new file of the same name. Returns how many were reopened."""
    reopened = 0
    for handler in (logger or logging.getLogger()).handlers:
        if not isinstance(handler, logging.FileHandler):
            continue
        handler.acquire()
        try:
            old = handler.setStream(handler._open())  # noqa: SLF001 (stdlib's own reopen)
        finally:
            handler.release()
        if old is not None:
            old.close()
        reopened += 1
    return reopened


def reload(conf: cfg.ConfigOpts) -> dict:
    """Reopen logs, then re-read the config files; returns {(group, option): (old, new)}
    of the mutable options that changed. A config file that no longer parses is logged and
    the running values are kept."""
    files = reopen_log_files()
    try:
        changed = conf.mutate_config_files()
    except (cfg.Error, OSError, ValueError) as exc:
        LOG.error("reload: config files not re-read, running values kept: %s", exc)
        changed = {}
    LOG.info("reload: %d log file(s) reopened, %d mutable option(s) changed", files,
             len(changed))
    return changed
