"""The recording format: round trip, and a one-line error with the offset for every kind of
bad file (corrupt, truncated, newer version), through the CLI as a user meets it."""
from __future__ import annotations

import io
import itertools
import pathlib
import shutil

import msgpack
import pytest

from lifecycle_stats.cmd import replay as cli
from lifecycle_stats.replay import format as fmt
from tests.support.recordings import HEADER, SINGLE, run_cli, write


def test_round_trip_keeps_header_entries_and_offsets(tmp_path):
    path = tmp_path / "r.lsrec"
    path.write_bytes(write([(fmt.AGENT, {"state": "stopped"}),
                            (fmt.POLL, {"readings": []})]))
    recording = fmt.read(str(path))
    assert recording.header["format_version"] == fmt.FORMAT_VERSION
    assert recording.host == "h1"
    assert [(e.index, e.source, e.t) for e in recording.entries] == [
        (0, fmt.AGENT, 0.5), (1, fmt.POLL, 1.0)]
    assert recording.entries[0].offset == len(fmt.MAGIC) + 4 + len(
        msgpack.packb({**HEADER, "format_version": fmt.FORMAT_VERSION}))


def test_writer_refuses_unknown_sources():
    with pytest.raises(ValueError, match="unknown entry source"):
        write([("telepathy", {})])


def test_a_truncated_recording_names_the_offset_of_the_cut_frame(tmp_path, capsys):
    """The frames before the cut are replayed (test_replay_inputs.py); the cut is named."""
    data = SINGLE.read_bytes()
    last = fmt.read(str(SINGLE)).entries[-1].offset
    path = tmp_path / "cut.lsrec"
    path.write_bytes(data[:-3])
    code, out, err = run_cli(capsys, "run", str(path))
    assert code == 0 and out
    assert err.startswith(f"lifecycle-stats-replay: warning: {path}: offset {last}: "
                          f"truncated: frame of {len(data) - last - 4} bytes has only "
                          f"{len(data) - last - 7}; salvaged the ")


def test_a_corrupt_frame_is_reported_with_its_offset(tmp_path, capsys):
    recording = fmt.read(str(SINGLE))
    target = recording.entries[3].offset
    data = bytearray(SINGLE.read_bytes())
    data[target + 4] = 0xC1  # msgpack's never-used byte: the frame cannot be decoded
    path = tmp_path / "corrupt.lsrec"
    path.write_bytes(bytes(data))
    for command in ("run", "show"):
        code, out, err = run_cli(capsys, command, str(path))
        assert code == 1 and out == ""
        assert err.startswith(f"lifecycle-stats-replay: {path}: offset {target}: corrupt: "
                              "undecodable frame")
        assert err.count("\n") == 1


def test_a_huge_length_is_corrupt_not_an_allocation(tmp_path, capsys):
    data = bytearray(SINGLE.read_bytes())
    target = fmt.read(str(SINGLE)).entries[0].offset
    data[target:target + 4] = b"\xff\xff\xff\xff"
    path = tmp_path / "len.lsrec"
    path.write_bytes(bytes(data))
    code, _, err = run_cli(capsys, "run", str(path))
    assert code == 1
    assert f"offset {target}: corrupt: frame length 4294967295 exceeds" in err


def test_a_newer_format_version_is_refused_at_the_header(tmp_path, capsys):
    path = tmp_path / "new.lsrec"
    body = msgpack.packb({**HEADER, "format_version": fmt.FORMAT_VERSION + 1})
    path.write_bytes(fmt.MAGIC + len(body).to_bytes(4, "big") + body)
    code, out, err = run_cli(capsys, "run", str(path))
    assert code == 1 and out == ""
    assert err == (f"lifecycle-stats-replay: {path}: offset 8: format version "
                   f"{fmt.FORMAT_VERSION + 1} is newer than this tool reads "
                   f"({fmt.FORMAT_VERSION}); upgrade it\n")


def test_not_a_recording_at_all(tmp_path, capsys):
    path = tmp_path / "x.lsrec"
    path.write_bytes(b"{}\n")
    code, _, err = run_cli(capsys, "show", str(path))
    assert code == 1
    assert err.strip() == f"lifecycle-stats-replay: {path}: offset 0: not a lifecycle-stats " \
                          "recording (bad magic)"


def test_an_entry_with_a_broken_reading_fails_before_any_output(tmp_path, capsys):
    path = tmp_path / "bad.lsrec"
    path.write_bytes(write([(fmt.READING, {"instance_id": "i", "cause": 0,
                                           "reading": {"state": "running"}})]))
    code, out, err = run_cli(capsys, "run", str(path), "-o", str(tmp_path / "out.jsonl"))
    assert code == 1 and out == ""
    offset = fmt.read(str(path)).entries[0].offset
    assert err.startswith(f"lifecycle-stats-replay: {path}: offset {offset}: corrupt: bad "
                          "reading entry 0: KeyError")
    assert not (tmp_path / "out.jsonl").exists()


def test_an_answer_must_follow_what_it_answers(tmp_path, capsys):
    path = tmp_path / "cause.lsrec"
    path.write_bytes(write([(fmt.READING, {"instance_id": "i", "cause": 5, "reading": None})]))
    code, _, err = run_cli(capsys, "run", str(path))
    assert code == 1
    assert "corrupt: entry 0 answers entry 5, which does not precede it" in err


def test_a_recording_stopped_between_frames_is_valid(tmp_path):
    """What Ctrl-C leaves: every frame whole, however many there are."""
    recording = fmt.read(str(SINGLE))
    data = SINGLE.read_bytes()
    for entry in recording.entries:
        path = tmp_path / "partial.lsrec"
        path.write_bytes(data[:entry.offset])
        assert len(fmt.read(str(path)).entries) == entry.index
    shutil.copy(SINGLE, tmp_path / "whole.lsrec")
    assert len(fmt.read(str(tmp_path / "whole.lsrec")).entries) == len(recording.entries)


def frames(header, *entries) -> bytes:
    return fmt.MAGIC + b"".join(fmt.frame(obj) for obj in (header, *entries))


def test_new_entries_say_source_and_format_1_entries_saying_kind_still_read(tmp_path):
    path = tmp_path / "new.lsrec"
    path.write_bytes(write([(fmt.AGENT, {"state": "stopped"})]))
    [entry] = fmt.read(str(path)).entries
    assert entry.data == {"t": 0.5, "source": fmt.AGENT, "state": "stopped"}  # the frame
    old = tmp_path / "old.lsrec"
    old.write_bytes(frames({**HEADER, "format_version": 1},
                           {"t": 0.5, "kind": "agent", "state": "stopped"},
                           {"t": 1.0, "kind": "poll", "readings": []}))
    recording = fmt.read(str(old))
    assert [(e.source, e.t) for e in recording.entries] == [(fmt.AGENT, 0.5), (fmt.POLL, 1.0)]


def test_each_format_reads_its_own_word_for_the_source(tmp_path):
    """A format 2 entry with only `kind`, or a format 1 entry with only `source`, is corrupt:
    the word is the format's, not a guess."""
    for version, key in ((fmt.FORMAT_VERSION, "kind"), (1, "source")):
        path = tmp_path / f"v{version}.lsrec"
        path.write_bytes(frames({**HEADER, "format_version": version},
                                {"t": 0.5, key: "agent", "state": "stopped"}))
        with pytest.raises(fmt.RecordingError, match="entry 0 has unknown source 'None'"):
            fmt.read(str(path))
