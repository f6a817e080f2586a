"""ReaderPool (reading/reader_pool.py): reads at once each get a reader (a connection) of
their own, up to the pool's size; every reader learns its own connection's domain handles."""
import threading

import pytest

from lifecycle_stats.exceptions import HypervisorError
from lifecycle_stats.reading.reader_pool import ReaderPool


class NamedReader:
    def __init__(self, name, hold=None, learn_error=None):
        self.name, self.hold, self.learn_error = name, hold, learn_error
        self.learned = 0

    def read(self, instance_id):
        if self.hold is not None:
            self.hold(self.name)
        return (self.name, instance_id)

    def poll(self):
        return {"polled-by": self.name}

    def learn_domains(self):
        self.learned += 1
        if self.learn_error is not None:
            raise self.learn_error
        return 3


def test_a_quiet_pool_reads_on_its_first_reader():
    pool = ReaderPool([NamedReader("a"), NamedReader("b")])
    assert [pool.read("i")[0] for _ in range(4)] == ["a"] * 4
    assert pool.poll() == {"polled-by": "a"} and len(pool) == 2


def test_reads_at_once_use_separate_readers_and_a_third_waits_for_one():
    inside, release = threading.Barrier(3), threading.Event()
    used, third = [], []

    def hold(name):
        used.append(name)
        if not release.is_set():
            inside.wait(10)  # both reads are in progress together
            release.wait(10)

    pool = ReaderPool([NamedReader("a", hold), NamedReader("b", hold)])
    readers = [threading.Thread(target=pool.read, args=(f"i{n}",)) for n in range(2)]
    for thread in readers:
        thread.start()
    inside.wait(10)
    late = threading.Thread(target=lambda: third.append(pool.read("i3")))
    late.start()
    assert third == []  # both readers are busy until one is given back
    release.set()
    for thread in (*readers, late):
        thread.join(10)
    assert sorted(used[:2]) == ["a", "b"] and third and third[0][0] in ("a", "b")


def test_every_reader_learns_and_the_first_failure_is_raised_after_all_tried():
    failing = NamedReader("a", learn_error=HypervisorError("list failed"))
    others = [NamedReader("b"), NamedReader("c")]
    pool = ReaderPool([failing, *others])
    with pytest.raises(HypervisorError, match="list failed"):
        pool.learn_domains()
    assert [r.learned for r in (failing, *others)] == [1, 1, 1]
    assert ReaderPool(others).learn_domains() == 3


def test_an_empty_pool_fails_in_the_constructor():
    with pytest.raises(ValueError, match="at least one"):
        ReaderPool([])
