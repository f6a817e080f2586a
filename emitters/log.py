"""Conduit that writes each notification to the agent's log (entry point `log`)."""
from __future__ import annotations

import json
import logging

from lifecycle_stats.interfaces import Conduit
from lifecycle_stats.records import Notification

LOG = logging.getLogger(__name__)


class LogConduit(Conduit):

    def __init__(self, conf=None) -> None:
        pass

    def emit(self, notification: Notification) -> None:
        LOG.info("%s %s %s", notification.event_type, notification.message_id,
                 json.dumps(dict(notification.payload), sort_keys=True, default=str))
