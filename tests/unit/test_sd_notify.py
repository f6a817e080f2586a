import socket

from lifecycle_stats.operations import sd_notify


def receiver(address):
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(address)
    sock.settimeout(5)
    return sock


def test_sends_state_to_a_path_socket(tmp_path):
    path = str(tmp_path / "notify")
    with receiver(path) as sock:
        assert sd_notify.notify("READY=1", environ={"NOTIFY_SOCKET": path})
        assert sock.recv(100) == b"READY=1"


def test_sends_state_to_an_abstract_socket(tmp_path):
    name = f"lst-notify-{tmp_path.name}"
    with receiver("\0" + name) as sock:
        assert sd_notify.notify("STOPPING=1", environ={"NOTIFY_SOCKET": "@" + name})
        assert sock.recv(100) == b"STOPPING=1"


def test_without_systemd_it_is_a_no_op_and_a_dead_socket_only_warns(tmp_path, caplog):
    assert sd_notify.notify("READY=1", environ={}) is False
    assert sd_notify.notify("READY=1", environ={"NOTIFY_SOCKET": str(tmp_path / "gone")}) is False
    assert "could not notify systemd" in caplog.text
