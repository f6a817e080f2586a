"""The shipped systemd unit, read as systemd reads it (for the unit and deployment tests)."""
from __future__ import annotations

import pathlib
import shlex

ROOT = pathlib.Path(__file__).resolve().parents[2]
UNIT = ROOT / "etc" / "systemd" / "lifecycle-stats-agent.service"


def unit_settings(text: str) -> dict[tuple[str, str], list[str]]:
    """{(section, key): [values in order]}: systemd keys may repeat."""
    settings: dict[tuple[str, str], list[str]] = {}
    section = None
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = line.strip("[]")
            continue
        key, _, value = line.partition("=")
        settings.setdefault((section, key), []).append(value)
    return settings


def exec_start_argv(text: str) -> list[str]:
    return shlex.split(unit_settings(text)[("Service", "ExecStart")][0])
