"""metrics.py + metrics_export.py: the exposition built from Counters and a snapshot."""
import ast
import os
import pathlib
import re
import stat
import urllib.request

import pytest
from oslo_config import cfg
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from lifecycle_stats.operations import exposition as metrics_export, metrics
from lifecycle_stats.counters import Counters
from lifecycle_stats.exceptions import ConfigError
from tests.support.fakes import Clock


def snapshot_of(counters, **extra):
    snap = {"host": "h1", "instances": 3, "counters": counters.snapshot(),
            "connections": {"libvirt_flush": "connected", "libvirt_events": "disconnected"},
            "spool": {"depth": 4, "oldest_age_seconds": 12.5, "by_conduit": {
                "messagingv2": {"pending": 4, "oldest_age_seconds": 12.5},
                "log": {"pending": 0, "oldest_age_seconds": None}}}}
    snap.update(extra)
    return snap


def scrape(counters, clock=None, snapshot=None):
    """{(sample name, frozenset(labels)): value} as a Prometheus server would parse it."""
    collector = metrics.AgentCollector(lambda: snapshot or snapshot_of(counters), counters,
                                       clock=clock or Clock(1000.0))
    text = generate_latest(metrics_export.make_registry(collector, process=False)).decode()
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return samples


def test_counters_become_conventional_families_without_instance_labels():
    clock = Clock(100.0)
    counters = Counters(clock=clock)
    for name, by in (("flush.final", 5), ("flush.last_known", 1), ("bus.triggers.legacy", 4),
                     ("bus.rejected", 2), ("metadata.malformed", 1),
                     ("sender.messagingv2.sent", 3), ("sender.messagingv2.retries", 7)):
        counters.incr(name, by)
    got = scrape(counters)
    assert got[("lifecycle_stats_captures_total", frozenset({("kind", "final")}))] == 5
    assert got[("lifecycle_stats_captures_total", frozenset({("kind", "last_known")}))] == 1
    assert got[("lifecycle_stats_captures_total", frozenset({("kind", "unavailable")}))] == 0
    assert got[("lifecycle_stats_bus_triggers_total", frozenset({("format", "legacy")}))] == 4
    assert got[("lifecycle_stats_bus_rejected_total", frozenset())] == 2
    assert got[("lifecycle_stats_metadata_malformed_total", frozenset())] == 1
    conduit = frozenset({("conduit", "messagingv2")})
    assert got[("lifecycle_stats_conduit_sent_total", conduit)] == 3
    assert got[("lifecycle_stats_conduit_retries_total", conduit)] == 7
    assert got[("lifecycle_stats_conduit_sent_total", frozenset({("conduit", "log")}))] == 0
    for name, labels in got:
        assert name.startswith("lifecycle_stats_")
        assert {key for key, _ in labels} <= {"kind", "format", "conduit", "connection",
                                              "outcome", "le", "version", "python",
                                              "action", "source"}


def test_spool_connections_and_build_info():
    counters = Counters()
    got = scrape(counters)
    assert got[("lifecycle_stats_spool_records", frozenset())] == 4
    assert got[("lifecycle_stats_spool_oldest_record_age_seconds", frozenset())] == 12.5
    assert got[("lifecycle_stats_conduit_pending_records",
                frozenset({("conduit", "messagingv2")}))] == 4
    assert got[("lifecycle_stats_conduit_oldest_pending_age_seconds",
                frozenset({("conduit", "log")}))] == 0.0
    assert got[("lifecycle_stats_connection_up",
                frozenset({("connection", "libvirt_flush")}))] == 1.0
    assert got[("lifecycle_stats_connection_up",
                frozenset({("connection", "libvirt_events")}))] == 0.0
    assert got[("lifecycle_stats_instances", frozenset())] == 3
    info = [labels for name, labels in got if name == "lifecycle_stats_build_info"]
    assert len(info) == 1 and ("version", metrics.version()) in info[0]


def test_conduit_up_follows_the_latest_attempt():
    clock = Clock(10.0)
    counters = Counters(clock=clock)
    conduit = frozenset({("conduit", "messagingv2")})
    assert scrape(counters)[("lifecycle_stats_conduit_up", conduit)] == 1.0  # no evidence
    counters.incr("sender.messagingv2.retries")
    assert scrape(counters)[("lifecycle_stats_conduit_up", conduit)] == 0.0
    clock.now = 11.0
    counters.incr("sender.messagingv2.sent")
    assert scrape(counters)[("lifecycle_stats_conduit_up", conduit)] == 1.0


def test_last_successful_poll_is_zero_and_its_age_counts_from_start_until_a_poll():
    clock = Clock(50.0)
    counters = Counters(clock=clock)
    collector = metrics.AgentCollector(lambda: snapshot_of(counters), counters, clock=clock)
    clock.now = 80.0

    def got():
        text = generate_latest(metrics_export.make_registry(collector, process=False)).decode()
        return {s.name: s.value for f in text_string_to_metric_families(text)
                for s in f.samples if "last_successful_poll" in s.name}

    assert got() == {"lifecycle_stats_last_successful_poll_age_seconds": 30.0,
                     "lifecycle_stats_last_successful_poll_timestamp_seconds": 0.0}
    counters.incr("poller.polls")
    clock.now = 87.5
    assert got() == {"lifecycle_stats_last_successful_poll_age_seconds": 7.5,
                     "lifecycle_stats_last_successful_poll_timestamp_seconds": 80.0}


class Outcome:
    def __init__(self, value):
        self.value = value


def test_timed_handler_observes_duration_by_outcome_and_errors():
    counters = Counters()
    ticks = iter([0.0, 0.004, 1.0, 1.2, 2.0, 2.03])
    results = iter([Outcome("final"), Outcome("duplicate")])

    def handle(trigger):
        if trigger == "boom":
            raise RuntimeError("flush failed")
        return next(results)

    timed = metrics.timed(handle, counters, clock=lambda: next(ticks))
    assert timed("t1").value == "final"
    assert timed("t2").value == "duplicate"
    with pytest.raises(RuntimeError):
        timed("boom")
    got = scrape(counters)
    final = ("outcome", "final")
    assert got[("lifecycle_stats_flush_duration_seconds_bucket",
                frozenset({final, ("le", "0.005")}))] == 1
    assert got[("lifecycle_stats_flush_duration_seconds_count", frozenset({final}))] == 1
    dup = frozenset({("outcome", "duplicate"), ("le", "0.25")})
    assert got[("lifecycle_stats_flush_duration_seconds_bucket", dup)] == 1
    assert got[("lifecycle_stats_flush_duration_seconds_bucket",
                frozenset({("outcome", "duplicate"), ("le", "0.1")}))] == 0
    assert got[("lifecycle_stats_flush_duration_seconds_sum",
                frozenset({("outcome", "error")}))] == pytest.approx(0.03)


def conf_with(**values):
    conf = cfg.ConfigOpts()
    metrics_export.register_opts(conf)
    conf([], project="lifecycle-stats-test", default_config_files=[])
    for name, value in values.items():
        conf.set_override(name, value, group="metrics")
    return conf


def registry_for(counters):
    return metrics_export.make_registry(
        metrics.AgentCollector(lambda: snapshot_of(counters), counters))


def test_endpoint_serves_metrics_on_loopback_and_stops():
    counters = Counters()
    counters.incr("flush.final", 2)
    exporter = metrics_export.MetricsExporter(conf_with(port=free_port()),
                                              registry_for(counters))
    exporter.start()
    try:
        host, port = exporter.address
        assert host == "127.0.0.1"
        body = urllib.request.urlopen(f"http://{host}:{port}/metrics", timeout=5).read().decode()
        assert 'lifecycle_stats_captures_total{kind="final"} 2.0' in body
        assert "lifecycle_stats_process_cpu_seconds_total" in body
    finally:
        exporter.stop()
    with pytest.raises(OSError):
        urllib.request.urlopen(f"http://{host}:{port}/metrics", timeout=2)


def test_port_zero_means_off_and_a_taken_port_names_the_option():
    counters = Counters()
    off = metrics_export.MetricsExporter(conf_with(port=0), registry_for(counters))
    off.start()
    assert off.address is None
    first = metrics_export.MetricsExporter(conf_with(port=free_port()), registry_for(counters))
    first.start()
    try:
        clash = metrics_export.MetricsExporter(conf_with(port=first.address[1]),
                                               registry_for(counters))
        with pytest.raises(ConfigError, match=r"\[metrics\] listen/port"):
            clash.start()
    finally:
        first.stop()


def test_textfile_is_atomic_and_readable_by_node_exporter(tmp_path):
    counters = Counters()
    counters.incr("flush.unavailable")
    path = tmp_path / "lifecycle_stats.prom"
    exporter = metrics_export.MetricsExporter(conf_with(textfile=str(path)),
                                              registry_for(counters))
    old_umask = os.umask(0o077)
    try:
        exporter.write_textfile()
    finally:
        os.umask(old_umask)
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    assert 'lifecycle_stats_captures_total{kind="unavailable"} 1.0' in path.read_text()
    assert [p.name for p in tmp_path.iterdir()] == ["lifecycle_stats.prom"]


def test_an_unwritable_textfile_only_warns(tmp_path, caplog):
    path = tmp_path / "missing-dir" / "lifecycle_stats.prom"
    exporter = metrics_export.MetricsExporter(conf_with(textfile=str(path)),
                                              registry_for(Counters()))
    exporter.write_textfile()
    assert not path.exists()
    assert f"[metrics] textfile {path} not written" in caplog.text


def free_port():
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def families(got):
    return {name for name, _ in got}


def test_label_values_are_labels_not_parts_of_names():
    """Regression: sender_<conduit>_errors_total, flush_action_<action>_total and
    usage_exists_<source>_total were one family per value."""
    counters = Counters()
    for name in ("sender.messagingv2.errors", "sender.log.rejected", "flush.action.delete",
                 "flush.action.shelve", "hook.triggers.delete", "bus.audits.versioned",
                 "usage.exists.nova_audit"):
        counters.incr(name)
    got = scrape(counters)
    assert got[("lifecycle_stats_conduit_errors_total",
                frozenset({("conduit", "messagingv2")}))] == 1
    assert got[("lifecycle_stats_conduit_rejected_total", frozenset({("conduit", "log")}))] == 1
    assert got[("lifecycle_stats_closing_reads_total", frozenset({("action", "shelve")}))] == 1
    assert got[("lifecycle_stats_hook_triggers_total", frozenset({("action", "delete")}))] == 1
    assert got[("lifecycle_stats_bus_audits_total", frozenset({("format", "versioned")}))] == 1
    assert got[("lifecycle_stats_usage_exists_total",
                frozenset({("source", "nova_audit")}))] == 1
    for name in families(got):  # no family named after a conduit, an action or a source
        for value in ("messagingv2", "delete", "shelve", "nova_audit", "versioned"):
            assert f"_{value}_" not in name, name


def test_every_family_is_there_from_the_first_scrape_at_zero():
    got = scrape(Counters())
    for family, known in metrics.KNOWN_LABELS.items():
        values = ["messagingv2", "log"] if known is metrics.CONDUITS else known
        label = next(label for _, f, label, _ in metrics.LABELLED if f == family)
        for value in values:
            assert got[(f"lifecycle_stats_{family}_total", frozenset({(label, value)}))] == 0
    for counter in metrics.KNOWN_COUNTERS:
        assert got[(metrics.metric_name(counter), frozenset())] == 0
    for outcome in metrics.FLUSH_OUTCOMES:
        assert got[("lifecycle_stats_flush_duration_seconds_count",
                    frozenset({("outcome", outcome)}))] == 0
    # A scrape after events has exactly the same families: nothing appears later.
    busy = Counters()
    for name in ("flush.final", "bus.rejected", "sender.log.errors", "usage.exists.deleted",
                 "poller.polls"):
        busy.incr(name)
    busy.observe("flush.duration.final", 0.01)
    assert families(scrape(busy)) == families(got)


def test_the_known_actions_are_the_hook_protocol_s():
    from lifecycle_stats.listeners.nova.protocol import ACTION_EVENTS

    assert metrics.ACTIONS == tuple(ACTION_EVENTS)


AGENT_CODE = ("lifecycle_stats", "listeners", "emitters")
NOT_THE_AGENT = ("replay", "testing", "router")  # their counters are not the agent's
NOT_COUNTERS = {"flush.duration", "spool.sqlite", "status.json", "usage.sqlite"}
COUNTER_LIKE = re.compile(r"^(bus|events|flush|hook|inspector|libvirt|metadata|nova_waiting|poller|publication|spool|"
                          r"status|usage|sender)\.[a-z_]+(\.[a-z_]+)?$")


def counter_names_in_the_agent_code():
    """Counter names the agent's code spells: literals, f-strings and "prefix." + x with
    the variable part as `x`."""
    root = pathlib.Path(metrics.__file__).resolve().parents[2]
    names = set()
    for top in AGENT_CODE:
        for path in (root / top).rglob("*.py"):
            if set(path.relative_to(root).parts) & set(NOT_THE_AGENT) or \
                    path.stem in NOT_THE_AGENT:
                continue
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.JoinedStr):
                    text = "".join(v.value if isinstance(v, ast.Constant) else "x"
                                   for v in node.values)
                elif isinstance(node, ast.BinOp) and isinstance(node.left, ast.Constant) \
                        and isinstance(node.left.value, str) and node.left.value.endswith("."):
                    text = node.left.value + "x"
                elif isinstance(node, ast.Constant) and isinstance(node.value, str):
                    text = node.value
                else:
                    continue
                if COUNTER_LIKE.match(text) and text not in NOT_COUNTERS:
                    names.add(text)
    return names


def test_every_counter_the_agent_counts_is_declared_so_it_starts_at_zero():
    from lifecycle_stats.interfaces import Outcome

    names = counter_names_in_the_agent_code()
    # capture/flush.py: f"flush.{outcome.value}" for a deletion's outcomes (a duplicate counts
    # as flush.duplicates; read and missed are other stops', counted by closing_reads.py)
    names.remove("flush.x")
    names |= {f"flush.{o.value}" for o in Outcome
              if o not in (Outcome.DUPLICATE, Outcome.READ, Outcome.MISSED)}
    assert "sender.x.errors" in names and "bus.rejected" in names  # the scan finds them
    undeclared = {name for name in names if name not in metrics.KNOWN_COUNTERS
                  and not any(pattern.match(name) for pattern, *_ in metrics.LABELLED)}
    assert not undeclared, f"add to metrics.KNOWN_COUNTERS or LABELLED: {sorted(undeclared)}"
    assert set(metrics.KNOWN_COUNTERS) <= names  # no stale declaration
