import threading
import time

import pytest
from oslo_config import cfg

from lifecycle_stats.emitters.base import Emitter
from lifecycle_stats.emitters.memory import MemoryEmitter
from lifecycle_stats.publishing import sender as sender_mod
from lifecycle_stats.counters import Counters
from lifecycle_stats.exceptions import EmitError
from lifecycle_stats.records import Notification
from lifecycle_stats.publishing.sender import Sender
from lifecycle_stats.publishing.spool import Spool


def note(n):
    return Notification("compute.instance.delete.samples", "INFO", "lifecycle-stats.h1",
                        {"n": n}, f"msg-{n}", "2026-11-21T12:00:00.000000+00:00")


@pytest.fixture
def spool(tmp_path):
    sp = Spool(str(tmp_path / "spool.sqlite"), conduits=["bus"])
    yield sp
    sp.close()


@pytest.fixture
def counters():
    return Counters()


@pytest.fixture
def run(spool, counters):
    started = []

    def make(emitter, **kw):
        kw.setdefault("counters", counters)
        s = Sender(spool, "bus", emitter, **kw)
        s.start()
        started.append(s)
        return s

    yield make
    for s in started:
        assert s.stop(timeout=10)


class BlockingEmitter(Emitter):
    """Fails (or blocks) on demand, and says when it was called."""

    def __init__(self, fail=False):
        self.fail = fail
        self.called = threading.Event()
        self.release = threading.Event()
        self.sent = []

    def emit(self, notification):
        self.called.set()
        if self.fail:
            raise EmitError("broker down")
        assert self.release.wait(10)
        self.sent.append(notification)


def test_retries_with_backoff_then_delivers_in_order(spool, run, counters):
    emitter = MemoryEmitter()
    emitter.failures_left = 4
    waits = []
    for n in range(3):
        spool.put(note(n), "final")
    sender = run(emitter, sleep=waits.append)
    assert sender.drain(timeout=10)
    assert waits == [0.5, 1.0, 2.0, 4.0]
    assert [n.message_id for n in emitter.sent] == ["msg-0", "msg-1", "msg-2"]
    assert counters.get("sender.bus.retries") == 4
    assert counters.get("sender.bus.sent") == 3
    assert spool.depth() == 0


def test_backoff_is_capped(spool, run):
    emitter = MemoryEmitter()
    emitter.failures_left = 5
    waits = []
    spool.put(note(1), "final")
    assert run(emitter, sleep=waits.append, wait_initial=1, wait_max=3).drain(timeout=10)
    assert waits == [1, 2, 3, 3, 3]


def test_stop_during_backoff_is_prompt_and_keeps_the_record(spool, counters):
    emitter = BlockingEmitter(fail=True)
    spool.put(note(1), "final")
    sender = Sender(spool, "bus", emitter, counters=counters, wait_initial=60, wait_max=60)
    sender.start()
    assert emitter.called.wait(10)
    began = time.monotonic()
    assert sender.stop(timeout=10)
    assert time.monotonic() - began < 2
    assert spool.pending_count("bus") == 1


def test_record_in_flight_at_stop_is_confirmed_and_no_more_are_sent(spool, counters):
    emitter = BlockingEmitter()
    spool.put(note(1), "final")
    spool.put(note(2), "final")
    sender = Sender(spool, "bus", emitter, counters=counters)
    sender.start()
    assert emitter.called.wait(10)
    assert sender.stop(timeout=0.01) is False  # still inside emit()
    emitter.release.set()
    assert sender.stop(timeout=10)
    assert [n.message_id for n in emitter.sent] == ["msg-1"]
    assert [n.message_id for _, n in spool.pending("bus", 10)] == ["msg-2"]


class Exploding(MemoryEmitter):
    def emit(self, notification):
        if self.failures_left:
            self.failures_left -= 1
            raise RuntimeError("socket closed")
        super().emit(notification)


@pytest.mark.allow_error_logs
def test_unexpected_exception_is_retried_as_emit_error(spool, run, counters, caplog):
    emitter = Exploding()
    emitter.failures_left = 2
    spool.put(note(1), "final")
    waits = []
    assert run(emitter, sleep=waits.append).drain(timeout=10)
    assert [n.message_id for n in emitter.sent] == ["msg-1"]
    assert counters.get("sender.bus.retries") == 2
    assert "raised RuntimeError instead of EmitError" in caplog.text


def test_wake_sends_new_records_without_waiting_for_the_poll(spool, run):
    emitter = MemoryEmitter()
    spool.put(note(1), "final")
    sender = run(emitter, poll_interval=3600)
    assert len(emitter.wait_for(1, timeout=10)) == 1
    spool.put(note(2), "final")
    sender.wake()
    assert [n.message_id for n in emitter.wait_for(2, timeout=10)] == ["msg-1", "msg-2"]


def test_drain_times_out_while_the_conduit_is_down(spool, run):
    emitter = MemoryEmitter()
    emitter.failures_left = 10**9
    gate = threading.Event()
    spool.put(note(1), "final")
    sender = run(emitter, sleep=lambda s: gate.wait(0.05))
    assert sender.drain(timeout=0.2) is False
    emitter.failures_left = 0
    assert sender.drain(timeout=10)


@pytest.mark.parametrize("kw, match", [
    ({"wait_initial": 0}, "wait_initial"),
    ({"wait_initial": 5, "wait_max": 1}, "wait_max"),
    ({"batch": 0}, "batch"),
])
def test_bad_settings_fail_in_the_constructor(spool, kw, match):
    with pytest.raises(ValueError, match=match):
        Sender(spool, "bus", MemoryEmitter(), **kw)


def test_unknown_conduit_fails_in_the_constructor(spool):
    with pytest.raises(ValueError, match="'file' is not one of"):
        Sender(spool, "file", MemoryEmitter())


def test_opts():
    conf = cfg.ConfigOpts()
    conf.register_opts(sender_mod.OPTS, group=sender_mod.GROUP)
    conf([])
    assert conf.spool.max_records == 100000
    assert conf.spool.retry_initial_wait == 0.5
    assert conf.spool.retry_max_wait == 30.0
