"""The udp and file conduits on real sockets and files, the ceilometer conduit on
oslo.messaging's in-memory transport, and lifecycle-stats-verify over both outputs."""
import json
import os
import re
import socket
import threading

import msgpack
import oslo_messaging
import pytest

from lifecycle_stats.emitters import ceilometer, file, messaging, udp
from lifecycle_stats.publishing import payloads, signing
from lifecycle_stats.cmd import verify
from lifecycle_stats.exceptions import ConfigError, EmitError
from tests.support.conduits import SECRET, conf_with, notification

def expect_fields(message, sample):
    assert message["counter_name"] == sample["name"]
    assert (message["counter_type"], message["counter_unit"], message["counter_volume"]) == (
        sample["type"], sample["unit"], sample["volume"])
    assert (message["resource_id"], message["timestamp"], message["message_id"]) == (
        sample["resource_id"], sample["timestamp"], sample["message_id"])
    assert message["resource_metadata"] == sample["resource_metadata"]
    assert signing.verify(message, SECRET)


@pytest.fixture
def receiver():
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.settimeout(5)
    yield sock
    sock.close()


def test_udp_sends_one_signed_msgpack_datagram_per_sample(receiver):
    port = receiver.getsockname()[1]
    emitter = udp.UdpConduit(conf_with(udp_emitter={"target": f"udp://127.0.0.1:{port}"}))
    sent = notification()
    emitter.emit(sent)
    emitter.close()
    got = [msgpack.unpackb(receiver.recv(65535), raw=False) for _ in sent.payload["samples"]]
    for message, sample in zip(got, sent.payload["samples"]):
        expect_fields(message, sample)


@pytest.mark.allow_error_logs
def test_udp_skips_an_oversized_sample_and_sends_the_rest(receiver):
    port = receiver.getsockname()[1]
    emitter = udp.UdpConduit(conf_with(udp_emitter={"target": f"udp://127.0.0.1:{port}"}))
    sent = notification()
    samples = [dict(s) for s in sent.payload["samples"][:3]]
    samples[1]["resource_metadata"] = {"blob": "x" * 70000}
    emitter.emit(sent.__class__(**{**sent.__dict__, "payload": {"samples": samples}}))
    names = {msgpack.unpackb(receiver.recv(65535), raw=False)["counter_name"] for _ in range(2)}
    assert names == {samples[0]["name"], samples[2]["name"]}
    assert emitter.oversized == 1


@pytest.mark.parametrize("target", ["http://h:1", "udp://", "udp://h:notaport"])
def test_udp_bad_target_is_a_config_error(target):
    with pytest.raises(ConfigError, match="udp_emitter"):
        udp.UdpConduit(conf_with(udp_emitter={"target": target}))


def test_file_writes_signed_json_lines_and_rotates(tmp_path):
    path = tmp_path / "samples.jsonl"
    sent = notification()
    one = len(file.lines(sent, SECRET))
    emitter = file.FileConduit(conf_with(file_emitter={
        "path": str(path), "max_bytes": one + 10, "backup_count": 2}))
    for _ in range(4):
        emitter.emit(sent)
    assert sorted(os.listdir(tmp_path)) == ["samples.jsonl", "samples.jsonl.1",
                                            "samples.jsonl.2"]  # the oldest dropped
    for name in os.listdir(tmp_path):
        lines = (tmp_path / name).read_text().splitlines()
        assert len(lines) == len(sent.payload["samples"])
        for line, sample in zip(lines, sent.payload["samples"]):
            expect_fields(json.loads(line), sample)


def test_file_fsyncs_its_directory_after_a_create_and_a_rotation(tmp_path, monkeypatch):
    """The file's fsync does not put a new directory entry or a rename on disk (fsync(2)):
    before, a power cut right after a create or a rotation could lose lines the spool had
    already dropped (found by review)."""
    import stat

    synced = []
    real_fsync = os.fsync

    def fsync(fd):
        synced.append("dir" if stat.S_ISDIR(os.fstat(fd).st_mode) else "file")
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    path = tmp_path / "samples.jsonl"
    sent = notification()
    emitter = file.FileConduit(conf_with(file_emitter={
        "path": str(path), "max_bytes": len(file.lines(sent, SECRET)) + 10, "backup_count": 2}))
    emitter.emit(sent)  # created
    assert synced == ["file", "dir"]
    emitter.emit(sent)  # rotated, created again
    assert synced == ["file", "dir", "dir", "file", "dir"]


def test_file_without_path_or_with_unwritable_dir(tmp_path):
    with pytest.raises(ConfigError, match="file_emitter"):
        file.FileConduit(conf_with())
    emitter = file.FileConduit(conf_with(file_emitter={"path": str(tmp_path / "no" / "f")}))
    with pytest.raises(EmitError):
        emitter.emit(notification())


def test_unavailable_capture_writes_nothing(tmp_path):
    path = tmp_path / "f"
    file.FileConduit(conf_with(file_emitter={"path": str(path)})).emit(
        notification(payloads.UNAVAILABLE))
    assert not path.exists()


def test_ceilometer_conduit_publishes_telemetry_polling_in_exchange_ceilometer():
    conf = conf_with()
    transport = oslo_messaging.get_notification_transport(conf, url="fake://")
    seen = []

    class Endpoint:
        def sample(self, ctxt, publisher_id, event_type, payload, metadata):
            seen.append((publisher_id, event_type, payload, metadata))

    listener = oslo_messaging.get_notification_listener(
        transport, [oslo_messaging.Target(topic="notifications", exchange="ceilometer")],
        [Endpoint()], executor="threading")
    listener.start()
    try:
        emitter = ceilometer.CeilometerConduit(conf, transport=transport)
        sent = notification()
        emitter.emit(sent)
        deadline = threading.Event()
        for _ in range(50):
            if seen:
                break
            deadline.wait(0.1)
    finally:
        listener.stop()
        listener.wait()
    publisher_id, event_type, payload, metadata = seen[0]
    assert (publisher_id, event_type) == ("lifecycle-stats.cmp1", "telemetry.polling")
    assert len(payload["samples"]) == len(sent.payload["samples"])
    for message, sample in zip(payload["samples"], sent.payload["samples"]):
        expect_fields(message, sample)


@pytest.mark.parametrize("make, groups, option", [
    (messaging.MessagingConduit, {"oslo_messaging_notifications": {"topics": []}},
     "[oslo_messaging_notifications] topics"),
    (ceilometer.CeilometerConduit, {"ceilometer_emitter": {"topics": []}},
     "[ceilometer_emitter] topics"),
])
def test_a_messaging_conduit_without_a_topic_is_a_config_error(make, groups, option):
    """With no topic every emit returned as if the broker confirmed, and the sender retired
    records nobody had been sent (found by review)."""
    conf = conf_with(**groups)
    transport = oslo_messaging.get_notification_transport(conf, url="fake://")
    try:
        with pytest.raises(ConfigError, match=re.escape(option)):
            make(conf, transport=transport)
    finally:  # an override stays with the option group, which every ConfigOpts shares
        for group, values in groups.items():
            for name in values:
                conf.clear_override(name, group=group)


def test_the_ceilometer_conduit_needs_its_own_topics_not_nova_s():
    conf = conf_with(oslo_messaging_notifications={"topics": []})
    transport = oslo_messaging.get_notification_transport(conf, url="fake://")
    assert ceilometer.CeilometerConduit(conf, transport=transport)._topics == ["notifications"]


def test_verify_cli_counts_valid_invalid_and_unreadable_lines(tmp_path, capsys):
    path = tmp_path / "samples.jsonl"
    file.FileConduit(conf_with(file_emitter={"path": str(path)})).emit(notification())
    secret = tmp_path / "secret"
    secret.write_text(SECRET + "\n")
    assert verify.main(["--secret-file", str(secret), str(path)]) == 0
    assert "invalid 0" in capsys.readouterr().out
    lines = path.read_text().splitlines()
    tampered = json.loads(lines[0])
    tampered["counter_volume"] += 1
    path.write_text("\n".join([json.dumps(tampered), *lines[1:], "{not json"]) + "\n")
    assert verify.main(["--secret-file", str(secret), str(path)]) == 1
    out = capsys.readouterr().out
    assert f"valid {len(lines) - 1}, invalid 1, unreadable 1" in out
    assert "INVALID signature on " + tampered["message_id"] in out


def test_verify_cli_reads_the_secret_from_a_config_file_and_checks_notifications(tmp_path):
    path = tmp_path / "notifications.jsonl"
    path.write_text(json.dumps({"payload": dict(notification().payload)}) + "\n")
    config = tmp_path / "agent.conf"
    config.write_text(f"[publisher]\ntelemetry_secret = {SECRET}\n")
    assert verify.main(["--config-file", str(config), str(path)]) == 0
    config.write_text("[publisher]\ntelemetry_secret = wrong\n")
    assert verify.main(["--config-file", str(config), str(path)]) == 1


def test_verify_cli_listens_for_udp_datagrams(tmp_path, capsys):
    probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()
    secret = tmp_path / "secret"
    secret.write_text(SECRET)
    sent = notification()
    count = len(sent.payload["samples"])
    result = {}
    thread = threading.Thread(target=lambda: result.update(rc=verify.main(
        ["--secret-file", str(secret), "--udp", f"udp://127.0.0.1:{port}",
         "--count", str(count), "--timeout", "5"])))
    thread.start()
    emitter = udp.UdpConduit(conf_with(udp_emitter={"target": f"udp://127.0.0.1:{port}"}))
    for _ in range(50):  # until the CLI has bound the port
        emitter.emit(sent)
        thread.join(0.1)
        if not thread.is_alive():
            break
    thread.join(10)
    assert result["rc"] == 0
    assert f"checked {count}: valid {count}, invalid 0" in capsys.readouterr().out


def test_verify_cli_usage_errors(tmp_path):
    secret = tmp_path / "s"
    secret.write_text("k")
    assert verify.main(["--secret-file", str(secret)]) == 2  # nothing to check
    assert verify.main(["--secret-file", str(tmp_path / "missing"), "f"]) == 2
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    assert verify.main(["--secret-file", str(secret), str(empty)]) == 2
