"""The agent's interpreter settings for latency (lifecycle_stats/interpreter.py), checked in a
child interpreter so this test process keeps its own switch interval and collector."""
from __future__ import annotations

import json
import subprocess
import sys

CHILD = """
import gc, json, sys
from lifecycle_stats import interpreter
before = {"switch": sys.getswitchinterval(), "frozen": gc.get_freeze_count()}
kept = [object() for _ in range(1000)]  # start-up objects: frozen, not collected
interpreter.tune_for_latency()
after = {"switch": sys.getswitchinterval(), "frozen": gc.get_freeze_count()}
print(json.dumps({"before": before, "after": after}))
"""


def test_tuning_shortens_the_switch_interval_and_freezes_the_start_up_heap():
    out = subprocess.run([sys.executable, "-c", CHILD], capture_output=True, text=True,
                         check=True).stdout
    found = json.loads(out)
    assert found["before"]["switch"] == 0.005  # CPython's default: what the agent ran with
    assert found["after"]["switch"] == 0.001
    assert found["before"]["frozen"] == 0
    assert found["after"]["frozen"] >= 1000


def test_release_free_heap_gives_back_what_threads_freed(monkeypatch):
    """Its expected value came from the helper it calls, so deleting the trim(0) call kept it
    green (found by review): the C call is recorded instead."""
    from lifecycle_stats import interpreter

    calls = []
    monkeypatch.setattr(interpreter, "_malloc_trim", lambda: calls.append)
    assert interpreter.release_free_heap() is True and calls == [0]
    monkeypatch.setattr(interpreter, "_malloc_trim", lambda: None)  # musl: no malloc_trim
    assert interpreter.release_free_heap() is False



def test_the_agent_caps_malloc_arenas_unless_the_operator_set_them(monkeypatch):
    from lifecycle_stats import interpreter

    calls = []

    class Libc:
        def mallopt(self, param, value):
            calls.append((param, value))
            return 1

    monkeypatch.setattr(interpreter.ctypes, "CDLL", lambda name: Libc())
    monkeypatch.delenv("MALLOC_ARENA_MAX", raising=False)
    assert interpreter.limit_malloc_arenas() is True
    assert calls == [(interpreter.M_ARENA_MAX, interpreter.MALLOC_ARENAS)]
    monkeypatch.setenv("MALLOC_ARENA_MAX", "4")  # glibc read it at start: left as it is
    assert interpreter.limit_malloc_arenas() is False
    assert len(calls) == 1
