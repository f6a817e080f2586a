"""Files the agent rewrites for other readers (the status file, node_exporter's textfile)."""
from __future__ import annotations

import os
import threading


def write_atomically(path: str, data: bytes, mode: int) -> None:
    """Replace path with data, fsynced: readers see the old or the new file, never a partial
    one. mode is set explicitly, so the unit's UMask=0077 cannot make a 0644 file private."""
    tmp = f"{path}.{os.getpid()}.{threading.get_ident()}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
