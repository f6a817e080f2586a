"""The file conduit on a real tmpfs with less room than one record: the filesystem takes part
of the write (a short os.write, then ENOSPC). The send fails, the file is left with whole
lines only, and once space is freed the same record is written whole. Test host only (it
mounts a tmpfs), like test_full_disk.py."""
from __future__ import annotations

import json
import os

import pytest

from lifecycle_stats.emitters import file
from lifecycle_stats.exceptions import EmitError
from lifecycle_stats.publishing import signing
from tests.support.tmpfs import fill, small_fs  # noqa: F401 (small_fs: a fixture)
from tests.support.conduits import SECRET, conf_with, notification


def test_a_disk_full_midway_through_a_record_fails_the_send_and_cuts_nothing(small_fs):
    path = small_fs / "samples.jsonl"
    emitter = file.FileConduit(conf_with(file_emitter={"path": str(path), "max_bytes": 0}))
    record = notification()
    emitter.emit(record)
    whole = path.read_bytes()
    assert len(whole) > 4096  # more than the page freed below: the write must be cut
    filler = fill(small_fs)
    with open(filler, "r+b") as out:  # one tmpfs page free: room for part of a record
        out.truncate(os.path.getsize(filler) - 4096)

    with pytest.raises(EmitError, match="No space left"):
        emitter.emit(record)
    assert path.read_bytes() == whole  # cut back: no partial line for the next append

    os.unlink(filler)
    emitter.emit(record)  # the spool's retry once space is back
    lines = path.read_bytes().splitlines(keepends=True)
    assert b"".join(lines) == whole + whole
    assert all(signing.verify(json.loads(line), SECRET) for line in lines)
