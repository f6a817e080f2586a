"""A throw-away Debian container with systemd as PID 1 (systemd-nspawn --boot), for running the
shipped unit as it runs on a host. The rootfs is tools/systemd_rootfs.sh's cached debootstrap;
--volatile=overlay keeps every change (users, journal, state) in a tmpfs that goes with the
container. Commands run inside through nsenter into the container's namespaces."""
from __future__ import annotations

import os
import pathlib
import subprocess
import time

ROOT = pathlib.Path(__file__).resolve().parents[2]
PATH = "/usr/sbin:/usr/bin:/sbin:/bin"


def rootfs() -> str:
    """Build (first time) or reuse the cached rootfs; its path."""
    done = subprocess.run(["bash", str(ROOT / "tools" / "systemd_rootfs.sh")], text=True,
                          capture_output=True, timeout=900)
    if done.returncode:
        raise RuntimeError(f"tools/systemd_rootfs.sh failed: {done.stderr[-2000:]}")
    return done.stdout.strip().splitlines()[-1]


class Container:
    def __init__(self, root: str, name: str, binds: dict[str, str], log: pathlib.Path):
        self.name = name
        self._log = log
        argv = ["systemd-nspawn", "--quiet", "--register=no", "--keep-unit", "--boot",
                f"--directory={root}", "--volatile=overlay", "--private-network",
                f"--machine={name}"]
        argv += [f"--bind-ro={host}:{guest}" for host, guest in binds.items()]
        self._proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=open(log, "wb"),
                                      stderr=subprocess.STDOUT)
        try:
            self.leader = self._find_leader(30)
            self.wait_booted(60)
        except BaseException:
            self.stop()  # a container that did not boot must not outlive the test
            raise

    def _find_leader(self, timeout: float) -> int:
        """The container's PID 1: nspawn's child process."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise RuntimeError(f"systemd-nspawn exited: {self._log.read_text()[-2000:]}")
            for pid in os.listdir("/proc"):
                if pid.isdigit() and _ppid(pid) == self._proc.pid:
                    return int(pid)
            time.sleep(0.1)
        raise RuntimeError("systemd-nspawn started no init")

    def wait_booted(self, timeout: float) -> None:
        """Until systemd answers and has finished booting ("offline": not answering yet)."""
        deadline = time.monotonic() + timeout
        while True:
            done = self.run("systemctl", "is-system-running", "--wait", check=False,
                            timeout=timeout)
            state = done.stdout.strip()
            if state in ("running", "degraded"):
                return
            if time.monotonic() > deadline or self._proc.poll() is not None:
                raise RuntimeError(f"container did not boot ({state}): {done.stderr}"
                                   f"{self._log.read_text(errors='replace')[-2000:]}")
            time.sleep(0.2)

    def run(self, *argv: str, check: bool = True, timeout: float = 60,
            input: str | None = None) -> subprocess.CompletedProcess:
        command = ["nsenter", f"--target={self.leader}", "--mount", "--uts", "--ipc", "--net",
                   "--pid", "--root", "--wd", "env", "-i", f"PATH={PATH}", *argv]
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout,
                              input=input)
        if check and done.returncode:
            raise AssertionError(f"{argv} exited {done.returncode}: {done.stdout}{done.stderr}")
        return done

    def show(self, unit: str, *props: str) -> dict[str, str]:
        out = self.run("systemctl", "show", unit, "-p", ",".join(props)).stdout
        return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)

    def stop(self) -> None:
        if self._proc.poll() is None:
            self._proc.terminate()  # nspawn asks the container's systemd to power off
            try:
                self._proc.wait(30)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait(10)


def _ppid(pid: str) -> int | None:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return int(stat.read().rsplit(")", 1)[1].split()[1])
    except (OSError, ValueError, IndexError):
        return None
