"""A capture nobody waits for is built while its commit's fsync runs (capture/early_builds.py)."""
import threading

import pytest

from lifecycle_stats.capture import early_builds


class Builder:
    def __init__(self):
        self.calls, self.threads = [], []
        self.fail = False
        self.gate = None  # an Event the build waits for

    def __call__(self, message_id, body):
        self.calls.append(message_id)
        self.threads.append(threading.current_thread().name)
        if self.gate is not None:
            self.gate.wait(5)
        if self.fail:
            raise RuntimeError("build failed")
        return ("built", message_id, body)


@pytest.fixture
def builder():
    return Builder()


def test_an_offered_capture_is_built_once_by_the_thread_and_taken(builder):
    wakes = []
    early = early_builds.EarlyBuilds(builder, lambda: wakes.append(1))
    assert early.offer("m1", b"r1") and wakes == [1]
    assert early.run_queued() == 1 and early.run_queued() == 0
    assert early.take("m1", b"r1") == (True, ("built", "m1", b"r1"))
    assert builder.calls == ["m1"] and len(early) == 0
    assert early.take("m1", b"r1") == (False, None)  # taken once


def test_a_capture_not_built_yet_is_built_by_whoever_takes_it(builder):
    early = early_builds.EarlyBuilds(builder, lambda: None)
    early.offer("m1", b"r1")
    assert early.take("m1", b"r1") == (True, ("built", "m1", b"r1"))
    assert builder.threads == [threading.current_thread().name]
    assert early.run_queued() == 0


def test_a_taker_waits_for_the_build_running_on_the_thread(builder):
    early = early_builds.EarlyBuilds(builder, lambda: None)
    builder.gate = threading.Event()
    early.offer("m1", b"r1")
    runner = threading.Thread(target=early.run_queued)
    runner.start()
    got = []
    taker = threading.Thread(target=lambda: got.append(early.take("m1", b"r1")))
    taker.start()
    taker.join(0.2)
    assert taker.is_alive() and got == []  # waiting for the running build
    builder.gate.set()
    taker.join(5)
    runner.join(5)
    assert got == [(True, ("built", "m1", b"r1"))] and builder.calls == ["m1"]


def test_another_record_under_the_same_id_or_a_failed_build_is_not_taken(builder):
    early = early_builds.EarlyBuilds(builder, lambda: None)
    early.offer("m1", b"r1")
    assert early.take("m1", b"other") == (False, None)  # rebuilt after a restart: not this
    builder.fail = True
    early.offer("m2", b"r2")
    early.run_queued()
    assert early.take("m2", b"r2") == (False, None)  # the ordinary build then


def test_at_most_max_are_kept_and_an_untaken_build_makes_room(builder):
    early = early_builds.EarlyBuilds(builder, lambda: None)
    for n in range(early_builds.MAX):
        assert early.offer(f"m{n}", b"r")
    assert not early.offer("late", b"r")  # a burst: the ordinary way
    early.run_queued()  # every one built, none taken (their commits found duplicates)
    assert early.offer("late", b"r") and len(early) == early_builds.MAX
    assert early.take("m0", b"r") == (False, None)  # the oldest untaken one made room
    assert early.take("late", b"r")[0]
