"""Fixtures the hook's unit tests share (test_hook.py, test_hook_connections.py)."""
from __future__ import annotations

import pytest

from tests.support.fakes import TriggerRecorder


@pytest.fixture
def sock_path(tmp_path):
    """The agent's socket, in a directory the server creates."""
    return str(tmp_path / "run" / "hook.sock")


@pytest.fixture
def recorder():
    return TriggerRecorder()
