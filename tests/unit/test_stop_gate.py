"""StopGate (capture/stop_gate.py): writes of concurrent captures overlap (so the spool's
group commit can batch them); nothing is written once close() returned, and close() waits
for a write in progress."""
import threading

import pytest

from lifecycle_stats.capture.stop_gate import StopGate
from lifecycle_stats.exceptions import ShuttingDown


def test_concurrent_writes_are_in_progress_together():
    """Regression: write() held the gate's lock across the spool's put, so captures wrote one
    at a time and the group commit never saw two writers (every commit of a burst was one
    capture's fsync)."""
    gate = StopGate()
    first_in, second_in = threading.Event(), threading.Event()

    def first_put():
        first_in.set()
        return second_in.wait(10)  # the second write gets in while this one is in progress

    writer = threading.Thread(target=lambda: results.append(gate.write(first_put)))
    results: list[bool] = []
    writer.start()
    assert first_in.wait(10)
    gate.write(second_in.set)
    writer.join(10)
    assert results == [True]


def test_close_waits_for_a_write_in_progress_and_refuses_later_ones():
    gate = StopGate()
    entered, release, closed = threading.Event(), threading.Event(), threading.Event()
    written = []

    def put():
        entered.set()
        release.wait(10)
        written.append("put")

    writer = threading.Thread(target=gate.write, args=(put,))
    writer.start()
    assert entered.wait(10)
    closer = threading.Thread(target=lambda: (gate.close(0.0), closed.set()))
    closer.start()
    assert not closed.wait(0.05)  # still writing: close() has not returned
    release.set()
    closer.join(10)
    writer.join(10)
    assert closed.is_set() and written == ["put"]
    with pytest.raises(ShuttingDown):
        gate.write(written.append, "late")
    assert written == ["put"]
