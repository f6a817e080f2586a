"""The one interface every conduit implements."""
from __future__ import annotations

import abc

from lifecycle_stats.records import Notification


class Emitter(abc.ABC):
    """Publishes notifications through one conduit.

    emit() returns only when the conduit has confirmed the notification (the broker's publisher
    confirm, a flushed file, ...). On any failure it raises lifecycle_stats.exceptions.EmitError;
    the caller keeps the notification spooled and retries, so an emitter never retries or
    buffers on its own.
    """

    name = "base"

    @abc.abstractmethod
    def emit(self, notification: Notification) -> None:
        """Deliver one notification or raise EmitError."""

    def close(self) -> None:
        """Release connections; the default has none."""
