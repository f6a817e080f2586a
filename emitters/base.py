"""A convenience base for conduits: the interface itself is lifecycle_stats.interfaces.Conduit
(a core Protocol), so the core never imports this package."""
from __future__ import annotations

import abc

from lifecycle_stats.records import Notification


class Emitter(abc.ABC):
    """emit() returns once the conduit confirmed, or raises EmitError (see Conduit)."""

    @abc.abstractmethod
    def emit(self, notification: Notification) -> None:
        """Deliver one notification or raise EmitError."""

    def close(self) -> None:
        """Release connections; the default has none."""
