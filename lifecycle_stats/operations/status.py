"""The agent's state on disk, and the `lifecycle-stats-status` command that reads it.

The agent runs a StatusWriter that atomically rewrites <state_path>/status.json. The command
is a separate process that never starts an agent: it reads that file and opens the spool
database read-only, so spool depth and the oldest record's age are live even when the agent
is dead.
"""
from __future__ import annotations

import datetime
import json
import logging
import os
import socket
import sqlite3
import sys
import threading
from typing import Any, Callable

from oslo_config import cfg

from lifecycle_stats import threads
from lifecycle_stats.counters import Counters
from lifecycle_stats.publishing import spool as spool_mod
from lifecycle_stats.records import isotime, utcnow

LOG = logging.getLogger(__name__)

STATUS_FILENAME = "status.json"
STALE_INTERVALS = 3  # written_at older than this many intervals: the agent is not running

Clock = Callable[[], datetime.datetime]


def status_path(state_path: str) -> str:
    return os.path.join(state_path, STATUS_FILENAME)


def write_atomically(path: str, text: str) -> None:
    """Replace path with text: readers see the old or the new file, never a partial one."""
    tmp = f"{path}.{os.getpid()}.{threading.get_ident()}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            out.write(text)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


class StatusWriter:
    """Writes snapshot_fn()'s dict (plus written_at, pid, host, interval) every interval,
    then calls after_write. interval may be changed while running (a mutable option)."""

    def __init__(self, path: str, snapshot_fn: Callable[[], dict[str, Any]], interval: float,
                 clock: Clock = utcnow, host: str | None = None,
                 after_write: Callable[[], None] = lambda: None,
                 counters: Counters | None = None):
        if interval <= 0:
            raise ValueError(f"interval must be > 0, got {interval}")
        self.path = path
        self._snapshot = snapshot_fn
        self.interval = interval
        self._clock = clock
        self._host = host or socket.gethostname()
        self._after_write = after_write  # e.g. the node_exporter textfile, same cadence
        self._counters = counters if counters is not None else Counters()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def write(self) -> None:
        doc = {"pid": os.getpid(), "host": self._host, "interval": self.interval}
        doc.update(self._snapshot())
        doc["written_at"] = isotime(self._clock())
        write_atomically(self.path, json.dumps(doc, indent=2, sort_keys=True, default=str))
        self._after_write()

    @property
    def thread_state(self) -> str:
        return threads.state(self._thread, self._stop.is_set())

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="status-writer", daemon=True)
        self._thread.start()

    def stop(self, timeout: float | None = None) -> None:
        """Stop the thread and write a last time."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
        self._write_logged()

    def _run(self) -> None:
        while not self._stop.is_set():
            self._write_logged()
            self._stop.wait(self.interval)

    def _write_logged(self) -> None:
        try:
            self.write()
        except Exception:  # a status file must never take the agent down
            LOG.exception("could not write the status file %s", self.path)
            self._counters.incr("status.write_errors")


def spool_snapshot(spool: spool_mod.Spool) -> dict[str, Any]:
    """The `spool` part of a snapshot, for the agent's snapshot_fn."""
    by_conduit = {conduit: {"pending": pending, "oldest_age_seconds": age}
                  for conduit, (pending, age) in spool.backlog().items()}
    return {"depth": spool.depth(), "oldest_age_seconds": spool.oldest_age_seconds(),
            "by_conduit": by_conduit}


# -- reading ---------------------------------------------------------------------------------

def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _load_status(path: str) -> tuple[dict[str, Any], str | None]:
    try:
        with open(path, encoding="utf-8") as src:
            doc = json.load(src)
    except FileNotFoundError:
        return {}, f"no status file {path}"
    except (OSError, ValueError) as exc:
        return {}, f"unreadable status file {path}: {exc}"
    if not isinstance(doc, dict):
        return {}, f"status file {path} does not hold an object"
    return doc, None


def _agent_state(doc: dict[str, Any], now: datetime.datetime,
                 pid_alive: Callable[[int], bool]) -> tuple[str, float | None, str | None]:
    """("running" | "not running", seconds since written, why not running)."""
    try:
        written = datetime.datetime.fromisoformat(doc["written_at"])
        pid, interval = int(doc["pid"]), float(doc["interval"])
    except (KeyError, TypeError, ValueError):
        return "not running", None, "status file lacks written_at/pid/interval"
    age = (now - written).total_seconds()
    if not pid_alive(pid):
        return "not running", age, f"pid {pid} is gone"
    if age > STALE_INTERVALS * interval:
        return "not running", age, f"status not written for {age:.1f} s"
    return "running", age, None


def read_status(state_path: str, *, clock: Clock = utcnow,
                pid_alive: Callable[[int], bool] = _pid_alive) -> dict[str, Any]:
    """The agent's last status, its liveness, and the spool read live from its database."""
    now = clock()
    doc, problem = _load_status(status_path(state_path))
    result = dict(doc)
    problems = [problem] if problem else []
    if doc:
        result["agent"], result["status_age_seconds"], why = _agent_state(doc, now, pid_alive)
        problems += [why] if why else []
        if result["agent"] == "running":
            problems += [f"thread {name} is {state}" for name, state in
                         sorted((doc.get("threads") or {}).items())
                         if state in (threads.DEAD, threads.NOT_STARTED)]
    else:
        result["agent"] = "not running"
    result["spool"] = _live_spool(spool_mod.spool_path(state_path), now, doc, problems)
    result["problems"] = problems
    return result


def _live_spool(path: str, now: datetime.datetime, doc: dict[str, Any],
                problems: list[str]) -> dict[str, Any]:
    if not os.path.exists(path):
        problems.append(f"no spool database {path}")
        return {"depth": None, "oldest_age_seconds": None}
    try:
        stats = spool_mod.read_only_stats(path, now.timestamp())
    except sqlite3.Error as exc:
        problems.append(f"cannot read spool database {path}: {exc}")
        return {"depth": None, "oldest_age_seconds": None}
    confirmed = stats["confirmed_by_conduit"]
    stats["pending_by_conduit"] = {name: stats["depth"] - confirmed.get(name, 0)
                                   for name in doc.get("conduits") or ()}
    return stats


# -- the command -----------------------------------------------------------------------------

_CLI_OPTS = [cfg.BoolOpt("json", default=False, help="Print the status as JSON.")]
_STATE_PATH = cfg.StrOpt("state_path", default="/var/lib/lifecycle-stats",
                         help="Directory holding the agent's spool and status file.")


def _register(conf: cfg.ConfigOpts) -> None:
    for register, opts in ((conf.register_cli_opts, _CLI_OPTS),
                           (conf.register_opts, [_STATE_PATH])):
        try:
            register(opts)
        except cfg.DuplicateOptError:
            pass  # the agent's own definition is already there


def _age(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds:.1f} s"


def format_status(status: dict[str, Any]) -> str:
    lines = [f"agent:       {status['agent']}  (pid {status.get('pid', '-')}, host "
             f"{status.get('host', '-')}, status written {_age(status.get('status_age_seconds'))}"
             " ago)"]
    spool = status["spool"]
    lines.append(f"spool:       depth {spool.get('depth', '-')}, oldest record "
                 f"{_age(spool.get('oldest_age_seconds'))}, rejects {spool.get('rejects', '-')}")
    for name, pending in sorted(spool.get("pending_by_conduit", {}).items()):
        lines.append(f"conduit:     {name:<20} pending {pending}")
    for name, state in sorted((status.get("connections") or {}).items()):
        lines.append(f"connection:  {name:<20} {state}")
    for name, state in sorted((status.get("threads") or {}).items()):
        lines.append(f"thread:      {name:<30} {state}")
    lines.append(f"last poll:   {status.get('last_poll_at') or 'never'}")
    for name, value in sorted((status.get("counters") or {}).items()):
        lines.append(f"counter:     {name:<40} {value}")
    lines += [f"problem:     {text}" for text in status["problems"]]
    return "\n".join(lines)


def main(argv: list[str] | None = None, conf: cfg.ConfigOpts | None = None) -> int:
    """lifecycle-stats-status [--config-file F] [--json]; exit 0 if the agent runs, else 1."""
    conf = conf if conf is not None else cfg.ConfigOpts()
    _register(conf)
    conf(sys.argv[1:] if argv is None else argv, project="lifecycle-stats")
    status = read_status(conf.state_path)
    if conf.json:
        print(json.dumps(status, indent=2, sort_keys=True, default=str))
    else:
        print(format_status(status))
    return 0 if status["agent"] == "running" else 1
