"""lifecycle-stats-verify refuses to check with no secret: an empty or missing secret file, a
config without `[publisher] telemetry_secret` (the public default) or with an empty one, a
config file that does not exist. Each is exit 2 with one line naming the cause, never a
forged record reported valid."""
import json

import pytest

from lifecycle_stats.cmd import verify
from lifecycle_stats.publishing import signing
from tests.support.conduits import SECRET, notification


@pytest.fixture
def forged(tmp_path):
    """One sample signed with a key the verifier never sees."""
    message = dict(notification().payload["samples"][0])
    message = signing.signed(message, "attacker's key")
    path = tmp_path / "forged.jsonl"
    path.write_text(json.dumps(message) + "\n")
    return path


def run(args, capsys):
    rc = verify.main(args)
    captured = capsys.readouterr()
    return rc, captured.out + captured.err


def test_an_empty_secret_file_is_an_error_not_a_valid_forgery(tmp_path, forged, capsys):
    secret = tmp_path / "secret"
    secret.write_text("\n")
    rc, text = run(["--secret-file", str(secret), str(forged)], capsys)
    assert rc == 2
    assert "secret file" in text and "empty" in text
    assert "valid 1" not in text


def test_a_missing_secret_file_is_an_error(tmp_path, forged, capsys):
    rc, text = run(["--secret-file", str(tmp_path / "nope"), str(forged)], capsys)
    assert rc == 2
    assert "cannot read the secret" in text


def test_a_config_without_a_secret_does_not_fall_back_to_the_public_default(
        tmp_path, forged, capsys):
    # A record signed with Ceilometer's public default would pass a silent fallback.
    public = tmp_path / "public.jsonl"
    public.write_text(json.dumps(signing.signed(
        dict(notification().payload["samples"][0]), signing.CEILOMETER_DEFAULT_SECRET)) + "\n")
    config = tmp_path / "agent.conf"
    config.write_text("[DEFAULT]\nhost = cmp1\n")
    rc, text = run(["--config-file", str(config), str(public)], capsys)
    assert rc == 2
    assert "telemetry_secret" in text and "public default" in text


@pytest.mark.parametrize("value", ["", '""'])
def test_a_config_with_an_empty_secret_is_an_error(tmp_path, forged, capsys, value):
    config = tmp_path / "agent.conf"
    config.write_text(f"[publisher]\ntelemetry_secret = {value}\n")
    rc, text = run(["--config-file", str(config), str(forged)], capsys)
    assert rc == 2
    assert "telemetry_secret" in text and "empty" in text


def test_a_missing_config_file_is_an_error(tmp_path, forged, capsys):
    rc, text = run(["--config-file", str(tmp_path / "absent.conf"), str(forged)], capsys)
    assert rc == 2
    assert "absent.conf" in text


def test_a_real_secret_still_rejects_the_forgery(tmp_path, forged, capsys):
    config = tmp_path / "agent.conf"
    config.write_text(f"[publisher]\ntelemetry_secret = {SECRET}\n")
    rc, text = run(["--config-file", str(config), str(forged)], capsys)
    assert rc == 1
    assert "INVALID signature" in text
