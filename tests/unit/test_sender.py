import datetime
import logging
import threading
import time

import pytest
from oslo_config import cfg

from lifecycle_stats.interfaces import Conduit
from lifecycle_stats.emitters.memory import MemoryConduit
from lifecycle_stats.publishing import spool_options
from lifecycle_stats.counters import Counters
from lifecycle_stats.exceptions import BatchEmitError, EmitError
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


class BlockingConduit(Conduit):
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
    emitter = MemoryConduit()
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
    emitter = MemoryConduit()
    emitter.failures_left = 5
    waits = []
    spool.put(note(1), "final")
    assert run(emitter, sleep=waits.append, wait_initial=1, wait_max=3).drain(timeout=10)
    assert waits == [1, 2, 3, 3, 3]


def test_stop_during_backoff_is_prompt_and_keeps_the_record(spool, counters):
    emitter = BlockingConduit(fail=True)
    spool.put(note(1), "final")
    sender = Sender(spool, "bus", emitter, counters=counters, wait_initial=60, wait_max=60)
    sender.start()
    assert emitter.called.wait(10)
    began = time.monotonic()
    assert sender.stop(timeout=10)
    assert time.monotonic() - began < 2
    assert spool.pending_count("bus") == 1


def test_record_in_flight_at_stop_is_confirmed_and_no_more_are_sent(spool, counters):
    emitter = BlockingConduit()
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


class Exploding(MemoryConduit):
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
    emitter = MemoryConduit()
    spool.put(note(1), "final")
    sender = run(emitter, poll_interval=3600)
    assert len(emitter.wait_for(1, timeout=10)) == 1
    spool.put(note(2), "final")
    sender.wake()
    assert [n.message_id for n in emitter.wait_for(2, timeout=10)] == ["msg-1", "msg-2"]


def test_drain_times_out_while_the_conduit_is_down(spool, run):
    emitter = MemoryConduit()
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
        Sender(spool, "bus", MemoryConduit(), **kw)


def test_unknown_conduit_fails_in_the_constructor(spool):
    with pytest.raises(ValueError, match="'file' is not one of"):
        Sender(spool, "file", MemoryConduit())


def test_spool_options_defaults():
    conf = cfg.ConfigOpts()
    conf.register_opts(spool_options.OPTS, group=spool_options.GROUP)
    conf([])
    assert conf.spool.max_records == 100000
    assert conf.spool.retry_initial_wait == 0.5
    assert conf.spool.retry_max_wait == 30.0


# -- poison records --------------------------------------------------------------------------

class Refusing(MemoryConduit):
    """Refuses some message ids forever (a poison record), or everything (an outage)."""

    def __init__(self, refuse=(), down=False):
        super().__init__()
        self.refuse = set(refuse)
        self.down = down
        self.tries = []

    def emit(self, notification):
        self.tries.append(notification.message_id)
        if self.down or notification.message_id in self.refuse:
            raise EmitError(f"refused {notification.message_id}")
        super().emit(notification)


def rejects(spool):
    return spool._db.execute("SELECT seq, message_id, origin, reason FROM rejects").fetchall()


@pytest.mark.allow_error_logs
def test_a_poison_record_moves_to_rejects_and_the_conduit_goes_on(spool, run, counters, caplog):
    for n in range(3):
        spool.put(note(n), "final")
    emitter = Refusing(refuse={"msg-0"})
    assert run(emitter, sleep=lambda s: None, probe_after=3).drain(timeout=10)
    assert [n.message_id for n in emitter.sent] == ["msg-1", "msg-2"]
    [(seq, message_id, origin, reason)] = rejects(spool)
    assert (seq, message_id, origin) == (1, "msg-0", "bus")
    assert "failed 3 times while the next record was delivered: refused msg-0" in reason
    assert counters.get("sender.bus.rejected") == 1 and spool.depth() == 0
    assert not spool.seen("msg-0")  # rejected is not delivered
    [error] = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert "gave up on msg-0" in error.getMessage()


def test_an_outage_never_rejects_anything(spool, run, counters):
    for n in range(3):
        spool.put(note(n), "final")
    emitter = Refusing(down=True)
    waited = threading.Event()

    def sleep(seconds):
        if emitter.tries.count("msg-0") >= 12:  # four probes, all failed
            waited.set()
            emitter.down = False

    assert run(emitter, sleep=sleep, probe_after=3).drain(timeout=10)
    assert waited.is_set() and rejects(spool) == []
    assert [n.message_id for n in emitter.sent] == ["msg-0", "msg-1", "msg-2"]
    assert emitter.tries.count("msg-1") == 5  # 4 failed probes, then its turn


def test_a_lone_failing_record_is_kept_while_nothing_waits_behind_it(spool, run):
    spool.put(note(0), "final")
    emitter = Refusing(refuse={"msg-0"})
    tries = threading.Event()

    def sleep(seconds):
        if len(emitter.tries) >= 10:
            tries.set()
            emitter.refuse.clear()

    assert run(emitter, sleep=sleep, probe_after=2).drain(timeout=10)
    assert rejects(spool) == [] and [n.message_id for n in emitter.sent] == ["msg-0"]


@pytest.mark.allow_error_logs
def test_a_record_past_max_age_is_rejected(tmp_path, counters):
    now = [datetime.datetime(2026, 11, 21, tzinfo=datetime.timezone.utc)]
    sp = Spool(str(tmp_path / "aged.sqlite"), conduits=["bus", "log"], clock=lambda: now[0])
    try:
        sp.put(note(0), "final")
        now[0] += datetime.timedelta(hours=2)
        emitter = Refusing(refuse={"msg-0"})
        sender = Sender(sp, "bus", emitter, counters=counters, sleep=lambda s: None,
                        max_age_seconds=3600)
        sender.start()
        try:
            assert sender.drain(timeout=10)
        finally:
            sender.stop(timeout=10)
        assert "undelivered after 7200 s (1 attempts)" in rejects(sp)[0][3]
        assert [s for s, _ in sp.pending("log", 10)] == [1]  # the other conduit still has it
    finally:
        sp.close()


def test_attempts_are_counted_in_the_spool_across_restarts(spool, run):
    spool.put(note(0), "final")
    emitter = Refusing(down=True)
    sender = Sender(spool, "bus", emitter, sleep=lambda s: None)
    sender.start()
    while len(emitter.tries) < 3:
        time.sleep(0.01)
    assert sender.stop(timeout=10)
    attempts = spool._db.execute("SELECT attempts, last_error FROM records").fetchone()
    assert attempts[0] >= 3 and attempts[1] == "refused msg-0"


@pytest.mark.allow_error_logs
def test_another_conduit_s_outage_does_not_count_towards_this_one_s_poison_probe(tmp_path):
    """One attempts count per record was shared by every conduit: four failures in one
    conduit's outage and a single transient failure in another made the second one probe,
    see the next record go through, and reject a record it would have delivered on its next
    try (found by review)."""
    sp = Spool(str(tmp_path / "two.sqlite"), conduits=["down", "flaky"])
    try:
        sp.put(note(0), "final")
        sp.put(note(1), "final")
        down = Sender(sp, "down", Refusing(down=True), probe_after=5)
        waits = []

        def outage(seconds):  # `down` fails msg-0 four times, then the agent stops
            waits.append(seconds)
            if len(waits) == 4:
                down._stop.set()

        down._retrying.sleep = outage
        down._send_batch()
        assert sp._db.execute("SELECT attempts FROM records WHERE seq = 1").fetchone() == (4,)
        flaky = Refusing(refuse={"msg-0"})

        def sleep(_seconds):  # its backoff: the transient failure has passed by then
            flaky.refuse.clear()

        sender = Sender(sp, "flaky", flaky, sleep=sleep, probe_after=5)
        sender.start()
        try:
            assert sender.drain(timeout=10)
        finally:
            sender.stop(timeout=10)
        assert [n.message_id for n in flaky.sent] == ["msg-0", "msg-1"]
        assert rejects(sp) == []
        assert sp._db.execute("SELECT attempts FROM records WHERE seq = 1").fetchone() == (5,)
    finally:
        sp.close()


# -- batches: publish what is pending, retire what was confirmed in one transaction ----------

class Batching(Refusing):
    """A conduit with emit_batch: publishes in order and stops at the first refusal."""

    def __init__(self, **kw):
        super().__init__(**kw)
        self.batches = []

    def emit_batch(self, notifications):
        self.batches.append([n.message_id for n in notifications])
        for delivered, notification in enumerate(notifications):
            try:
                self.emit(notification)
            except EmitError as exc:
                raise BatchEmitError(str(exc), delivered) from exc


def count_commits(spool):
    """COMMITs the spool's connection runs from now on (one fsync each, synchronous=FULL)."""
    commits = []
    spool._db.set_trace_callback(lambda sql: commits.append(sql) if sql == "COMMIT" else None)
    return commits


def test_a_pending_batch_is_published_once_and_retired_in_one_transaction(spool, run, counters):
    for n in range(50):
        spool.put(note(n), "final")
    commits = count_commits(spool)
    emitter = Batching()
    assert run(emitter, batch=100).drain(timeout=10)
    assert emitter.batches[0] == [f"msg-{n}" for n in range(50)]
    assert [n.message_id for n in emitter.sent] == [f"msg-{n}" for n in range(50)]
    assert spool.depth() == 0 and counters.get("sender.bus.sent") == 50
    # pending() is one transaction, the retirement of all 50 another (not 50 more)
    assert len(commits) <= 3, commits


def test_without_emit_batch_records_are_emitted_one_by_one_and_retired_together(spool, run):
    for n in range(20):
        spool.put(note(n), "final")
    commits = count_commits(spool)
    emitter = MemoryConduit()
    assert run(emitter, batch=100).drain(timeout=10)
    assert [n.message_id for n in emitter.sent] == [f"msg-{n}" for n in range(20)]
    assert len(commits) <= 3, commits


def test_a_record_refused_mid_batch_is_retried_alone_then_the_rest_follow(spool, run, counters):
    for n in range(5):
        spool.put(note(n), "final")
    emitter = Batching(refuse={"msg-2"})

    def sleep(seconds):
        emitter.refuse.clear()  # the broker takes it on the retry

    assert run(emitter, sleep=sleep).drain(timeout=10)
    assert emitter.batches[0] == [f"msg-{n}" for n in range(5)]
    assert [n.message_id for n in emitter.sent] == [f"msg-{n}" for n in range(5)]
    assert emitter.tries.count("msg-2") == 2  # the batch's try was its first attempt
    assert emitter.tries.count("msg-3") == 1  # never published before msg-2
    assert counters.get("sender.bus.retries") == 1 and spool.depth() == 0


@pytest.mark.allow_error_logs
def test_a_poison_record_in_a_batch_is_rejected_and_the_others_delivered(spool, run, counters):
    for n in range(6):
        spool.put(note(n), "final")
    emitter = Batching(refuse={"msg-1"})
    assert run(emitter, sleep=lambda s: None, probe_after=3).drain(timeout=10)
    assert [n.message_id for n in emitter.sent] == ["msg-0", "msg-2", "msg-3", "msg-4", "msg-5"]
    assert [r[1] for r in rejects(spool)] == ["msg-1"]
    assert counters.get("sender.bus.rejected") == 1 and spool.depth() == 0


@pytest.mark.allow_error_logs
def test_an_emit_batch_bug_confirms_nothing_and_the_records_still_go_out(spool, run, counters):
    for n in range(3):
        spool.put(note(n), "final")

    class Broken(MemoryConduit):
        def emit_batch(self, notifications):
            raise RuntimeError("conduit bug")

    emitter = Broken()
    assert run(emitter, sleep=lambda s: None).drain(timeout=10)
    assert [n.message_id for n in emitter.sent] == ["msg-0", "msg-1", "msg-2"]


def test_on_drained_runs_once_a_burst_is_delivered_not_while_idle_nor_in_a_trickle(spool, run):
    drained, calls = threading.Event(), []

    def on_drained():
        calls.append(spool.pending_count("bus"))
        drained.set()

    for n in range(3):
        spool.put(note(n), "final")
    sender = run(MemoryConduit(), poll_interval=0.01, on_drained=on_drained, drained_after=3)
    assert drained.wait(10) and calls == [0]
    drained.clear()
    assert not drained.wait(0.2)  # ~20 idle rounds: nothing delivered, nothing called
    for n in range(3, 6):
        spool.put(note(n), "final")
        sender.wake()
        assert sender.drain(timeout=10)  # drained after each one: a trickle
    assert drained.wait(10) and calls == [0, 0]  # once, after the third
