"""The agent runs on native threads: importing everything it uses patches nothing."""
import subprocess
import sys

CHECK = """
import lifecycle_stats.agent, lifecycle_stats.cmd.agent, listeners.bus, emitters.messaging
import oslo_messaging, threading, socket, time
import eventlet.patcher as p
patched = [m for m in ("thread", "socket", "time", "select", "os") if p.is_monkey_patched(m)]
assert not patched, patched
lifecycle_stats.agent.refuse_green_threads()
print("native")
"""

PATCHED = """
import eventlet; eventlet.monkey_patch()
import lifecycle_stats.agent
try:
    lifecycle_stats.agent.refuse_green_threads()
except RuntimeError as exc:
    print("refused:", exc)
"""


def run(code):
    return subprocess.run([sys.executable, "-W", "ignore", "-c", code], capture_output=True,
                          text=True, timeout=60)


def test_imports_patch_nothing():
    result = run(CHECK)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "native"


def test_a_patched_process_is_refused():
    result = run(PATCHED)
    assert "refused: eventlet has monkey-patched" in result.stdout, result.stderr
