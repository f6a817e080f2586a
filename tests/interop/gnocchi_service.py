"""A real Gnocchi for the interop tier: gnocchi-api (uwsgi) + gnocchi-metricd from
.gnocchi-venv (tools/gnocchi_env.sh), a PostgreSQL indexer database and file storage of
the run's own, both removed by stop(). Basic auth: user `admin` (Gnocchi's admin in that mode),
as Ceilometer's `gnocchi-basic` auth plugin sends it."""
from __future__ import annotations

import base64
import json
import os
import pathlib
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request

ROOT = pathlib.Path(__file__).resolve().parents[2]
GNOCCHI_VENV = ROOT / ".gnocchi-venv"
PG_HOST, PG_PORT = "127.0.0.1", int(os.environ.get("LIFECYCLE_STATS_PG_PORT", "5432"))
PG_ROLE = "lifecycle_stats_gnocchi"  # created by tools/gnocchi_env.sh; password = name
USER = "admin"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def psql(sql: str) -> None:
    env = {**os.environ, "PGPASSWORD": PG_ROLE}
    done = subprocess.run(["psql", "-h", PG_HOST, "-p", str(PG_PORT), "-U", PG_ROLE, "-w",
                           "-d", "postgres", "-v", "ON_ERROR_STOP=1", "-qc", sql],
                          env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, f"{sql}: {done.stderr} (run tools/gnocchi_env.sh)"


class Gnocchi:
    def __init__(self, workdir: pathlib.Path, run: str):
        self.workdir = workdir
        self.database = f"lst_gnocchi_{run}"
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.config = workdir / "gnocchi.conf"
        self.procs: list[subprocess.Popen] = []

    def start(self) -> "Gnocchi":
        bin_dir = GNOCCHI_VENV / "bin"
        assert (bin_dir / "uwsgi").exists(), f"{GNOCCHI_VENV} missing: run tools/gnocchi_env.sh"
        psql(f"CREATE DATABASE {self.database}")
        (self.workdir / "storage").mkdir()
        self.config.write_text(
            f"[DEFAULT]\nlog_file = {self.workdir / 'gnocchi.log'}\n"
            "[api]\nauth_mode = basic\n"
            f"[indexer]\nurl = postgresql+psycopg2://{PG_ROLE}:{PG_ROLE}@{PG_HOST}:{PG_PORT}/"
            f"{self.database}\n"
            f"[storage]\ndriver = file\nfile_basepath = {self.workdir / 'storage'}\n"
            "[metricd]\nworkers = 1\nmetric_processing_delay = 1\n")
        subprocess.run([str(bin_dir / "gnocchi-upgrade"), "--config-file", str(self.config)],
                       check=True, capture_output=True, timeout=180)
        # gnocchi-api's own uwsgi arguments (gnocchi/cli/api.py), one worker instead of 1.5/core
        self._spawn([str(bin_dir / "uwsgi"), "--http", f"127.0.0.1:{self.port}", "--master",
                     "--enable-threads", "--die-on-term", "--processes", "1", "--threads", "2",
                     "--lazy-apps", "--chdir", "/", "--wsgi", "gnocchi.rest.wsgi",
                     "--pyargv", f"--config-file {self.config}", "-H", str(GNOCCHI_VENV),
                     "--so-keepalive", "--http-keepalive", "--add-header",
                     "Connection: Keep-Alive"],
                    "api")
        self._spawn([str(bin_dir / "gnocchi-metricd"), "--config-file", str(self.config)],
                    "metricd")
        self._wait_ready()
        return self

    def _spawn(self, argv: list[str], name: str) -> None:
        out = open(self.workdir / f"gnocchi-{name}.out", "w")
        self.procs.append(subprocess.Popen(
            argv, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
            env={**os.environ, "VIRTUAL_ENV": str(GNOCCHI_VENV)}))

    def _wait_ready(self, timeout: float = 90.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for proc in self.procs:
                assert proc.poll() is None, f"gnocchi exited: {self.log_tail()}"
            try:
                self.get("/v1/resource_type")
                return
            except (urllib.error.URLError, ConnectionError):
                time.sleep(0.5)
        raise AssertionError(f"gnocchi-api not answering after {timeout} s: {self.log_tail()}")

    def request(self, method: str, path: str, body=None):
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.url + path, data=data, method=method, headers={
            "Authorization": "Basic " + base64.b64encode(f"{USER}:".encode()).decode(),
            "Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=30) as resp:
            text = resp.read().decode()
            return json.loads(text) if text else None

    def get(self, path: str):
        return self.request("GET", path)

    def backlog(self) -> int:
        """Measures received and not yet processed by metricd."""
        return self.get("/v1/status?details=false")["storage"]["summary"]["measures"]

    def log_tail(self) -> str:
        parts = [p.read_text()[-1500:] for p in sorted(self.workdir.glob("gnocchi*.out"))]
        log = self.workdir / "gnocchi.log"
        return "\n".join(parts + ([log.read_text()[-1500:]] if log.exists() else []))

    def stop(self) -> None:
        try:
            for proc in self.procs:
                if proc.poll() is None:
                    os.killpg(proc.pid, signal.SIGTERM)
            for proc in self.procs:
                try:
                    proc.wait(20)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait(10)
        finally:
            psql(f"DROP DATABASE IF EXISTS {self.database} WITH (FORCE)")
