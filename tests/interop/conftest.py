"""The interop tier reuses the integration tier's real services (libvirtd, RabbitMQ)."""
from tests.integration.conftest import guest_factory, libvirt_uri, rabbit_url  # noqa: F401
