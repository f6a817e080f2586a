"""`lifecycle-stats-status`: the agent's state, read from another process.

It never starts an agent: it reads the status file the agent's StatusWriter keeps
(operations/status.py) and opens the spool database read-only, so spool depth and the oldest
record's age are live even when the agent is dead.
"""
from __future__ import annotations

import datetime
import json
import os
import sqlite3
import sys
from typing import Any, Callable

from oslo_config import cfg

from lifecycle_stats import opts, threads
from lifecycle_stats.operations.status import Clock, status_path
from lifecycle_stats.publishing import spool as spool_mod
from lifecycle_stats.records import utcnow

STALE_INTERVALS = 3  # written_at older than this many intervals: the agent is not running


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


_CLI_OPTS = [cfg.BoolOpt("json", default=False, help="Print the status as JSON.")]


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
    opts.register_all(conf)  # the agent's own options: its config file means the same here
    conf.register_cli_opts(_CLI_OPTS)
    conf(sys.argv[1:] if argv is None else argv, project="lifecycle-stats")
    status = read_status(conf.state_path)
    if conf.json:
        print(json.dumps(status, indent=2, sort_keys=True, default=str))
    else:
        print(format_status(status))
    return 0 if status["agent"] == "running" else 1
