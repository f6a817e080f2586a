"""The replay tool on the real services: record real QEMU guests and real nova messages on the
real broker, replay the recording offline, then publish it with `run --live` to the real
`lifecycle-stats-agent` process and check what billing receives from it.

Bus names are unique per run (harness.BusNames) and removed afterwards, as are the guests.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid

import oslo_messaging
import pytest
from oslo_config import cfg

from lifecycle_stats.replay import format as fmt
from lifecycle_stats.replay import player, recorder
from tests.integration import harness
from tests.integration.conftest import amqp_url

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

RUN = uuid.uuid4().hex[:8]
RECORDED_HOST = f"lst-rec-{RUN}"
AGENT_HOST = f"lst-replay-{RUN}"
REPLAY = os.path.join(os.path.dirname(sys.executable), "lifecycle-stats-replay")


@pytest.fixture
def transport(rabbit_url):
    conf = cfg.ConfigOpts()
    conf([], project="lifecycle-stats-replay-test", default_config_files=[])
    transport = oslo_messaging.get_notification_transport(conf, url=rabbit_url)
    yield transport
    transport.cleanup()


def record(path, transport, rabbit_url, libvirt_uri, guests) -> fmt.Recording:
    """Record the real host while nova announces the deletes of `guests` (not destroying)."""
    names = harness.BusNames()
    with open(path, "wb") as stream:
        writer = fmt.RecordingWriter(stream, {"host": RECORDED_HOST, "started_at":
                                              "2026-11-22T00:00:00.000000+00:00"})
        rec = recorder.Recorder(
            writer, host=RECORDED_HOST, libvirt_uri=libvirt_uri, transport=transport,
            exchange=names.nova_exchange,
            topics={"legacy": names.legacy_topic, "versioned": names.versioned_topic},
            pool=f"lst-rec-pool-{RUN}", poll_interval=30.0,
            domains=lambda name: name.startswith(f"lst-{os.getpid()}-"))
        try:
            rec.start()
            nova = harness.Nova(transport, names)
            for i, guest in enumerate(guests):
                nova.delete_start(guest, RECORDED_HOST, versioned=bool(i % 2))
            deadline = time.monotonic() + 20
            while rec.counters.get("record.nova") < len(guests) and time.monotonic() < deadline:
                time.sleep(0.05)
        finally:
            rec.stop()
            writer.close()
            recorder.delete_queues(rabbit_url, rec.pools)
            harness.delete_queues(amqp_url(rabbit_url), [], [names.nova_exchange])
    return fmt.read(str(path))


def test_record_replay_and_live_replay_to_the_real_agent(
        tmp_path, transport, rabbit_url, libvirt_uri, guest_factory):
    guests = [guest_factory.create(paused=True, display_name=f"replay-{i}")[0] for i in range(2)]
    ids = {g.instance_id for g in guests}
    recording = record(tmp_path / "case.lsrec", transport, rabbit_url, libvirt_uri, guests)

    # The recorder heard both announcements and read each live domain in answer.
    nova = [e for e in recording.entries if e.source == fmt.NOVA]
    assert [e.data["topic"] for e in nova] == ["legacy", "versioned"]
    answers = [e for e in recording.entries
               if e.source == fmt.READING and e.data.get("cause") in {n.index for n in nova}]
    assert {a.data["instance_id"] for a in answers} == ids
    assert all(a.data["reading"]["active"] for a in answers)

    # Offline: both are final captures of the recorded host.
    out = tmp_path / "offline.jsonl"
    with open(out, "w") as stream:
        player.check(recording)
        player.run(recording, stream)
    produced = [json.loads(line) for line in out.read_text().splitlines()]
    offline = [e for e in produced if e["event_type"] == "compute.instance.delete.samples"]
    exists = [e for e in produced if e["event_type"] == "compute.instance.exists"]
    # No final exists: nova's delete.start alone ends nothing, and the recording holds no
    # destroy of these domains (a delete that nova then failed looks exactly like this).
    assert exists == []
    assert sorted(e["payload"]["instance_id"] for e in offline) == sorted(ids)
    assert {e["payload"]["capture"]["kind"] for e in offline} == {"final"}
    assert {e["payload"]["host"] for e in offline} == {RECORDED_HOST}

    # Live: the recording's nova messages, as another host, drive the real agent.
    names = harness.BusNames()
    agent = harness.AgentProcess(tmp_path, host=AGENT_HOST, transport_url=rabbit_url,
                                 names=names, libvirt_uri=libvirt_uri, poll_interval=1.0)
    billing = harness.BillingConsumer(transport, names)
    try:
        agent.start()

        def live(*extra):
            done = subprocess.run(
                [REPLAY, "run", "--live", str(recording.path), "--url", rabbit_url,
                 "--exchange", names.nova_exchange, "--legacy-topic", names.legacy_topic,
                 "--versioned-topic", names.versioned_topic, "--speed", "4",
                 "--as-host", AGENT_HOST, *extra],
                capture_output=True, text=True, timeout=60)
            assert done.returncode == 0, done.stderr
            return done

        done = live()
        assert "sent 2 of 2 nova notifications" in done.stderr.splitlines()[-1]
        received = billing.wait_for_instances(ids, timeout=30)
        assert set(received) == ids, agent.log_tail()
        for instance_id, events in received.items():
            (event,) = events
            payload = event["payload"]
            assert payload["host"] == AGENT_HOST
            assert payload["capture"]["kind"] == "final"
            assert payload["capture"]["read_path"] == "single"
        status = agent.wait_for(  # the status file is rewritten every 0.5 s
            lambda s: s.get("counters", {}).get("flush.final") == 2, 10, "two final flushes")
        counters = status["counters"]
        assert (counters.get("bus.triggers.legacy"), counters.get("bus.triggers.versioned")) \
            == (1, 1)

        # A second run has fresh ids: new delete attempts, captured again, not duplicates.
        live()
        status = agent.wait_for(
            lambda s: s.get("counters", {}).get("flush.final") == 4, 20, "a second run")
        assert not status["counters"].get("flush.duplicates"), status["counters"]
        # --recorded-ids sends the recorded ids: the second such run is all duplicates.
        live("--recorded-ids")
        live("--recorded-ids")
        status = agent.wait_for(
            lambda s: s.get("counters", {}).get("flush.duplicates") == 2, 20,
            "the recorded ids' second run as duplicates")
        assert status["counters"]["flush.final"] == 6
        assert agent.stop() == 0
    finally:
        agent.kill()
        billing.stop()
        harness.delete_queues(amqp_url(rabbit_url), names.queues([AGENT_HOST]),
                              [names.nova_exchange, names.control_exchange])


def test_ctrl_c_leaves_a_valid_recording_and_no_queue_and_signals_mark_a_restart(tmp_path, rabbit_url, libvirt_uri):
    import kombu
    import signal

    names = harness.BusNames()
    pool = f"lst-rec-ctrlc-{RUN}"
    path = tmp_path / "ctrl-c.lsrec"
    proc = subprocess.Popen(
        [REPLAY, "record", "-o", str(path), "--host", RECORDED_HOST, "--uri", libvirt_uri,
         "--url", rabbit_url, "--exchange", names.nova_exchange,
         "--legacy-topic", names.legacy_topic, "--versioned-topic", names.versioned_topic,
         "--pool", pool, "--poll-interval", "0.5", "--domain-prefix", f"lst-{RUN}-none"],
        stderr=subprocess.PIPE, text=True)
    try:
        lines = iter(proc.stderr.readline, "")
        assert any("recording host" in line for line in lines)
        proc.send_signal(signal.SIGUSR1)  # the agent stopped ...
        assert "agent stopped (noted)" in next(lines)
        proc.send_signal(signal.SIGUSR2)  # ... and started again
        assert "agent started (noted)" in next(lines)
        time.sleep(1.0)
        proc.send_signal(signal.SIGINT)
        assert proc.wait(30) == 0
        summary = proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
        harness.delete_queues(amqp_url(rabbit_url), [f"{pool}.legacy", f"{pool}.versioned"],
                              [names.nova_exchange])
    recording = fmt.read(str(path))
    assert recording.header["host"] == RECORDED_HOST
    assert recording.header["hypervisor"] == "QEMU" and recording.header["qemu_version"]
    polls = [e for e in recording.entries if e.source == fmt.POLL]
    marks = [e for e in recording.entries if e.source == fmt.AGENT]
    assert [m.data["state"] for m in marks] == ["stopped", "started"]
    assert [p.data.get("cause") for p in polls].count(marks[1].index) == 1  # start: a poll
    assert polls and f"recorded {len(recording.entries)} entries" in summary
    with kombu.Connection(amqp_url(rabbit_url), connect_timeout=5) as conn:
        for queue in (f"{pool}.legacy", f"{pool}.versioned"):
            try:
                conn.channel().queue_declare(queue, passive=True)
                exists = True
            except Exception:  # the broker answers NOT_FOUND for a deleted queue
                exists = False
            assert not exists, f"recorder left queue {queue}"


@pytest.mark.parametrize("command", [
    ["run", "--live", "tests/recordings/single-delete.lsrec", "--speed", "0"],
    ["record", "-o", "{tmp}/never.lsrec", "--duration", "1"],
], ids=["live", "record"])
def test_an_unreachable_bus_is_one_line_and_a_non_zero_exit(command, tmp_path, libvirt_uri):
    argv = [arg.replace("{tmp}", str(tmp_path)) for arg in command]
    done = subprocess.run([REPLAY, *argv, "--url", "rabbit://guest:guest@127.0.0.1:1/"],
                          capture_output=True, text=True, timeout=120,
                          cwd=os.path.dirname(os.path.dirname(os.path.dirname(__file__))))
    assert done.returncode == 1
    (line,) = [l for l in done.stderr.splitlines() if l.startswith("lifecycle-stats-replay:")]
    assert "127.0.0.1:1/" in line and "Connection refused" in line
    assert not (tmp_path / "never.lsrec").exists()
