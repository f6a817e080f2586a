"""The driver's kept connections to the agent (listeners/nova/connections.py) and the agent's
side of them (hook_server: requests one after another on a connection): reuse, concurrent
requests, a timed-out request's connection dropped, an agent restarted or closing, and
drivers and agents of before keep-alive. Real unix sockets; the agent is a HookServer with a
recorder, or a scripted peer where the test needs one that misbehaves exactly."""
from __future__ import annotations

import datetime
import os
import random
import socket
import threading
import time
import uuid

import pytest

from lifecycle_stats.interfaces import Outcome
from lifecycle_stats.listeners import hook_server
from lifecycle_stats.listeners.nova import connections, protocol
from tests.support.fakes import TriggerRecorder
from tests.support.nova import legacy_start_payload

HOST = "cmp1"
NOW = datetime.datetime(2026, 11, 22, 3, 0, tzinfo=datetime.timezone.utc)


def delete_start(instance_id=None) -> dict:
    return {"v": protocol.VERSION, "event_type": "compute.instance.delete.start",
            "publisher_id": f"compute.{HOST}",
            "payload": legacy_start_payload(instance_id or str(uuid.uuid4()), HOST)}


def start_server(sock_path, recorder, **kwargs) -> hook_server.HookServer:
    server = hook_server.HookServer(sock_path, host=HOST, on_trigger=recorder, group="",
                                    clock=lambda: NOW, **kwargs)
    server.start()
    return server


@pytest.fixture
def server(sock_path, recorder):
    srv = start_server(sock_path, recorder)
    yield srv
    recorder.release.set()
    srv.stop()


@pytest.fixture
def agent(sock_path):
    pool = connections.AgentConnections(sock_path)
    yield pool
    pool.close()


def wait_for(predicate, timeout=5.0) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate() and time.monotonic() < deadline:
        time.sleep(0.01)
    return predicate()


class ScriptedAgent:
    """A peer on the socket whose every connection runs ``script(conn, index)``; counts the
    requests it read whole."""

    def __init__(self, path, script):
        self.read = []
        self._script = script
        self._sock = socket.socket(socket.AF_UNIX)
        self._sock.bind(path)
        self._sock.listen(8)
        self._threads = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        index = 0
        while True:
            try:
                conn, _ = self._sock.accept()
            except OSError:
                return
            thread = threading.Thread(target=self._script, args=(self, conn, index),
                                      daemon=True)
            thread.start()
            index += 1

    def read_request(self, conn) -> dict:
        request = protocol.read_frame(conn, time.monotonic() + 5)
        self.read.append(request)
        return request

    def close(self):
        self._sock.close()


@pytest.fixture
def scripted(sock_path):
    os.makedirs(os.path.dirname(sock_path))
    made = []

    def make(script):
        made.append(ScriptedAgent(sock_path, script))
        return made[-1]

    yield make
    for peer in made:
        peer.close()


def reply(**extra) -> dict:
    return {"v": protocol.VERSION, "status": protocol.CAPTURED, **extra}


# -- reuse ---------------------------------------------------------------------------------

def test_one_connection_serves_request_after_request(server, recorder, agent):
    for _ in range(5):
        assert agent.request(delete_start(), 2.0)["status"] == protocol.CAPTURED
    assert len(recorder.triggers) == 5
    assert server.counters.get("hook.connections") == 1  # one connect, one accept, one thread
    assert agent.idle() == 1


def test_every_reply_says_how_long_the_agent_keeps_the_connection(sock_path, recorder):
    srv = start_server(sock_path, recorder, idle_timeout=42.0)
    try:
        assert protocol.request(sock_path, delete_start(), 2.0)[protocol.KEEP] == 42.0
    finally:
        srv.stop()


def test_concurrent_requests_never_share_a_connection(scripted, sock_path):
    def echo(peer, conn, _):  # answers each request with its own number, after a while
        with conn:
            while True:
                try:
                    request = peer.read_request(conn)
                except protocol.Closed:
                    return
                time.sleep(random.uniform(0, 0.005))
                protocol.send_frame(conn, reply(n=request["n"], keep=60.0),
                                    time.monotonic() + 5)

    scripted(echo)
    pool = connections.AgentConnections(sock_path, max_idle=2)
    mismatched = []

    def worker(first):
        for n in range(first, first + 25):
            answer = pool.request({"v": protocol.VERSION, "n": n}, 5.0)
            if answer["n"] != n:
                mismatched.append((n, answer["n"]))

    workers = [threading.Thread(target=worker, args=(100 * i,)) for i in range(6)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(30)
    assert mismatched == [] and pool.idle() <= 2  # the rest were closed, not kept
    pool.close()


def test_idle_connections_are_taken_last_returned_first(agent):
    (older, _o), (newer, _n) = socket.socketpair(), socket.socketpair()
    agent._give_back(older, 60.0)
    agent._give_back(newer, 60.0)
    assert agent._take() is newer and agent._take() is older and agent._take() is None


# -- failures drop the connection ------------------------------------------------------------

def test_a_timed_out_request_drops_its_connection_and_the_late_answer(server, recorder,
                                                                      agent):
    agent.request(delete_start(), 2.0)  # a kept connection
    recorder.release.clear()
    late = str(uuid.uuid4())
    with pytest.raises(socket.timeout):
        agent.request(delete_start(late), 0.2)
    assert agent.idle() == 0  # dropped, not given back
    recorder.release.set()
    assert wait_for(lambda: server.counters.get("hook.late_replies") == 1)
    recorder.outcome = Outcome.NOT_NOVA  # the next answer differs from the late one
    assert agent.request(delete_start(), 2.0)["status"] == protocol.IGNORED


def test_a_stale_connection_of_a_restarted_agent_is_not_used(sock_path, recorder, agent):
    first = start_server(sock_path, recorder)
    agent.request(delete_start(), 2.0)
    first.stop()
    second_recorder = TriggerRecorder()
    second = start_server(sock_path, second_recorder)
    try:
        instance = str(uuid.uuid4())
        assert agent.request(delete_start(instance), 2.0)["status"] == protocol.CAPTURED
        assert [t.instance_id for t in second_recorder.triggers] == [instance]
        assert len(recorder.triggers) == 1
    finally:
        second.stop()


def _answer_once_then(after_first):
    """A script: the first connection answers one request with keep, then runs
    ``after_first(peer, conn)``; later connections answer every request."""
    def script(peer, conn, index):
        with conn:
            peer.read_request(conn)
            protocol.send_frame(conn, reply(connection=index, keep=60.0),
                                time.monotonic() + 5)
            if index == 0:
                after_first(peer, conn)
                return
            while True:
                try:
                    peer.read_request(conn)
                except protocol.Closed:
                    return
                protocol.send_frame(conn, reply(connection=index, keep=60.0),
                                    time.monotonic() + 5)
    return script


def test_a_request_the_agent_closed_unread_is_sent_again_once(scripted, sock_path, agent,
                                                             monkeypatch):
    def close_unread(peer, conn):  # closes with the next request in its buffer: ECONNRESET
        socket.socket.recv(conn, 1, socket.MSG_PEEK)
    peer = scripted(_answer_once_then(close_unread))
    agent.request({"v": 1, "n": 1}, 2.0)
    answer = agent.request({"v": 1, "n": 2}, 2.0)
    assert answer["connection"] == 1  # answered on a new connection
    assert [r["n"] for r in peer.read] == [1, 2]  # read once: the first never read it


def test_a_kept_connection_closed_after_the_check_is_replaced(scripted, sock_path, agent,
                                                              monkeypatch):
    closed = threading.Event()

    def close_at_once(peer, conn):
        closed.set()
    peer = scripted(_answer_once_then(close_at_once))
    agent.request({"v": 1, "n": 1}, 2.0)
    assert closed.wait(5)
    time.sleep(0.05)
    monkeypatch.setattr(connections, "_open", lambda sock: True)  # the check came too early
    assert agent.request({"v": 1, "n": 2}, 2.0)["connection"] == 1  # EPIPE: sent again
    assert [r["n"] for r in peer.read] == [1, 2]


def test_a_request_the_agent_read_is_never_sent_twice(scripted, sock_path, agent):
    def read_then_close(peer, conn):  # reads the request whole, then dies without answering
        peer.read_request(conn)
    peer = scripted(_answer_once_then(read_then_close))
    agent.request({"v": 1, "n": 1}, 2.0)
    with pytest.raises(protocol.ProtocolError):
        agent.request({"v": 1, "n": 2}, 2.0)
    assert [r["n"] for r in peer.read] == [1, 2]  # no second copy of 2
    assert agent.idle() == 0


def test_an_agent_that_closes_after_each_answer_gets_a_connection_each(scripted, sock_path,
                                                                        agent):
    def before_keep(peer, conn, index):  # the agent before keep-alive: no KEEP, then close
        with conn:
            peer.read_request(conn)
            protocol.send_frame(conn, reply(connection=index), time.monotonic() + 5)

    scripted(before_keep)
    assert [agent.request({"v": 1}, 2.0)["connection"] for _ in range(3)] == [0, 1, 2]
    assert agent.idle() == 0


def test_a_connection_is_retired_before_the_agent_closes_it_for_idleness(sock_path, recorder):
    now = [0.0]
    srv = start_server(sock_path, recorder, idle_timeout=60.0)
    pool = connections.AgentConnections(sock_path, clock=lambda: now[0])
    try:
        pool.request(delete_start(), 2.0)
        now[0] = 60.0 - connections.KEEP_MARGIN + 0.1  # still open, but too close to closing
        pool.request(delete_start(), 2.0)
        assert srv.counters.get("hook.connections") == 2
    finally:
        pool.close()
        srv.stop()


# -- the agent's side ----------------------------------------------------------------------

def test_a_driver_of_before_keep_alive_is_served(server, recorder):
    for _ in range(3):  # one request per connection, then it closes
        assert protocol.request(server.path, delete_start(), 2.0)["status"] == protocol.CAPTURED
    assert len(recorder.triggers) == 3
    assert wait_for(lambda: server._in_flight == 0)  # no thread left behind


def test_an_idle_connection_is_closed_and_frees_its_slot(sock_path, recorder):
    srv = start_server(sock_path, recorder, idle_timeout=0.2, max_connections=1)
    pool = connections.AgentConnections(sock_path)
    try:
        pool.request(delete_start(), 2.0)
        assert srv._in_flight == 1  # kept: it holds its slot meanwhile
        assert wait_for(lambda: srv._in_flight == 0)
        assert pool.request(delete_start(), 2.0)["status"] == protocol.CAPTURED
    finally:
        pool.close()
        srv.stop()


def test_stop_ends_kept_connections_at_once(sock_path, recorder, caplog):
    srv = start_server(sock_path, recorder)
    pools = [connections.AgentConnections(sock_path) for _ in range(3)]
    for pool in pools:
        pool.request(delete_start(), 2.0)
    started = time.monotonic()
    srv.stop()
    assert time.monotonic() - started < hook_server.STOP_TIMEOUT - 0.5  # not left to time out
    assert srv._in_flight == 0 and "still in hand" not in caplog.text
    with pytest.raises(OSError):  # and the driver finds no agent, without waiting
        pools[0].request(delete_start(), 2.0)
    for pool in pools:
        pool.close()


def test_a_busy_agent_still_answers_busy_at_once(sock_path, recorder):
    srv = start_server(sock_path, recorder, max_connections=1)
    pool = connections.AgentConnections(sock_path)
    try:
        pool.request(delete_start(), 2.0)  # kept idle: the one slot is taken
        started = time.monotonic()
        with socket.socket(socket.AF_UNIX) as other:  # answered before it even asks
            other.connect(sock_path)
            assert protocol.read_frame(other, started + 2)["status"] == protocol.BUSY
        assert time.monotonic() - started < 1.5  # not after the idle one's 300 s
        assert pool.request(delete_start(), 2.0)["status"] == protocol.CAPTURED
    finally:
        pool.close()
        srv.stop()


@pytest.mark.allow_error_logs
def test_nova_is_answered_as_soon_as_the_core_knows_the_outcome(sock_path, agent):
    after_the_answer = threading.Event()

    def core(trigger, answer=None):  # answers, then goes on (waking the senders, ...)
        answer(Outcome.FINAL)
        after_the_answer.wait(10)
        raise RuntimeError("what follows the answer failed")

    srv = hook_server.HookServer(sock_path, host=HOST, on_trigger=core, group="",
                                 clock=lambda: NOW)
    srv.start()
    try:
        assert agent.request(delete_start(), 2.0)["outcome"] == "final"  # while core runs
        after_the_answer.set()
        assert wait_for(lambda: srv.counters.get("hook.handler_errors") == 1)
        after_the_answer.clear()
        threading.Timer(0.2, after_the_answer.set).start()
        answer = agent.request(delete_start(), 2.0)  # the same connection: no second frame
        assert answer["outcome"] == "final" and srv.counters.get("hook.connections") == 1
    finally:
        after_the_answer.set()
        srv.stop()


def test_the_driver_objects_of_one_process_share_the_connections(sock_path):
    assert connections.shared(sock_path) is connections.shared(sock_path)
