"""Load conduits by name from the `lifecycle_stats.emitters` entry points (stevedore)."""
from __future__ import annotations

from oslo_config import cfg
from stevedore import driver

from lifecycle_stats.exceptions import ConfigError
from lifecycle_stats.interfaces import Conduit

NAMESPACE = "lifecycle_stats.emitters"
DEFAULT_DRIVERS = ["messagingv2"]


def driver_names(conf: cfg.ConfigOpts) -> list[str]:
    """The conduits named by `[oslo_messaging_notifications] driver`; the agent exists to
    publish, so an empty list means messagingv2 rather than nothing."""
    return list(conf.oslo_messaging_notifications.driver) or list(DEFAULT_DRIVERS)


def load(conf: cfg.ConfigOpts, names: list[str]) -> dict[str, Conduit]:
    emitters = {}
    for name in names:
        try:
            manager = driver.DriverManager(NAMESPACE, name, invoke_on_load=True,
                                           invoke_args=(conf,))
        except Exception as exc:  # stevedore raises NoMatches or the plugin's own error
            raise ConfigError("[oslo_messaging_notifications] driver", name,
                              f"no usable conduit of that name ({exc})") from exc
        emitters[name] = manager.driver
    return emitters
