"""A stand-in for nova-compute's delete path, run as its own process the way nova runs:

    python -m tests.nova_compute --config-file nova.conf --mode eventlet|threading

``eventlet`` monkey-patches everything before any other import (nova <= 2026.1's default);
``threading`` runs native threads and then poisons any new ``import eventlet*`` as nova
2026.2 does. The two Notifiers are built as nova/rpc.py builds them (drivers from
``[oslo_messaging_notifications] driver``, multi-valued; legacy topics from the config,
versioned ``versioned_notifications``; the context serialized to a dict).

Reads one JSON command per stdin line and writes one JSON result per stdout line:
  {"op": "delete", "guest": {NovaGuest fields}, "host": h, "formats": ["legacy",
   "versioned"], "destroy": true, "request_id": "req-..."}
    → publish legacy then versioned delete.start, then (destroy) virDomainDestroy + undefine
      at once, as nova's driver.destroy does: {"notify_ms": [...], "destroyed": bool}
  {"op": "notify", "event_type": e, "payload": p, "publisher_id": id}
    → one notify() on the legacy notifier: {"notify_ms": [ms]}
Every result also says whether the hub kept running meanwhile (eventlet: "ticks"), and
"driver_ms": per notify(), each driver's own time ({driver name: ms}), so a benchmark can tell
the drivers' share of notify() from oslo.messaging's around them.
"""
from __future__ import annotations

import sys

if __name__ == "__main__" and "eventlet" in sys.argv:
    import eventlet  # noqa: E402  (must patch before anything else is imported)

    eventlet.monkey_patch()

import argparse  # noqa: E402
import json  # noqa: E402
import logging  # noqa: E402
import time  # noqa: E402


class PoisonEventletImport:
    """nova 2026.2's meta-path finder: in native-threads mode, importing eventlet fails."""

    def find_spec(self, fullname, path, target=None):
        if fullname.split(".")[0] == "eventlet":
            raise ImportError("The service started in native threading mode so it should "
                              "not import eventlet")
        return None


def build_notifiers(config_file: str):
    import oslo_messaging
    from oslo_config import cfg

    conf = cfg.ConfigOpts()
    conf.register_opt(cfg.StrOpt("host"))  # nova's [DEFAULT] host
    conf.register_opt(cfg.ListOpt("versioned_notifications_topics",
                                  default=["versioned_notifications"]), group="notifications")
    conf(["--config-file", config_file], project="nova", default_config_files=[])
    transport = oslo_messaging.get_notification_transport(conf)

    class NovaSerializer(oslo_messaging.NoOpSerializer):
        def serialize_context(self, ctxt):
            return ctxt.to_dict() if hasattr(ctxt, "to_dict") else ctxt

    legacy = oslo_messaging.Notifier(transport, publisher_id=f"compute.{conf.host}",
                                     serializer=NovaSerializer())
    versioned = oslo_messaging.Notifier(transport, publisher_id=f"nova-compute:{conf.host}",
                                        serializer=NovaSerializer(),
                                        topics=conf.notifications.versioned_notifications_topics)
    return conf, transport, legacy, versioned


class Ticker:
    """Counts hub turns while nova waits: with green sockets the wait must yield."""

    def __init__(self, mode: str):
        self.ticks = 0
        self._mode = mode

    def run_during(self, fn):
        if self._mode != "eventlet":
            return fn(), None
        import eventlet

        self.ticks, running = 0, [True]

        def tick():
            while running[0]:
                self.ticks += 1
                eventlet.sleep(0.005)

        ticker = eventlet.spawn(tick)
        try:
            return fn(), self.ticks
        finally:
            running[0] = False
            ticker.wait()


class DriverTimes:
    """Wraps each driver's notify() of the given Notifiers: {name: ms} per notify() call."""

    def __init__(self, *notifiers):
        self.calls: list[dict[str, float]] = []
        for notifier in notifiers:
            for ext in notifier._driver_mgr.extensions:
                ext.obj.notify = self._timed(ext.name, ext.obj.notify)

    def _timed(self, name, notify):
        def wrapper(*args, **kwargs):
            started = time.monotonic()
            try:
                return notify(*args, **kwargs)
            finally:
                if not self.calls or name in self.calls[-1]:
                    self.calls.append({})
                self.calls[-1][name] = (time.monotonic() - started) * 1000
        return wrapper

    def take(self) -> list[dict[str, float]]:
        calls, self.calls = self.calls, []
        return calls


def timed(fn) -> float:
    started = time.monotonic()
    fn()
    return (time.monotonic() - started) * 1000


def delete(command, legacy, versioned, ticker, conn, times):
    from oslo_context import context

    from tests.support.guests import NovaGuest
    from tests.support.nova import legacy_payload, request_id, versioned_payload

    guest = NovaGuest(**{k: tuple(v) if isinstance(v, list) else v
                         for k, v in command["guest"].items()})
    # nova's request id: in the context (both formats) and in the versioned payload
    request = command.get("request_id") or request_id(guest)
    ctxt = context.RequestContext(request_id=request)
    formats = command.get("formats", ["legacy"])

    def announce():
        out = []
        if "legacy" in formats:
            out.append(timed(lambda: legacy.info(ctxt, "compute.instance.delete.start",
                                                 legacy_payload(guest, command["host"]))))
        if "versioned" in formats:
            out.append(timed(lambda: versioned.info(ctxt, "instance.delete.start",
                                                    versioned_payload(guest, command["host"],
                                                                      request))))
        return out

    times.take()
    notify_ms, ticks = ticker.run_during(announce)
    driver_ms = times.take()
    destroyed = reconnected = False
    if command.get("destroy"):  # nothing in between: Δ = 0
        reconnected = conn.destroy(guest.instance_id)
        destroyed = True
    return {"notify_ms": notify_ms, "destroyed": destroyed, "ticks": ticks,
            "reconnected": reconnected, "driver_ms": driver_ms}


class Libvirt:
    """nova's driver.destroy: virDomainDestroy + undefine. Other test runs on this machine
    restart libvirtd; then it reconnects and says so (that destroy was not at Δ = 0)."""

    def __init__(self, uri: str):
        import libvirt

        self._uri = uri
        self.conn = libvirt.open(uri)

    def destroy(self, instance_id: str) -> bool:
        import libvirt
        import tenacity

        reconnected = False
        for attempt in tenacity.Retrying(
                stop=tenacity.stop_after_attempt(5), wait=tenacity.wait_fixed(1.0),
                retry=tenacity.retry_if_exception(lambda _: not self.conn.isAlive()),
                reraise=True):
            with attempt:
                if not self.conn.isAlive():
                    self.conn = libvirt.open(self._uri)
                    reconnected = True
                dom = self.conn.lookupByUUIDString(instance_id)
                if dom.isActive():  # a retry may find it already stopped
                    dom.destroy()
                dom.undefine()
        return reconnected


def notify(command, legacy, ticker):
    from oslo_context import context

    notifier = legacy.prepare(publisher_id=command.get("publisher_id", legacy.publisher_id))
    ctxt = context.RequestContext()
    ms, ticks = ticker.run_during(lambda: timed(lambda: notifier.info(
        ctxt, command["event_type"], command["payload"])))
    return {"notify_ms": [ms], "ticks": ticks}


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--config-file", required=True)
    parser.add_argument("--mode", choices=("eventlet", "threading"), required=True)
    parser.add_argument("--libvirt-uri", default=None)
    args = parser.parse_args()
    logging.basicConfig(level=logging.DEBUG, stream=sys.stderr,
                        format="%(levelname)s %(name)s: %(message)s")
    if args.mode == "threading":
        # This oslo.messaging release imports eventlet itself (the one nova 2026.2 pins does
        # not): load it first, so the poison catches only what the driver would import.
        import oslo_messaging  # noqa: F401

        sys.meta_path.insert(0, PoisonEventletImport())
    conf, transport, legacy, versioned = build_notifiers(args.config_file)
    conn = Libvirt(args.libvirt_uri) if args.libvirt_uri else None
    ticker = Ticker(args.mode)
    times = DriverTimes(legacy, versioned)
    print(json.dumps({"ready": True, "mode": args.mode, "drivers": sorted(
        legacy._driver_mgr.names())}), flush=True)
    for line in sys.stdin:
        command = json.loads(line)
        try:
            if command["op"] == "delete":
                result = delete(command, legacy, versioned, ticker, conn, times)
            else:
                result = notify(command, legacy, ticker)
        except Exception as exc:  # nova would have failed here: the test must see it
            result = {"error": f"{type(exc).__name__}: {exc}"}
        print(json.dumps(result), flush=True)
    transport.cleanup()
    return 0


class NovaComputeProcess:
    """The test side: start this module as a process, send commands, read results."""

    def __init__(self, config_file, mode: str, *, libvirt_uri: str | None = None,
                 log_file=None):
        self.config_file, self.mode = str(config_file), mode
        self.libvirt_uri = libvirt_uri
        self.log_file = log_file
        self.proc = None

    def start(self, timeout: float = 60.0) -> dict:
        import os
        import subprocess

        repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        argv = [sys.executable, "-W", "ignore", "-m", "tests.nova_compute",
                "--config-file", self.config_file, "--mode", self.mode]
        if self.libvirt_uri:
            argv += ["--libvirt-uri", self.libvirt_uri]
        stderr = open(self.log_file, "w") if self.log_file else subprocess.DEVNULL
        self.proc = subprocess.Popen(argv, cwd=repo, stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=stderr, text=True)
        return self._read(timeout)

    def call(self, command: dict, timeout: float = 60.0) -> dict:
        self.proc.stdin.write(json.dumps(command) + "\n")
        self.proc.stdin.flush()
        return self._read(timeout)

    def _read(self, timeout: float) -> dict:
        import select

        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        line = self.proc.stdout.readline() if ready else ""
        if not line:
            raise AssertionError(f"nova-compute stand-in gave no answer (exit "
                                 f"{self.proc.poll()}): {self.log_tail()}")
        return json.loads(line)

    def log_tail(self, lines: int = 30) -> str:
        try:
            with open(self.log_file) as f:
                return "".join(f.readlines()[-lines:])
        except (OSError, TypeError):
            return "(no log)"

    def log(self) -> str:
        with open(self.log_file) as f:
            return f.read()

    def stop(self) -> int:
        if self.proc is None:
            return 0
        if self.proc.poll() is None:
            self.proc.stdin.close()
            try:
                return self.proc.wait(30)
            except Exception:
                self.proc.kill()
                self.proc.wait(10)
        return self.proc.returncode


def write_nova_conf(path, *, host: str, transport_url: str, socket_path: str,
                    timeout: float = 0.5, drivers=("messagingv2", "lifecycle_stats"),
                    exchange: str = "nova", legacy_topic: str = "notifications",
                    versioned_topic: str = "versioned_notifications"):
    """A nova.conf as an operator writes it: one more `driver =` line and our section."""
    lines = [f"[DEFAULT]\nhost = {host}\ncontrol_exchange = {exchange}\n",
             f"[oslo_messaging_notifications]\ntransport_url = {transport_url}\n"
             f"topics = {legacy_topic}\n",
             "".join(f"driver = {d}\n" for d in drivers),
             f"[notifications]\nversioned_notifications_topics = {versioned_topic}\n",
             f"[lifecycle_stats]\nsocket_path = {socket_path}\ntimeout = {timeout}\n"]
    with open(path, "w") as f:
        f.write("".join(lines))
    return path


if __name__ == "__main__":
    sys.exit(main())
