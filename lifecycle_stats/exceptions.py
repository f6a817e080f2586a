"""The agent's exceptions. libvirt and oslo.messaging errors are translated into these at the
boundary where they occur, so callers never need to import either library to handle them."""


class LifecycleStatsError(Exception):
    """Base of every error this project raises on purpose."""


class ConfigError(LifecycleStatsError):
    """An option has a value the agent cannot work with; the message names both."""

    def __init__(self, option: str, value: object, reason: str):
        super().__init__(f"invalid value {value!r} for option {option}: {reason}")
        self.option = option
        self.value = value


class HypervisorError(LifecycleStatsError):
    """libvirt refused or failed a call."""


class ConnectionLost(HypervisorError):
    """The connection to libvirtd is gone; reconnecting may help."""


class DomainGone(HypervisorError):
    """The domain vanished (destroyed or undefined) while we were reading it. Normal."""

    def __init__(self, instance_id: str):
        super().__init__(f"domain {instance_id} no longer exists")
        self.instance_id = instance_id


class MetadataError(LifecycleStatsError):
    """A domain's nova metadata could not be used."""


class MetadataRejected(MetadataError):
    """The metadata XML is hostile (entity expansion, external entities, DTDs)."""


class MetadataMalformed(MetadataError):
    """The metadata XML is broken or lacks a required field."""


class RejectedMessage(LifecycleStatsError):
    """A notification from the bus that cannot be acted on (malformed, wrong shape)."""


class EmitError(LifecycleStatsError):
    """A conduit did not confirm delivery; the notification must be kept and retried."""


class BatchEmitError(EmitError):
    """emit_batch stopped at a notification it could not deliver; the `delivered` ones
    before it were confirmed."""

    def __init__(self, message: str, delivered: int) -> None:
        super().__init__(message)
        self.delivered = delivered


class CaptureDeferred(LifecycleStatsError):
    """A capture failed for a reason that may pass (database locked, disk full, libvirt
    unreachable): nothing was spooled, and the trigger must be delivered again."""


class ShuttingDown(LifecycleStatsError):
    """The agent is stopping: a trigger still in hand must not be acknowledged (it is
    redelivered to the next agent run), and nothing may be written to the closing spool."""
