"""`run --live` over oslo.messaging's fake:// bus (pace, topics, host rewrite, progress) and
`show`'s timeline of a shipped recording."""
from __future__ import annotations

import io
import pathlib
import threading

import oslo_messaging
import pytest
from oslo_config import cfg

from lifecycle_stats.cmd import replay as cli
from lifecycle_stats.replay import live
from lifecycle_stats.replay import format as fmt
from tests.support.recordings import BURST, RECORDINGS, listen



class FakeTime:
    def __init__(self):
        self.now = 100.0
        self.slept = []

    def monotonic(self):
        return self.now

    def sleep(self, seconds):
        self.slept.append(round(seconds, 6))
        self.now += seconds


def test_live_publishes_every_nova_message_on_its_topic_at_the_recorded_pace():
    recording = fmt.read(str(BURST))
    nova = [e for e in recording.entries if e.source == fmt.NOVA]
    transport = oslo_messaging.get_notification_transport(cfg.ConfigOpts(), url="fake://")
    legacy, legacy_server = listen(transport, "leg")
    versioned, versioned_server = listen(transport, "ver")
    clock = FakeTime()
    try:
        summary = live.publish(recording, transport, speed=2.0, exchange="nova-x",
                               topics={"legacy": "leg", "versioned": "ver"},
                               as_host="other-host", progress=io.StringIO(),
                               monotonic=clock.monotonic, sleep=clock.sleep)
        with legacy.cond:
            legacy.cond.wait_for(lambda: len(legacy.messages) == 2, 5)
        with versioned.cond:
            versioned.cond.wait_for(lambda: len(versioned.messages) == 3, 5)
    finally:
        for server in (legacy_server, versioned_server):
            server.stop()
            server.wait()
        transport.cleanup()
    assert (summary.sent, summary.total) == (5, 5)
    gaps = [round((b.t - a.t) / 2, 6) for a, b in zip(nova, nova[1:])]
    assert clock.slept == pytest.approx([g for g in gaps if g > 0], abs=2e-6)
    assert {p for p, _, _ in legacy.messages} == {"compute.other-host"}
    assert {p for p, _, _ in versioned.messages} == {"nova-compute:other-host"}
    assert {m[2]["host"] for m in legacy.messages} == {"other-host"}
    assert {m[2]["nova_object.data"]["host"] for m in versioned.messages} == {"other-host"}
    assert summary.line().startswith("sent 5 of 5 nova notifications in ")


def test_progress_draws_only_on_a_terminal():
    quiet = io.StringIO()
    live.Progress(quiet, 4).update(2, 1.0, force=True)
    assert quiet.getvalue() == ""

    class Tty(io.StringIO):
        def isatty(self):
            return True

    tty = Tty()
    bar = live.Progress(tty, 4)
    bar.update(2, 1.0, force=True)
    bar.end()
    assert tty.getvalue() == "\r[" + "#" * 15 + "." * 15 + "] 2/4  2.0/s \n"


def test_show_prints_the_timeline(capsys):
    assert cli.main(["show", str(RECORDINGS / "agent-restart.lsrec")]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == f"recording {RECORDINGS / 'agent-restart.lsrec'} (format 1)"
    assert "host compute-rec-1, QEMU" in lines[1]
    body = "\n".join(lines[2:])
    for expected in ("agent stopped", "agent started", "nova compute.instance.delete.start",
                     "nova instance.delete.start", "libvirt stopped/destroyed",
                     "↳ read: domain gone", "metadata: nova's, m1.nano"):
        assert expected in body
    assert len(lines) == 2 + len(fmt.read(str(RECORDINGS / "agent-restart.lsrec")).entries)


def test_run_brief_says_what_each_notification_captured(capsys):
    assert cli.main(["run", "--brief", str(RECORDINGS / "agent-restart.lsrec")]) == 0
    out, err = capsys.readouterr()
    lines = out.splitlines()
    assert len(lines) == 4  # each delete.samples with its final exists
    assert "last_known" in lines[0] and "via compute.instance.delete.start  30 samples" in lines[0]
    assert "final exists" in lines[1] and "incomplete" in lines[1]
    assert "final " in lines[2] and "via instance.delete.start" in lines[2]
    assert " samples: cpu=" in lines[2]
    assert "final exists" in lines[3] and "complete" in lines[3]
    assert "4 notifications (duplicates 1, final 1, last_known 1)" in err


def test_live_sends_the_recorded_request_context(tmp_path):
    """nova's request_id (in the context) tells delete attempts apart: --recorded-ids keeps
    it (fresh ones by default: test_replay_inputs.py)."""
    path = tmp_path / "ctx.lsrec"
    with open(path, "wb") as stream:
        writer = fmt.RecordingWriter(stream, {"host": "h1", "started_at":
                                              "2026-11-22T00:00:00.000000+00:00"})
        writer.write(fmt.NOVA, topic="legacy", priority="INFO", publisher_id="compute.h1",
                     event_type="compute.instance.delete.start", payload={"host": "h1"},
                     message_id="m-1", timestamp="2026-11-22T00:00:00.000000+00:00",
                     context={"request_id": "req-6a1f"})
    transport = oslo_messaging.get_notification_transport(cfg.ConfigOpts(), url="fake://")
    heard, server = listen(transport, "leg")
    try:
        live.publish(fmt.read(str(path)), transport, speed=0, exchange="nova-x",
                     topics={"legacy": "leg"}, progress=io.StringIO(), recorded_ids=True)
        with heard.cond:
            heard.cond.wait_for(lambda: heard.contexts, 5)
    finally:
        server.stop()
        server.wait()
        transport.cleanup()
    assert heard.contexts[0].get("request_id") == "req-6a1f"


def test_live_names_the_offset_of_a_nova_entry_it_cannot_send(tmp_path, capsys):
    path = tmp_path / "bad.lsrec"
    with open(path, "wb") as stream:
        writer = fmt.RecordingWriter(stream, {"host": "h1", "started_at":
                                              "2026-11-22T00:00:00.000000+00:00"})
        writer.write(fmt.NOVA, topic="legacy", publisher_id="compute.h1",
                     event_type="compute.instance.delete.start", payload={})
        writer.write(fmt.NOVA, topic="legacy", event_type="compute.instance.delete.start",
                     payload={})
    bad = fmt.read(str(path)).entries[1].offset
    assert cli.main(["run", "--live", str(path), "--url", "fake://", "--speed", "0"]) == 1
    err = capsys.readouterr().err
    assert err == (f"lifecycle-stats-replay: {path}: offset {bad}: corrupt: nova entry 1 has "
                   "no publisher_id\n")
