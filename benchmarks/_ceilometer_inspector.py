"""The parent side of _ceilometer_inspector_worker.py: Ceilometer's real LibvirtInspector in a
subprocess under .ceilometer-venv's Python, one JSON line per poll cycle."""
from __future__ import annotations

import dataclasses
import json
import os
import subprocess

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORKER = os.path.join(REPO, "benchmarks", "_ceilometer_inspector_worker.py")
VENV = os.path.join(REPO, os.environ.get("CEILOMETER_VENV", ".ceilometer-venv"))  # as the script
DEFAULT_PYTHON = os.path.join(VENV, "bin", "python")
NO_WORKER = ("cannot start Ceilometer's LibvirtInspector ({why}): "
             "run `bash tools/ceilometer_venv.sh`")


class WorkerError(RuntimeError):
    """The worker did not start, or answered something other than a cycle's figures."""


@dataclasses.dataclass(frozen=True)
class Cycle:
    wall_ms: float
    cpu_ms: float  # the worker's own time.process_time over the cycle
    instances: int
    read: int
    errors: dict[str, int]


def parse_ready(line: str) -> dict:
    try:
        hello = json.loads(line)
    except ValueError:
        hello = None
    if not isinstance(hello, dict) or hello.get("ready") is not True:
        raise WorkerError(f"no ready line from the worker, got {line.strip()[:200]!r}")
    return hello


def parse_cycle(line: str) -> Cycle:
    """One reply line as a Cycle; a worker-side error or a malformed line raises WorkerError."""
    if not line:
        raise WorkerError("the worker exited (see its stderr above)")
    try:
        reply = json.loads(line)
    except ValueError as exc:
        raise WorkerError(f"unreadable reply {line.strip()[:200]!r}: {exc}") from None
    if not isinstance(reply, dict):
        raise WorkerError(f"reply is not an object: {line.strip()[:200]!r}")
    if "error" in reply:
        raise WorkerError(f"the worker failed a cycle: {reply['error']}")
    try:
        return Cycle(wall_ms=float(reply["wall_ms"]), cpu_ms=float(reply["cpu_ms"]),
                     instances=int(reply["instances"]), read=int(reply["read"]),
                     errors={str(k): int(v) for k, v in reply["errors"].items()})
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise WorkerError(f"incomplete reply {line.strip()[:200]!r}: {exc!r}") from None


class CeilometerInspector:
    """Ceilometer's LibvirtInspector in its own process; cycle() runs one poll cycle there."""

    def __init__(self, uri: str, python: str = DEFAULT_PYTHON):
        if not os.access(python, os.X_OK):
            raise WorkerError(NO_WORKER.format(why=f"{python} missing"))
        self._proc = subprocess.Popen([python, "-W", "ignore", WORKER, "--uri", uri],
                                      stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                      text=True)  # stderr: inherited
        try:
            self.versions = parse_ready(self._proc.stdout.readline())
        except WorkerError as exc:
            self.close()
            raise WorkerError(NO_WORKER.format(why=exc)) from None

    def cycle(self, instances: list[dict]) -> Cycle:
        self._proc.stdin.write(json.dumps({"instances": instances}) + "\n")
        self._proc.stdin.flush()
        return parse_cycle(self._proc.stdout.readline())

    def close(self) -> None:
        if self._proc.poll() is None:
            self._proc.stdin.close()
            try:
                self._proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
