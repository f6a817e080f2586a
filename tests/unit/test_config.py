"""The shipped sample config is generated, never hand-edited: fail when it is stale."""
import pathlib
import subprocess
import sys

import pytest
from oslo_config import cfg

from lifecycle_stats import opts

ROOT = pathlib.Path(__file__).resolve().parents[2]
SAMPLES = {  # generator config -> the sample it writes
    "lifecycle-stats.conf": ROOT / "etc" / "lifecycle-stats" / "lifecycle-stats.conf.sample",
    "nova-driver.conf": ROOT / "etc" / "nova" / "nova.conf.lifecycle-stats.sample",
    "lifecycle-stats-router.conf":
        ROOT / "etc" / "lifecycle-stats" / "lifecycle-stats-router.conf.sample",
}


@pytest.mark.parametrize("generator_conf", sorted(SAMPLES))
def test_sample_config_is_up_to_date(tmp_path, generator_conf):
    fresh = tmp_path / "fresh.conf"
    generator = pathlib.Path(sys.executable).with_name("oslo-config-generator")
    subprocess.run([str(generator), "--config-file",
                    str(ROOT / "etc" / "oslo-config-generator" / generator_conf),
                    "--output-file", str(fresh)], check=True, cwd=ROOT, capture_output=True)
    sample = SAMPLES[generator_conf]
    assert fresh.read_text() == sample.read_text(), (
        f"{sample.relative_to(ROOT)} is stale: regenerate it with "
        f"`.venv/bin/oslo-config-generator --config-file "
        f"etc/oslo-config-generator/{generator_conf}`")


@pytest.mark.parametrize("group,name,default", [
    ("DEFAULT", "state_path", "/var/lib/lifecycle-stats"),
    ("libvirt", "uri", "qemu:///system"),
    ("notification_listener", "exchange", "nova"),
    ("poller", "interval", 60.0),
    ("usage", "audit_period", "hour"),
    ("usage", "enrich_nova_exists", False),
])
def test_operator_facing_option_names_are_stable(group, name, default):
    conf = cfg.ConfigOpts()
    opts.register_all(conf)
    conf([])
    section = conf if group == "DEFAULT" else conf[group]
    assert section[name] == default


def test_host_defaults_to_this_machines_hostname():
    import socket

    conf = cfg.ConfigOpts()
    opts.register_all(conf)
    conf([])
    assert conf.host == socket.gethostname()


def test_a_bad_value_names_the_option_and_the_value(tmp_path):
    bad = tmp_path / "bad.conf"
    bad.write_text("[poller]\ninterval = soon\n")
    conf = cfg.ConfigOpts()
    opts.register_all(conf)
    conf(["--config-file", str(bad)])
    with pytest.raises(cfg.ConfigFileValueError, match="soon"):
        conf.poller.interval


@pytest.mark.parametrize("values, option", [
    ("audit_period = fortnight", r"\[usage\] audit_period"),
    ("audit_period = month@31", r"\[usage\] audit_period"),
    ("audit_period = year\nretention_days = 62", r"\[usage\] retention_days"),
])
def test_bad_usage_settings_name_the_option(tmp_path, values, option):
    from lifecycle_stats.usage import closer as period_closer
    from lifecycle_stats.exceptions import ConfigError

    bad = tmp_path / "bad.conf"
    bad.write_text(f"[usage]\n{values}\n")
    conf = cfg.ConfigOpts()
    opts.register_all(conf)
    conf(["--config-file", str(bad)])
    with pytest.raises(ConfigError, match=option):
        period_closer.settings(conf["usage"])


def test_each_option_group_is_defined_once_by_the_module_that_owns_it():
    """opts.list_opts names every group once, and each group's options are one module's own
    OPTS list (not a mix assembled there): that module is where to add an option."""
    from lifecycle_stats import opts

    listed = opts.list_opts()  # imports every module that owns a group
    groups = [group for group, _ in listed]
    assert len(groups) == len(set(groups))
    owners = {id(module.OPTS): name for name, module in list(sys.modules.items())
              if name.startswith("lifecycle_stats.")
              and isinstance(getattr(module, "OPTS", None), list)}
    assert [group for group, options in listed if id(options) not in owners] == []
