"""A configuration with a known telemetry secret and a signed delete.samples notification, for
the conduit and verifier tests."""
import datetime

from oslo_config import cfg

from lifecycle_stats import opts
from lifecycle_stats.publishing import payloads
from lifecycle_stats.records import StopAnnouncement
from tests.support.fakes import AT, UUID, make_info, make_reading

SECRET = "conduit-secret"


def conf_with(**groups):
    conf = cfg.ConfigOpts()
    opts.register_all(conf)
    conf([], project="lifecycle-stats-test")
    conf.set_override("telemetry_secret", SECRET, group="publisher")
    for group, values in groups.items():
        for name, value in values.items():
            conf.set_override(name, value, group=group)
    return conf


def notification(kind=payloads.FINAL):
    trigger = StopAnnouncement(instance_id=UUID, event_type="compute.instance.delete.start",
                            host="cmp1", received_at=AT)
    reading = make_reading() if kind != payloads.UNAVAILABLE else None
    return payloads.delete_samples(kind=kind, trigger=trigger, info=make_info(),
                                   reading=reading, host="cmp1",
                                   publisher_id="lifecycle-stats.cmp1",
                                   now=AT + datetime.timedelta(seconds=1),
                                   telemetry_secret=SECRET)


