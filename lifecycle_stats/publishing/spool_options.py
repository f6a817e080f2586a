"""The `[spool]` options: the spool's bound and how its senders retry and give up.

Defined here, once, and listed by opts.list_opts for the agent and the config sample; the
composition root hands the values to Spool and Sender.
"""
from __future__ import annotations

from oslo_config import cfg

GROUP = "spool"
OPTS = [
    cfg.IntOpt("max_records", default=100000, min=1,
               help="Bound of the on-disk spool (<state_path>/spool.sqlite). Over it, periodic "
                    "records are shed oldest-first; final samples are never shed."),
    cfg.FloatOpt("retry_initial_wait", default=0.5, min=0.001,
                 help="Seconds before the first retry of a notification a conduit refused; "
                      "doubles with each failure."),
    cfg.FloatOpt("retry_max_wait", default=30.0, min=0.001,
                 help="Longest wait between retries of one notification."),
    cfg.IntOpt("poison_probe_attempts", default=5, min=1,
               help="After this many failed attempts of one notification by one conduit, "
                    "try the next one once: if that is delivered, the failing one is poison "
                    "and moves to the spool's rejects table (for that conduit)."),
    cfg.FloatOpt("max_age_seconds", default=0.0, min=0.0,
                 help="Move a notification a conduit still cannot deliver at this age (seconds "
                      "since it was spooled) to the rejects table. 0: never (a long broker "
                      "outage must not discard billing data)."),
]
