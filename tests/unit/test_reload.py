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
