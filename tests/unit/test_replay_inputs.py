"""lifecycle-stats-replay on inputs it cannot use: one line on stderr and exit 1 (argparse's
exit 2 for a bad option value), never a traceback or a silent exit 0; a recording whose last
frame is cut is replayed up to the cut, saying how much was salvaged; `run --live` sends
fresh ids each run unless --recorded-ids."""
from __future__ import annotations

import io
import time

import oslo_messaging
import pytest
from oslo_config import cfg

from lifecycle_stats.cmd import replay as cli
from lifecycle_stats.replay import live
from lifecycle_stats.replay import format as fmt
from tests.support.recordings import BURST, SINGLE, listen, run_cli, write

PROG = "lifecycle-stats-replay"


@pytest.mark.parametrize("command", [["run"], ["show"], ["run", "--live", "--url", "fake://"]])
def test_a_missing_file_is_one_line_and_exit_1(tmp_path, capsys, command):
    path = tmp_path / "absent.lsrec"
    code, out, err = run_cli(capsys, *command, str(path))
    assert (code, out) == (1, "")
    assert err == f"{PROG}: {path}: cannot read: No such file or directory\n"


@pytest.mark.parametrize("command", ["run", "show"])
def test_a_directory_is_one_line_and_exit_1(tmp_path, capsys, command):
    code, out, err = run_cli(capsys, command, str(tmp_path))
    assert (code, out) == (1, "")
    assert err == f"{PROG}: {tmp_path}: cannot read: Is a directory\n"


def test_an_output_in_a_missing_directory_is_one_line(tmp_path, capsys):
    target = tmp_path / "no" / "such" / "out.jsonl"
    code, _, err = run_cli(capsys, "run", str(SINGLE), "-o", str(target))
    assert code == 1
    assert err == f"{PROG}: {target}: No such file or directory\n"


def reading(**changes):
    base = fmt.read(str(SINGLE))
    data = next(e.data["reading"] for e in base.entries
                if e.source == fmt.READING and e.data.get("reading"))
    return {**data, **changes}


def info(**flavor_changes):
    base = fmt.read(str(SINGLE))
    data = next(e.data["info"] for e in base.entries
                if e.source == fmt.INSTANCE and e.data.get("info"))
    return {**data, "flavor": {**data["flavor"], **flavor_changes}}


WRONG_VALUES = {
    "counter as text": (fmt.READING, lambda: {"instance_id": "i", "reading": reading(
        cpu_time_ns="12345")}, "DomainReading.cpu_time_ns has the wrong type"),
    "flag as number": (fmt.READING, lambda: {"instance_id": "i", "reading": reading(
        active=1)}, "DomainReading.active has the wrong type"),
    "disk counter as float": (fmt.POLL, lambda: {"readings": [reading(disks=[{
        **reading()["disks"][0], "read_bytes": 1.5}])]}, "DiskStats.read_bytes"),
    "disks not a list": (fmt.POLL, lambda: {"readings": [reading(disks="vda")]},
                         "disks must be a list"),
    "flavor vcpus as text": (fmt.INSTANCE, lambda: {"instance_id": "i", "info": info(
        vcpus="2")}, "Flavor.vcpus has the wrong type"),
    "memory stats with text values": (fmt.READING, lambda: {"instance_id": "i", "reading":
                                      reading(memory_stats={"rss": "a lot"})},
                                      "DomainReading.memory_stats"),
}


@pytest.mark.parametrize("case", sorted(WRONG_VALUES))
def test_a_decodable_wrong_value_is_an_error_with_its_offset(tmp_path, capsys, case):
    source, fields, reason = WRONG_VALUES[case]
    path = tmp_path / "wrong.lsrec"
    path.write_bytes(write([(source, fields())]))
    offset = fmt.read(str(path)).entries[0].offset
    code, out, err = run_cli(capsys, "run", str(path))
    assert (code, out) == (1, "")
    assert err.startswith(f"{PROG}: {path}: offset {offset}: corrupt: bad {source} entry 0: ")
    assert reason in err and err.count("\n") == 1


@pytest.mark.parametrize("argv", [["run", "--speed", "-1"], ["run", "--speed", "nan"],
                                  ["run", "--speed", "fast"],
                                  ["record", "-o", "x", "--poll-interval", "0"],
                                  ["record", "-o", "x", "--duration", "-5"]])
def test_an_option_value_it_cannot_use_is_refused_before_anything_runs(capsys, argv):
    with pytest.raises(SystemExit) as stopped:
        cli.main([*argv, str(SINGLE)] if argv[0] == "run" else argv)
    assert stopped.value.code == 2
    err = capsys.readouterr().err
    assert err.splitlines()[-1].startswith(f"{PROG} {argv[0]}: error: argument ")


def test_a_cut_last_frame_replays_the_frames_before_it(tmp_path, capsys):
    data = SINGLE.read_bytes()
    entries = fmt.read(str(SINGLE)).entries
    last = entries[-1].offset
    whole = tmp_path / "whole.lsrec"  # as if the recorder had stopped before the last frame
    whole.write_bytes(data[:last])
    code, expected, _ = run_cli(capsys, "run", str(whole))
    assert code == 0 and expected

    cut = tmp_path / "cut.lsrec"
    for end in (last + 2, len(data) - 3):  # inside the length, inside the body
        cut.write_bytes(data[:end])
        code, out, err = run_cli(capsys, "run", str(cut))
        assert code == 0
        assert out == expected
        assert err.splitlines()[0] == (
            f"{PROG}: warning: {cut}: offset {last}: truncated: "
            + ("frame length cut short" if end == last + 2 else
               f"frame of {len(data) - last - 4} bytes has only {len(data) - last - 7}")
            + f"; salvaged the {len(entries) - 1} entries before it")


def test_a_cut_header_is_still_an_error(tmp_path, capsys):
    path = tmp_path / "header.lsrec"
    path.write_bytes(SINGLE.read_bytes()[:len(fmt.MAGIC) + 10])
    code, out, err = run_cli(capsys, "show", str(path))
    assert (code, out) == (1, "")
    assert err.startswith(f"{PROG}: {path}: offset 8: truncated: frame of ")


def live_run(recording, **kwargs):
    transport = oslo_messaging.get_notification_transport(cfg.ConfigOpts(), url="fake://")
    legacy, legacy_server = listen(transport, "leg")
    versioned, versioned_server = listen(transport, "ver")
    expected = sum(e.source == fmt.NOVA for e in recording.entries)
    try:
        live.publish(recording, transport, speed=0, exchange="nova-x",
                     topics={"legacy": "leg", "versioned": "ver"}, progress=io.StringIO(),
                     **kwargs)
        deadline = time.monotonic() + 10
        while len(legacy.messages) + len(versioned.messages) < expected:
            assert time.monotonic() < deadline, "not every message was heard"
            time.sleep(0.05)
    finally:
        for server in (legacy_server, versioned_server):
            server.stop()
            server.wait()
        transport.cleanup()
    return legacy, versioned


def request_ids(heard):
    out = []
    for context, (_, _, payload) in zip(heard.contexts, heard.messages):
        data = payload.get("nova_object.data", payload)
        out.append((context.get("request_id"), data.get("request_id")))
    return out


def test_live_sends_fresh_request_ids_each_run_shared_by_one_deletes_two_announcements():
    recording = fmt.read(str(BURST))
    recorded = {e.data["context"].get("request_id") for e in recording.entries
                if e.source == fmt.NOVA} - {None}
    assert recorded
    runs = [live_run(recording) for _ in range(2)]
    seen = []
    for legacy, versioned in runs:
        ids = {rid for pair in request_ids(legacy) + request_ids(versioned)
               for rid in pair if rid}
        assert ids and not ids & recorded
        assert len(ids) == len(recorded)  # one fresh id per recorded one, reused within a run
        seen.append(ids)
    assert not seen[0] & seen[1]


def test_live_keeps_the_recorded_ids_behind_a_flag():
    recording = fmt.read(str(BURST))
    recorded = {e.data["context"].get("request_id") for e in recording.entries
                if e.source == fmt.NOVA} - {None}
    legacy, versioned = live_run(recording, recorded_ids=True)
    ids = {rid for pair in request_ids(legacy) + request_ids(versioned) for rid in pair if rid}
    assert ids == recorded
