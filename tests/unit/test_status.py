import datetime
import json
import os
import re
import stat

import pytest
from oslo_config import cfg

from lifecycle_stats import opts
from lifecycle_stats.cmd import status as status_cmd
from lifecycle_stats.operations import status
from lifecycle_stats.counters import Counters
from lifecycle_stats.records import Notification
from lifecycle_stats.publishing.spool import Spool
from tests.support.fakes import Clock

T0 = datetime.datetime(2026, 11, 21, 12, 0, 0, tzinfo=datetime.timezone.utc)


def note(n):
    return Notification("compute.instance.delete.samples", "INFO", "p", {"n": n}, f"msg-{n}",
                        "t")


@pytest.fixture
def clock():
    return Clock(T0)


@pytest.fixture
def agent(tmp_path, clock):
    """A spool with two records and a writer whose snapshot is what an agent would report."""
    counters = Counters()
    sp = Spool(str(tmp_path / "spool.sqlite"), conduits=["bus", "file"], clock=clock,
               counters=counters)
    sp.put(note(1), "final")
    clock.advance(10)
    sp.put(note(2), "periodic")
    sp.confirm(1, "file")

    def snapshot():
        return {"connections": {"libvirt": "connected", "bus": "disconnected"},
                "conduits": ["bus", "file"],
                "threads": {"poller": "alive", "sender-bus": "alive"},
                "counters": counters.snapshot(), "spool": status.spool_snapshot(sp)}

    writer = status.StatusWriter(str(tmp_path / "status.json"), snapshot, interval=5,
                                 clock=clock, host="h1")
    yield writer, sp
    sp.close()


def test_writer_writes_private_json_atomically(agent, tmp_path):
    writer, _ = agent
    writer.write()
    path = tmp_path / "status.json"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    doc = json.loads(path.read_text())
    assert doc["pid"] == os.getpid() and doc["host"] == "h1"
    assert doc["written_at"] == "2026-11-21T12:00:10.000000+00:00"
    assert doc["spool"] == {"depth": 2, "oldest_age_seconds": 10.0, "by_conduit": {
        "bus": {"pending": 2, "oldest_age_seconds": 10.0},
        "file": {"pending": 1, "oldest_age_seconds": 0.0}}}
    assert doc["counters"]["spool.put"] == 2
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []


def test_round_trip_running(agent, tmp_path, clock):
    writer, _ = agent
    writer.write()
    clock.advance(2)
    got = status_cmd.read_status(str(tmp_path), clock=clock)
    assert got["agent"] == "running"
    assert got["status_age_seconds"] == 2.0
    assert got["connections"] == {"libvirt": "connected", "bus": "disconnected"}
    assert got["spool"]["depth"] == 2
    assert got["spool"]["oldest_age_seconds"] == 12.0  # live, not the written 10.0
    assert got["spool"]["pending_by_conduit"] == {"bus": 2, "file": 1}
    assert got["problems"] == []


def test_stale_status_means_not_running(agent, tmp_path, clock):
    writer, _ = agent
    writer.write()
    clock.advance(16)  # > 3 intervals of 5 s
    got = status_cmd.read_status(str(tmp_path), clock=clock)
    assert got["agent"] == "not running"
    assert "not written for 16.0 s" in got["problems"][0]


def test_dead_pid_means_not_running_but_spool_is_live(agent, tmp_path, clock):
    writer, sp = agent
    writer.write()
    sp.close()
    clock.advance(60)
    got = status_cmd.read_status(str(tmp_path), clock=clock, pid_alive=lambda pid: False)
    assert got["agent"] == "not running"
    assert f"pid {os.getpid()} is gone" in got["problems"][0]
    assert got["spool"]["depth"] == 2
    assert got["spool"]["oldest_age_seconds"] == 70.0
    assert got["spool"]["by_tier"] == {"final": 1, "periodic": 1}


def test_nothing_there(tmp_path, clock):
    got = status_cmd.read_status(str(tmp_path), clock=clock)
    assert got["agent"] == "not running"
    assert got["spool"]["depth"] is None
    assert len(got["problems"]) == 2


def test_thread_writes_and_writes_once_more_at_stop(tmp_path, clock):
    calls = []

    def snapshot():
        calls.append(1)
        return {"connections": {}, "n": len(calls)}

    writer = status.StatusWriter(str(tmp_path / "status.json"), snapshot, interval=3600,
                                 clock=clock)
    writer.start()
    writer.stop(timeout=10)
    doc = json.loads((tmp_path / "status.json").read_text())
    assert doc["n"] == len(calls) == 2


@pytest.mark.allow_error_logs
def test_failing_snapshot_is_logged_not_fatal(tmp_path, caplog):
    def snapshot():
        raise RuntimeError("boom")

    writer = status.StatusWriter(str(tmp_path / "status.json"), snapshot, interval=1)
    writer.stop()
    assert "could not write the status file" in caplog.text
    assert not (tmp_path / "status.json").exists()


def test_main_prints_json_and_table(agent, tmp_path, capsys):
    writer, _ = agent
    writer.write()
    conf_file = tmp_path / "ls.conf"
    conf_file.write_text(f"[DEFAULT]\nstate_path = {tmp_path}\n")
    rc = status_cmd.main(["--config-file", str(conf_file), "--json"], conf=cfg.ConfigOpts())
    doc = json.loads(capsys.readouterr().out)
    assert doc["spool"]["depth"] == 2 and doc["host"] == "h1"
    assert rc == (0 if doc["agent"] == "running" else 1)
    status_cmd.main(["--config-file", str(conf_file)], conf=cfg.ConfigOpts())
    table = capsys.readouterr().out
    assert "spool:       depth 2" in table
    assert re.search(r"conduit: +file +pending 1\n", table)
    assert re.search(r"connection: +bus +disconnected\n", table)
    assert re.search(r"thread: +poller +alive\n", table)
    assert "last poll:   never" in table


def test_main_reads_the_agents_own_options_on_a_conf_that_already_has_them(tmp_path, capsys):
    conf = cfg.ConfigOpts()
    opts.register_all(conf)  # e.g. the agent's process: the same definitions, registered once
    conf.set_default("state_path", str(tmp_path))
    assert status_cmd.main(["--json"], conf=conf) == 1
    assert json.loads(capsys.readouterr().out)["agent"] == "not running"


def test_a_dead_thread_is_a_problem_while_the_agent_runs(agent, tmp_path, clock):
    writer, _ = agent
    writer._snapshot = lambda: {"threads": {"poller": "dead", "bus": "connecting"}}
    writer.write()
    got = status_cmd.read_status(str(tmp_path), clock=clock)
    assert got["agent"] == "running" and got["problems"] == ["thread poller is dead"]


@pytest.fixture
def real_agent(tmp_path):
    """The agent itself on libvirt's test driver and the in-memory bus, with two conduits."""
    import oslo_messaging

    from lifecycle_stats.agent import Agent
    from lifecycle_stats.cmd import demo
    from lifecycle_stats.emitters import memory

    conf = demo.build_conf(str(tmp_path))
    transport = oslo_messaging.get_notification_transport(conf, url="fake://")
    made = Agent(conf, emitters={"first": memory.MemoryConduit(conf),
                                 "second": memory.MemoryConduit(conf)},
                 listen_transport=transport)
    yield made
    made.stop(timeout=5)
    transport.cleanup()


def test_status_shows_pending_per_real_conduit_and_every_thread(real_agent, tmp_path):
    real_agent.spool.put(note(1), "final")
    real_agent.spool.put(note(2), "final")
    real_agent.spool.confirm(1, "first")
    real_agent.status.write()
    got = status_cmd.read_status(str(tmp_path))
    assert got["spool"]["pending_by_conduit"] == {"first": 1, "second": 2}
    assert set(got["threads"]) >= {"poller", "bus", "status-writer", "sender-first",
                                   "sender-second", "libvirt-events-worker",
                                   "libvirt-reconnect", "libvirt-event-loop"}
    assert got["threads"]["poller"] == "not started"
    real_agent.start()
    real_agent.poller.poll_logged()  # as the poller's thread does; the first poll may lag
    real_agent.status.write()
    got = status_cmd.read_status(str(tmp_path))
    assert {name: state for name, state in got["threads"].items() if state != "alive"} == {}
    assert got["last_poll_at"] is not None and got["problems"] == []
