"""reload.py: SIGHUP's work — reopen log files, re-read mutable options, keep running values
when the file is broken."""
import logging

import pytest
from oslo_config import cfg

from lifecycle_stats.operations import reload


@pytest.fixture
def file_logger(tmp_path):
    logger = logging.getLogger("lst-reload-test")
    logger.propagate = False
    handler = logging.FileHandler(tmp_path / "agent.log")
    logger.addHandler(handler)
    yield logger, tmp_path / "agent.log"
    logger.removeHandler(handler)
    handler.close()


def test_reopen_continues_in_a_new_file_after_logrotate_moved_it(file_logger):
    logger, path = file_logger
    logger.error("before rotation")
    path.rename(path.with_suffix(".log.1"))  # logrotate without copytruncate
    logger.error("still in the moved file")
    assert reload.reopen_log_files(logger) == 1
    logger.error("after reopen")
    assert path.with_suffix(".log.1").read_text() == "before rotation\nstill in the moved file\n"
    assert path.read_text() == "after reopen\n"


def conf_from(path):
    conf = cfg.ConfigOpts()
    conf.register_opts([cfg.FloatOpt("interval", default=60.0, mutable=True),
                        cfg.StrOpt("pool", default="a")], group="poller")
    applied = []
    conf.register_mutate_hook(lambda c, fresh: applied.append((c.poller.interval, fresh)))
    conf(["--config-file", str(path)], project="lst-reload-test", default_config_files=[])
    return conf, applied


def test_reload_applies_mutable_options_and_keeps_immutable_ones(tmp_path):
    path = tmp_path / "agent.conf"
    path.write_text("[poller]\ninterval = 30\npool = a\n")
    conf, applied = conf_from(path)
    path.write_text("[poller]\ninterval = 5\npool = b\n")
    changed = reload.reload(conf)
    assert list(changed) == [("poller", "interval")]  # (old, new) as written in the file
    assert conf.poller.interval == 5.0 and conf.poller.pool == "a"
    assert applied and applied[-1][0] == 5.0  # the hook saw the new value


@pytest.mark.allow_error_logs
def test_a_broken_file_keeps_the_running_values(tmp_path, caplog):
    path = tmp_path / "agent.conf"
    path.write_text("[poller]\ninterval = 30\n")
    conf, _ = conf_from(path)
    path.write_text("[poller\ninterval = 5\n")
    assert reload.reload(conf) == {}
    assert conf.poller.interval == 30.0
    assert "config files not re-read" in caplog.text


class Periodic:
    """What the agent's hook drives: the poller's and the status writer's reschedule()."""

    def __init__(self, interval):
        self.interval = interval

    def reschedule(self, interval):
        self.interval = interval


@pytest.mark.allow_error_logs
def test_one_bad_mutable_value_keeps_every_running_value(tmp_path, caplog):
    """oslo.config installs the new values before the hooks run: the hook applied the poll
    interval, then failed on the status interval (below its minimum) while the log said the
    running values were kept, and the textfile path had switched too (found by review)."""
    import types

    from lifecycle_stats import opts
    from lifecycle_stats.agent import Agent
    from lifecycle_stats.operations import exposition

    path = tmp_path / "agent.conf"
    path.write_text("[DEFAULT]\nstatus_interval = 10\n[poller]\ninterval = 60\n")
    conf = cfg.ConfigOpts()
    opts.register_all(conf)
    exposition.register_opts(conf)
    conf(["--config-file", str(path)], project="lst-reload-test", default_config_files=[])
    agent = types.SimpleNamespace(poller=Periodic(60.0), status=Periodic(10.0),
                                  metrics=types.SimpleNamespace(textfile=None))
    conf.register_mutate_hook(lambda c, fresh: Agent._apply_mutable_options(agent, c, fresh))
    path.write_text("[DEFAULT]\nstatus_interval = 0.1\n[poller]\ninterval = 5\n"
                    f"[metrics]\ntextfile = {tmp_path / 'new.prom'}\n")
    reload.reload(conf)
    assert (agent.poller.interval, agent.status.interval, agent.metrics.textfile) == (
        60.0, 10.0, None)
    assert "running values kept" in caplog.text
    path.write_text("[DEFAULT]\nstatus_interval = 2\n[poller]\ninterval = 5\n"
                    f"[metrics]\ntextfile = {tmp_path / 'new.prom'}\n")
    reload.reload(conf)  # fixed: all of them at once
    assert (agent.poller.interval, agent.status.interval, agent.metrics.textfile) == (
        5.0, 2.0, str(tmp_path / "new.prom"))


def test_a_shortened_interval_counts_at_once_not_after_the_old_one(tmp_path):
    """The poller and the status writer slept out the old interval (60 s) before a reload's
    new one counted (found by review)."""
    import threading
    import time

    from lifecycle_stats.operations.status import StatusWriter

    writes = []
    writer = StatusWriter(str(tmp_path / "status.json"), lambda: {}, interval=60.0,
                          after_write=lambda: writes.append(time.monotonic()))
    writer.start()
    try:
        deadline = time.monotonic() + 5
        while not writes and time.monotonic() < deadline:
            time.sleep(0.01)
        writer.reschedule(0.2)
        while len(writes) < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert len(writes) >= 2, "the new interval waited for the old one"
    finally:
        writer.stop(5)
    assert not any(t.name == "status-writer" and t.is_alive() for t in threading.enumerate())
