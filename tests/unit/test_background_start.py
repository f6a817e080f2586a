"""listeners.background_start: a blocking start on a daemon thread, retried, cancellable."""
import threading

import pytest

from lifecycle_stats.counters import Counters
from lifecycle_stats.listeners.background_start import BackgroundStart


class Server:
    def __init__(self, failures=0, block=None):
        self.failures, self.block = failures, block
        self.starts = self.stops = 0
        self.entered = threading.Event()

    def start(self):
        self.starts += 1
        self.entered.set()
        if self.block is not None:
            self.block.wait(5)
        if self.failures:
            self.failures -= 1
            raise ConnectionError("broker unreachable")

    def stop(self):
        self.stops += 1


def starter(server, counters=None):
    return BackgroundStart(server.start, server.stop, name="listener x",
                           counters=counters or Counters(), error_counter="bus.connect_errors",
                           retry_max_wait=0.01)


@pytest.mark.parametrize("failures", [0, 2])
def test_a_start_that_fails_is_retried_until_it_runs(failures):
    counters = Counters()
    server = Server(failures=failures)
    bg = starter(server, counters)
    assert bg.state == "not started"
    assert bg.begin(wait=5) is True
    assert bg.state == "alive" and server.starts == failures + 1
    assert counters.get("bus.connect_errors") == failures
    assert bg.cancel() is True and bg.state == "stopped"


def test_a_start_blocked_past_cancel_undoes_itself():
    release = threading.Event()
    server = Server(block=release)
    bg = starter(server)
    assert bg.begin(wait=0.05) is False  # the caller goes on without it
    assert bg.state == "connecting" and bg.connecting
    assert bg.cancel() is False  # it never started: nothing for the caller to stop
    assert bg.state == "stopped"
    release.set()  # the broker answers after all
    bg._thread.join(5)
    assert server.stops == 1 and not bg.started
