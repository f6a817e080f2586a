"""The options that shape the core's work, as one plain record (the agent reads them from its
configuration, the replay player from the recording and the configuration, tests write them).
"""
from __future__ import annotations

import dataclasses

from oslo_config import cfg

from lifecycle_stats.publishing import signing

@dataclasses.dataclass(frozen=True)
class Retry:
    """How a delete capture that fails transiently is retried (`[flush]`)."""

    max_attempts: int = 10  # deliveries of one announcement before a read error gives up
    tries_per_attempt: int = 3  # in-process tries, with backoff, before a redelivery
    wait: float = 0.2  # seconds before the second try; doubles with each try
    max_wait: float = 2.0

    def __post_init__(self) -> None:
        if self.max_attempts < 1 or self.tries_per_attempt < 1:
            raise ValueError(f"max_attempts and tries_per_attempt must be >= 1, got "
                             f"{self.max_attempts}, {self.tries_per_attempt}")


@dataclasses.dataclass(frozen=True)
class Settings:
    """What the core publishes as, and how it retries and polls."""

    host: str  # nova-compute's host name
    publisher_id: str
    legacy_meters: bool = True  # [meters] legacy
    telemetry_secret: str = signing.CEILOMETER_DEFAULT_SECRET  # [publisher] telemetry_secret
    retry: Retry = Retry()
    poll_interval: float = 60.0  # [poller] interval
    publication_linger: float = 0.02  # [publication] linger

    @classmethod
    def for_host(cls, host: str, **overrides) -> "Settings":
        """Defaults as the agent's, publisher_id included (lifecycle-stats.<host>)."""
        return cls(host=host, publisher_id=f"lifecycle-stats.{host}", **overrides)

    @classmethod
    def from_conf(cls, conf: cfg.ConfigOpts) -> "Settings":
        flush = conf["flush"]  # capture.flush.OPTS
        return cls(host=conf.host, publisher_id=conf.publisher_id,
                   legacy_meters=conf.meters.legacy,
                   telemetry_secret=conf.publisher.telemetry_secret,
                   retry=Retry(max_attempts=flush.max_attempts,
                               tries_per_attempt=flush.tries_per_attempt,
                               wait=flush.retry_wait, max_wait=flush.retry_max_wait),
                   poll_interval=conf.poller.interval,
                   publication_linger=conf["publication"].linger)
