"""Replaying through the real pipeline: the shipped recordings give their goldens byte for byte,
and the player's semantics (answers, restarts, the virtual clock) hold on small recordings."""
from __future__ import annotations

import datetime
import io
import itertools
import json
import pathlib

import pytest

from lifecycle_stats.records import DiskStats, DomainReading, Flavor, InstanceInfo, VnicStats
from lifecycle_stats.cmd import replay as cli
from lifecycle_stats.replay import player
from lifecycle_stats.replay import format as fmt
from tests.support import nova
from tests.support.guests import NovaGuest

RECORDINGS = pathlib.Path(__file__).resolve().parent.parent / "recordings"
SHIPPED = sorted(RECORDINGS.glob("*.lsrec"))
START = datetime.datetime(2026, 11, 22, 1, 0, tzinfo=datetime.timezone.utc)
HOST = "h1"
GUEST = NovaGuest(instance_id="6c1a3f0e-8d0b-4c59-9f57-2d1f7a0c5b11", domain_name="instance-1",
                  display_name="web-1")


def test_every_case_of_the_issue_is_shipped():
    assert [p.stem for p in SHIPPED] == ["agent-restart", "burst-of-deletes",
                                         "delete-racing-destroy", "power-cycle-then-delete",
                                         "single-delete"]


@pytest.mark.parametrize("recording", SHIPPED, ids=lambda p: p.stem)
def test_shipped_recording_replays_to_its_golden_byte_for_byte(recording, tmp_path, capsys):
    out = tmp_path / "out.jsonl"
    assert cli.main(["run", str(recording), "-o", str(out)]) == 0
    assert out.read_bytes() == recording.with_suffix(".jsonl").read_bytes()
    assert "notifications" in capsys.readouterr().err


# tests/recordings/single-delete.lsrec as recorded on 2026-11-22 in format 1 (an entry's
# source under `kind`), with the golden it gave then: kept apart, so that re-recording the
# shipped cases never loses the proof that old recordings still replay byte for byte.
FORMAT_1 = pathlib.Path(__file__).resolve().parent.parent / "fixtures" / "recording_format1.lsrec"


def test_a_format_1_recording_replays_to_its_golden_byte_for_byte(tmp_path, capsys):
    assert fmt.read(str(FORMAT_1)).header["format_version"] == 1 < fmt.FORMAT_VERSION
    out = tmp_path / "out.jsonl"
    assert cli.main(["run", str(FORMAT_1), "-o", str(out)]) == 0
    assert out.read_bytes() == FORMAT_1.with_suffix(".jsonl").read_bytes()
    assert "2 notifications" in capsys.readouterr().err


def test_golden_kinds_tell_each_case_apart():
    """What each real case produced (so a golden regenerated wrongly is noticed)."""
    kinds = {p.stem: [event["payload"]["capture"]["kind"]
                      for event in delete_samples(p.with_suffix(".jsonl").read_text())]
             for p in SHIPPED}
    assert kinds["single-delete"] == ["final"]
    assert kinds["burst-of-deletes"] == ["final"] * 4
    assert kinds["power-cycle-then-delete"] == ["final"]
    # the restarted agent has lost its memory, not its ledger: the last poll stands in
    assert kinds["agent-restart"] == ["last_known", "final"]
    assert kinds["delete-racing-destroy"] == ["last_known"]


# -- small recordings -----------------------------------------------------------------------

def reading(t: float, *, cpu: int = 5_000_000_000, active: bool = True) -> dict:
    return fmt.reading_to_data(DomainReading(
        instance_id=GUEST.instance_id, domain_name=GUEST.domain_name,
        state="running" if active else "shutoff", active=active,
        cpu_time_ns=cpu if active else None, vcpus=1 if active else None,
        memory_kib=32768, memory_max_kib=32768,
        disks=(DiskStats("vda", 10, 4096, 2, 1024),) if active else (),
        vnics=(VnicStats("tap0", 100, 2, 0, 0, 50, 1, 0, 0),) if active else (),
        read_at=START + datetime.timedelta(seconds=t), path="single"))


def info() -> dict:
    return fmt.info_to_data(InstanceInfo(
        instance_id=GUEST.instance_id, domain_name=GUEST.domain_name, display_name="web-1",
        flavor=Flavor("m1.nano", 32, 1, 0, 0, 1), user_id=GUEST.user_id, user_name="demo",
        project_id=GUEST.project_id, project_name="demo", image_ref=GUEST.image_ref,
        root_type="image", creation_time=None, metadata_version="1.1"))


def delete_start(host: str = HOST) -> tuple[str, dict]:
    return fmt.NOVA, {"topic": "legacy", "priority": "INFO", "publisher_id": f"compute.{host}",
                      "event_type": nova.LEGACY, "payload": nova.legacy_payload(GUEST, host),
                      "message_id": "m-1", "timestamp": "2026-11-22T01:00:00.000000+00:00"}


def replay(tmp_path, entries, times) -> list[dict]:
    return delete_samples(replayed(tmp_path, entries, times))


def replayed(tmp_path, entries, times, name: str = "r.lsrec") -> str:
    """The player's whole output for a recording of entries written at times."""
    path = tmp_path / name
    ticks = iter(itertools.chain([0.0], times))
    with open(path, "wb") as stream:
        writer = fmt.RecordingWriter(stream, {"host": HOST, "started_at": START.isoformat()},
                                     monotonic=lambda: next(ticks))
        for source, fields in entries:
            writer.write(source, **fields)
    recording = fmt.read(str(path))
    player.check(recording)
    out = io.StringIO()
    player.run(recording, out)
    return out.getvalue()


def delete_samples(text: str) -> list[dict]:
    """The delete.samples of a replay's output (each delete also has its final exists)."""
    events = [json.loads(line) for line in text.splitlines()]
    return [e for e in events if e["event_type"] == "compute.instance.delete.samples"]


def known_then(*entries) -> list:
    return [(fmt.INSTANCE, {"instance_id": GUEST.instance_id, "gone": False, "info": info()}),
            (fmt.POLL, {"readings": [reading(1.0, cpu=1_000)]}), *entries]


def test_a_delete_start_is_captured_with_the_read_the_recorder_made_for_it(tmp_path):
    out = replay(tmp_path, known_then(
        delete_start(),
        (fmt.READING, {"cause": 2, "instance_id": GUEST.instance_id, "reading": reading(10.01)}),
    ), [1.0, 1.0, 10.0, 10.01])
    (event,) = out
    payload = event["payload"]
    assert payload["capture"]["kind"] == "final"
    assert payload["capture"]["captured_at"] == "2026-11-22T01:00:10.010000+00:00"
    # nova's envelope time: the announcement, as recorded (never the wall clock)
    assert event["timestamp"] == "2026-11-22T01:00:00.000000+00:00"
    cpu = [s["volume"] for s in payload["samples"] if s["name"] == "cpu"]
    assert cpu == [5_000_000_000]
    assert event["publisher_id"] == "lifecycle-stats.h1"


def test_a_domain_gone_before_the_read_reports_the_last_poll_with_its_age(tmp_path):
    out = replay(tmp_path, known_then(
        delete_start(),
        (fmt.READING, {"cause": 2, "instance_id": GUEST.instance_id, "reading": None}),
    ), [1.0, 1.0, 4.0, 4.01])
    capture = out[0]["payload"]["capture"]
    assert (capture["kind"], capture["age_ms"]) == ("last_known", 3000)
    assert [s["volume"] for s in out[0]["payload"]["samples"] if s["name"] == "cpu"] == [1_000]


def test_a_restart_empties_the_agents_memory_but_not_its_spool_nor_its_ledger(tmp_path):
    """Deleted while the agent was down: at start the domain is gone and the in-memory cache
    is empty, but the usage ledger (on disk, like the spool) still holds the last poll, so the
    capture is last_known, not unavailable; nova's second announcement is then a duplicate."""
    out = replay(tmp_path, known_then(
        (fmt.AGENT, {"state": "stopped"}),
        delete_start(),
        (fmt.READING, {"cause": 3, "instance_id": GUEST.instance_id, "reading": None}),
        (fmt.INSTANCE, {"cause": 3, "instance_id": GUEST.instance_id, "gone": True,
                        "info": None}),
        (fmt.AGENT, {"state": "started"}),
        delete_start(),
    ), [1.0, 1.0, 2.0, 3.0, 3.01, 3.02, 5.0, 6.0])
    assert [e["payload"]["capture"]["kind"] for e in out] == ["last_known"]
    assert out[0]["payload"]["capture"]["complete"] is False
    # the ledger's last reading (the poll at virtual time 1 s), stamped with nova's announcement
    assert out[0]["payload"]["capture"]["captured_at"] == "2026-11-22T01:00:01.000000+00:00"
    assert out[0]["timestamp"] == "2026-11-22T01:00:00.000000+00:00"
    assert out[0]["payload"]["display_name"] == "web-1"  # from nova's payload


def test_a_restart_after_a_live_capture_ends_the_instance_at_recording_time(tmp_path):
    """Captured live, the agent stopped, the domain undefined meanwhile: the restarted agent's
    resync ends the instance. The replay crashed there (the stand-in registry's sync returned
    nothing) and, past that, stamped the end with the wall clock (found by review)."""
    entries = known_then(
        delete_start(),
        (fmt.READING, {"cause": 2, "instance_id": GUEST.instance_id, "reading": reading(10.01)}),
        (fmt.AGENT, {"state": "stopped"}),
        (fmt.INSTANCE, {"instance_id": GUEST.instance_id, "gone": True, "info": None}),
        (fmt.AGENT, {"state": "started"}),
    )
    times = [1.0, 1.0, 10.0, 10.01, 11.0, 12.0, 13.0]
    outputs = [replayed(tmp_path, entries, times, f"r{run}.lsrec") for run in (1, 2)]
    assert outputs[0] == outputs[1]
    events = [json.loads(line) for line in outputs[0].splitlines()]
    [final] = [e["payload"] for e in events if e["event_type"] == "compute.instance.exists"
               and e["payload"]["final"]]
    assert final["audit_period_ending"] == "2026-11-22 01:00:13"


def test_a_replayed_restart_records_the_agent_s_downtime_as_the_agent_does(tmp_path):
    """A real start reopens the usage ledger, which records the outage since its last write;
    the player kept one ledger across the restart, so its final exists said `complete` where
    the agent's says what went unseen (found by review)."""
    entries = known_then(
        (fmt.LIBVIRT, {"instance_id": GUEST.instance_id, "domain_name": GUEST.domain_name,
                       "event": "shutdown", "detail": "host"}),
        (fmt.READING, {"cause": 2, "instance_id": GUEST.instance_id,
                       "reading": reading(3.0, cpu=7_000_000_000)}),  # the closing read
        (fmt.AGENT, {"state": "stopped"}),
        (fmt.INSTANCE, {"instance_id": GUEST.instance_id, "gone": True, "info": None}),
        delete_start(),  # queued while the agent is down
        (fmt.READING, {"cause": 6, "instance_id": GUEST.instance_id, "reading": None}),
        (fmt.AGENT, {"state": "started"}),
    )
    out = replayed(tmp_path, entries, [1.0, 1.0, 3.0, 3.0, 4.0, 5.0, 5.5, 5.5, 60.0])
    [usage] = [json.loads(line)["payload"]["usage"] for line in out.splitlines()
               if json.loads(line)["event_type"] == "compute.instance.exists"]
    assert usage["complete"] is False and usage["incomplete_seconds"] > 0


def test_without_the_restart_the_same_case_is_last_known(tmp_path):
    out = replay(tmp_path, known_then(
        delete_start(),
        (fmt.READING, {"cause": 2, "instance_id": GUEST.instance_id, "reading": None}),
    ), [1.0, 1.0, 3.0, 3.01])
    assert out[0]["payload"]["capture"]["kind"] == "last_known"


def test_delete_starts_of_other_hosts_and_other_events_produce_nothing(tmp_path):
    other = delete_start("another-host")
    update = (fmt.NOVA, {**delete_start()[1], "event_type": "compute.instance.update"})
    assert replay(tmp_path, known_then(other, update), [1.0, 1.0, 2.0, 3.0]) == []


def test_a_shutdown_event_read_is_what_a_later_delete_reports(tmp_path):
    """The event handler's read on SHUTDOWN (QEMU still answers) beats the older poll."""
    out = replay(tmp_path, known_then(
        (fmt.LIBVIRT, {"instance_id": GUEST.instance_id, "domain_name": GUEST.domain_name,
                       "event": "shutdown", "detail": "host"}),
        (fmt.READING, {"cause": 2, "instance_id": GUEST.instance_id,
                       "reading": reading(5.0, cpu=7_777)}),
        delete_start(),
        (fmt.READING, {"cause": 4, "instance_id": GUEST.instance_id, "reading": None}),
    ), [1.0, 1.0, 5.0, 5.0, 6.0, 6.01])
    assert [s["volume"] for s in out[0]["payload"]["samples"] if s["name"] == "cpu"] == [7_777]


def test_a_domain_whose_nova_metadata_was_unusable_is_unavailable_not_ignored(tmp_path):
    path = tmp_path / "r.lsrec"
    ticks = iter([0.0, 1.0, 2.0, 2.01])
    with open(path, "wb") as stream:
        writer = fmt.RecordingWriter(stream, {"host": HOST, "started_at": START.isoformat()},
                                     monotonic=lambda: next(ticks))
        writer.write(fmt.INSTANCE, instance_id=GUEST.instance_id, gone=False, info=None,
                     unusable="metadata.rejected")
        source, fields = delete_start()
        writer.write(source, **fields)
        writer.write(fmt.READING, cause=1, instance_id=GUEST.instance_id, reading=None)
    recording = fmt.read(str(path))
    player.check(recording)
    out = io.StringIO()
    counters = player.run(recording, out)
    (event,) = delete_samples(out.getvalue())
    assert event["payload"]["capture"]["kind"] == "unavailable"
    assert event["payload"]["display_name"] == "web-1"  # nova's word, from the announcement
    assert counters.get("flush.metadata_unusable") == 1


def test_an_unknown_unusable_reason_is_a_corrupt_entry(tmp_path):
    path = tmp_path / "r.lsrec"
    with open(path, "wb") as stream:
        writer = fmt.RecordingWriter(stream, {"host": HOST, "started_at": START.isoformat()})
        writer.write(fmt.INSTANCE, instance_id=GUEST.instance_id, gone=False, info=None,
                     unusable="cursed")
    recording = fmt.read(str(path))
    with pytest.raises(fmt.RecordingError, match="bad instance entry 0: ValueError: unusable"):
        player.check(recording)


def test_the_telemetry_secret_signs_the_samples_as_the_agent_would(tmp_path):
    """Only the signatures change with the secret; the same secret gives the same bytes."""
    recording = str(RECORDINGS / "single-delete.lsrec")
    outputs = {}
    for name, argv in (("default", []), ("other", ["--telemetry-secret", "s3cret"]),
                       ("other-again", ["--telemetry-secret", "s3cret"])):
        out = tmp_path / f"{name}.jsonl"
        assert cli.main(["run", recording, "-o", str(out), *argv]) == 0
        outputs[name] = out.read_text()
    assert outputs["default"] == (RECORDINGS / "single-delete.jsonl").read_text()
    assert outputs["other"] == outputs["other-again"] != outputs["default"]
    default, other = (delete_samples(outputs[n])[0]["payload"]["samples"]
                      for n in ("default", "other"))
    assert [{k: v for k, v in s.items() if k != "message_signature"} for s in default] == \
        [{k: v for k, v in s.items() if k != "message_signature"} for s in other]


def test_replay_publishes_as_the_configured_agent_would(tmp_path):
    """Issue 20.7: the player wires the core with the agent's settings, not hard-coded
    defaults: [meters] legacy off drops the legacy meters, [usage] audit_period sets the
    final exists' period, [publisher] telemetry_secret signs the samples."""
    from lifecycle_stats.publishing import signing

    conf = tmp_path / "agent.conf"
    conf.write_text("[meters]\nlegacy = false\n[usage]\naudit_period = day\n"
                    "[publisher]\ntelemetry_secret = s3cret\n")
    recording = RECORDINGS / "single-delete.lsrec"
    out = tmp_path / "out.jsonl"
    assert cli.main(["run", str(recording), "-o", str(out), "--config-file", str(conf)]) == 0
    events = [json.loads(line) for line in out.read_text().splitlines()]
    [samples] = [e["payload"]["samples"] for e in events if "samples" in e["payload"]]
    names = {s["name"] for s in samples}
    assert "disk.device.read.bytes" in names
    assert not names & {"disk.read.bytes", "instance"}  # legacy meters
    assert all(signing.verify(s, "s3cret") for s in samples)
    [exists] = [e["payload"] for e in events if e["event_type"] == "compute.instance.exists"]
    day = fmt.read(str(recording)).started_at.strftime("%Y-%m-%d 00:00:00")
    assert exists["audit_period_beginning"] == day  # the day, not the hour
    assert cli.main(["run", str(recording), "-o", str(out), "--config-file", str(conf),
                     "--telemetry-secret", "other"]) == 0  # the command line wins
    events = [json.loads(line) for line in out.read_text().splitlines()]
    [samples] = [e["payload"]["samples"] for e in events if "samples" in e["payload"]]
    assert all(signing.verify(s, "other") for s in samples)


def test_a_missing_configuration_file_is_a_clear_error(tmp_path, capsys):
    recording = RECORDINGS / "single-delete.lsrec"
    assert cli.main(["run", str(recording), "--config-file", str(tmp_path / "nope.conf")]) != 0
    assert "no configuration file" in capsys.readouterr().err
