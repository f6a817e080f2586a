"""The hook server's unix socket file: a safe directory, no stale file, mode 0660 with nova's
group, and the socket appearing at its path only once its permissions are final.

The socket is bound under a temporary name, chmod/chown'ed, then renamed into place, so there
is never a moment when the path exists with the process umask's permissions. A file left at
the path by a dead agent is removed; a live agent's socket, or anything that is not a socket,
is an error (two agents on one host would split the triggers).
"""
from __future__ import annotations

import errno
import grp
import os
import socket
import stat

from lifecycle_stats.exceptions import ConfigError

SOCKET_MODE = 0o660  # nova's group may connect (connect needs write permission), no one else
DIRECTORY_MODE = 0o750  # the group may traverse, not create or delete


def group_id(name: str | None, option: str) -> int | None:
    """The gid of group ``name`` (a name or a number); None keeps the agent's own group."""
    if not name:
        return None
    if name.isdigit():
        return int(name)
    try:
        return grp.getgrnam(name).gr_gid
    except KeyError:
        raise ConfigError(option, name, "no such group on this host") from None


def group_exists(name: str) -> bool:
    try:
        grp.getgrnam(name)
    except KeyError:
        return False
    return True


def prepare_directory(path: str, gid: int | None, option: str) -> None:
    """Create the socket's directory (mode 0750, nova's group) or check an existing one is a
    real directory, owned by us or root, that no other user may write into."""
    directory = os.path.dirname(os.path.abspath(path))
    try:
        os.mkdir(directory, DIRECTORY_MODE)
    except FileExistsError:
        _check_directory(directory, option)
        return
    os.chmod(directory, DIRECTORY_MODE)  # mkdir's mode is masked by the umask
    if gid is not None:
        os.chown(directory, -1, gid)


def _check_directory(directory: str, option: str) -> None:
    info = os.lstat(directory)
    if not stat.S_ISDIR(info.st_mode):
        raise ConfigError(option, directory, "the socket's directory is not a directory")
    if info.st_uid not in (os.geteuid(), 0):
        raise ConfigError(option, directory, f"the socket's directory belongs to uid "
                                             f"{info.st_uid}, not to the agent or root")
    if info.st_mode & stat.S_IWOTH and not info.st_mode & stat.S_ISVTX:
        raise ConfigError(option, directory, "the socket's directory is writable by anyone")


def remove_stale(path: str, option: str) -> None:
    """Remove a socket file no process listens on; refuse a live socket or a non-socket."""
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(info.st_mode):
        raise ConfigError(option, path, "exists and is not a socket; not removing it")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(1.0)
    try:
        probe.connect(path)
    except OSError as exc:
        if exc.errno not in (errno.ECONNREFUSED, errno.ENOENT):
            raise
    else:
        raise ConfigError(option, path, "another process is serving this socket")
    finally:
        probe.close()
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def bind(path: str, gid: int | None, backlog: int = 128) -> tuple[socket.socket, int]:
    """A listening socket at ``path`` with its final permissions; returns it and the inode
    (so stop() removes the file only while it is still ours)."""
    temporary = f"{path}.{os.getpid()}.new"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        if os.path.lexists(temporary):
            os.unlink(temporary)
        sock.bind(temporary)
        os.chmod(temporary, SOCKET_MODE)
        if gid is not None:
            _give_to_group(temporary, gid)
        os.rename(temporary, path)
        sock.listen(backlog)
        return sock, os.lstat(path).st_ino
    except BaseException:
        sock.close()
        if os.path.lexists(temporary):
            os.unlink(temporary)
        raise


def _give_to_group(path: str, gid: int) -> None:
    try:
        os.chown(path, -1, gid)
    except PermissionError:
        raise ConfigError("[hook] socket_group", gid, "the agent's user is not a member of "
                          "this group, so it may not give the socket to it (systemd: "
                          "SupplementaryGroups=)") from None


def remove_if_ours(path: str, inode: int) -> None:
    try:
        if os.lstat(path).st_ino == inode:
            os.unlink(path)
    except FileNotFoundError:
        pass
