"""Captures nova waits for come first (capture/nova_waiting.py): publishing waits for them,
bounded; captures nobody waits for hold nothing."""
import threading
import time

from lifecycle_stats.capture.nova_waiting import NovaWaiting
from lifecycle_stats.counters import Counters
from lifecycle_stats.emitters.memory import MemoryConduit
from lifecycle_stats.publishing.sender import Sender
from lifecycle_stats.publishing.spool import Spool
from lifecycle_stats.records import Notification


def note(n):
    return Notification("compute.instance.exists", "INFO", "lifecycle-stats.h1", {"n": n},
                        f"msg-{n}", "2026-12-05T00:00:00.000000+00:00")


def test_wait_clear_returns_at_once_when_nova_waits_for_nothing():
    started = time.monotonic()
    assert NovaWaiting().wait_clear(5.0) is True
    assert time.monotonic() - started < 1.0


def test_wait_clear_waits_for_every_capture_then_gives_up_at_its_bound():
    waiting = NovaWaiting()
    with waiting.capture():
        with waiting.capture():
            assert waiting.wait_clear(0.05) is False  # bounded: publishing is never starved
        assert waiting.wait_clear(0.05) is False  # one still runs
        done = []
        waiter = threading.Thread(target=lambda: done.append(waiting.wait_clear(5.0)))
        waiter.start()
        time.sleep(0.1)
        assert done == []  # waits while nova waits
    waiter.join(5)
    assert done == [True]


def test_after_the_answer_publishing_yields_until_novas_copy_is_back():
    waiting = NovaWaiting(hold=30.0)
    with waiting.capture("i1"):
        pass  # nova has its answer; its messagingv2 publishes the announcement now
    assert waiting.wait_clear(0.05) is False
    waiting.heard_on_bus("i2")  # another instance's copy releases nothing
    assert waiting.wait_clear(0.05) is False
    done = []
    waiter = threading.Thread(target=lambda: done.append(waiting.wait_clear(10.0)))
    waiter.start()
    time.sleep(0.1)
    assert done == []
    waiting.heard_on_bus("i1")
    waiter.join(5)
    assert done == [True]


def test_the_hold_ends_by_itself_without_a_bus():
    waiting = NovaWaiting(hold=0.1)
    with waiting.capture("i1"):
        pass
    started = time.monotonic()
    assert waiting.wait_clear(10.0) is True
    assert 0.05 <= time.monotonic() - started < 5.0


def test_a_copy_back_before_the_answer_holds_nothing_unless_long_ago():
    """The driver may run after messagingv2: nova's copy then comes back while the capture
    still runs. A copy heard longer than the hold ago is another announcement's."""
    now = [100.0]
    waiting = NovaWaiting(hold=0.02, clock=lambda: now[0])
    with waiting.capture("i1"):
        waiting.heard_on_bus("i1")
    assert waiting.wait_clear(0.0) is True
    with waiting.capture("i1"):
        waiting.heard_on_bus("i1")
        now[0] += 1.0
    assert waiting.wait_clear(0.0) is False  # held: until the copy of this one is back
    waiting.heard_on_bus("i1")
    assert waiting.wait_clear(0.0) is True


def test_holds_are_counted_and_those_nova_never_ended_are_told_apart():
    """An operator must see an agent that never hears nova's copy: each hooked delete.samples
    then leaves HOLD late."""
    now = [100.0]
    counters = Counters()
    waiting = NovaWaiting(hold=0.02, clock=lambda: now[0], counters=counters)
    with waiting.capture("i1"):
        pass
    waiting.heard_on_bus("i1")  # nova's copy ended this one
    with waiting.capture("i2"):
        pass
    now[0] += 1.0  # no copy of i2 came back
    assert waiting.wait_clear(0.0) is True
    assert counters.get("nova_waiting.holds") == 2
    assert counters.get("nova_waiting.holds_expired") == 1
    assert counters.get("nova_waiting.waits_timed_out") == 0
    with waiting.capture():
        assert waiting.wait_clear(0.0) is False  # the batch goes on while nova still waits
    assert counters.get("nova_waiting.waits_timed_out") == 1


def test_a_capture_without_an_instance_holds_nothing_after_it():
    waiting = NovaWaiting(hold=30.0)
    with waiting.capture():
        pass
    assert waiting.wait_clear(0.0) is True


def test_a_sender_publishes_nothing_while_a_capture_nova_waits_for_runs(tmp_path):
    waiting = NovaWaiting()
    spool = Spool(str(tmp_path / "spool.sqlite"), conduits=["m"])
    conduit = MemoryConduit()
    sender = Sender(spool, "m", conduit, poll_interval=0.05,
                    before_batch=lambda: waiting.wait_clear(10.0))
    try:
        with waiting.capture():
            sender.start()
            spool.put(note(1), "final")
            sender.wake()
            time.sleep(0.3)
            assert conduit.sent == []
        assert sender.drain(5)
        assert [n.message_id for n in conduit.sent] == ["msg-1"]
    finally:
        sender.stop(5)
        spool.close()
