"""Suite-wide test policy. Two things live here, both documented in doc/testing.md.

1. Required services. Integration fixtures call the `service_unavailable` fixture's function
   when libvirtd or RabbitMQ does not answer. In CI (CI=true), with
   LIFECYCLE_STATS_REQUIRE_SERVICES=1 or with `pytest --integration-required` that FAILS the
   test; elsewhere it skips with the reason. An integration tier must never go quietly green.

2. Logged errors fail tests. Every test runs with a handler on the `lifecycle_stats`,
   `listeners` and `emitters` loggers; any ERROR (or CRITICAL) record they emit during the test,
   its fixtures' set-up or teardown, from any thread, fails the test at teardown, so
   "logged and swallowed" cannot pass silently. A test that expects error logs opts out with
   `@pytest.mark.allow_error_logs` (or `pytestmark` for a module) and asserts them via caplog.
"""
from __future__ import annotations

import logging
import os

import pytest

WATCHED_LOGGERS = ("lifecycle_stats",)


def pytest_configure(config):
    # libvirt's event loop must be registered before the first connection of the process
    # opens (keepalive and close callbacks depend on it), whichever test opens one first.
    from lifecycle_stats.listeners import libvirt_events

    libvirt_events.ensure_event_loop()


def pytest_addoption(parser):
    parser.addoption(
        "--integration-required", action="store_true", default=False,
        help="fail (never skip) integration tests whose libvirtd/RabbitMQ is unavailable "
             "(also on with CI=true or LIFECYCLE_STATS_REQUIRE_SERVICES=1)",
    )


def services_required(config) -> bool:
    return (
        config.getoption("--integration-required")
        or os.environ.get("CI", "").lower() == "true"
        or os.environ.get("LIFECYCLE_STATS_REQUIRE_SERVICES") == "1"
    )


@pytest.fixture(scope="session")
def service_unavailable(pytestconfig):
    """A function(reason) that fails the test when services are required, else skips it."""
    required = services_required(pytestconfig)

    def unavailable(reason: str):
        if required:
            pytest.fail(f"required service unavailable: {reason}", pytrace=False)
        pytest.skip(f"service unavailable: {reason}")

    return unavailable


class _ErrorRecords(logging.Handler):
    def __init__(self):
        super().__init__(level=logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def emit(self, record):
        self.records.append(record)

    def describe(self) -> str:
        lines = []
        for rec in self.records:
            lines.append(f"{rec.levelname} {rec.name}: {rec.getMessage()}")
            if rec.exc_info and rec.exc_info[1] is not None:
                lines.append(f"    {type(rec.exc_info[1]).__name__}: {rec.exc_info[1]}")
        return "\n".join(lines)


@pytest.fixture(autouse=True)
def log_errors(request):
    """Fail the test if the project's loggers emitted ERROR records (see module docstring)."""
    handler = _ErrorRecords()
    loggers = [logging.getLogger(name) for name in WATCHED_LOGGERS]
    for logger in loggers:
        logger.addHandler(handler)
    try:
        yield handler
    finally:
        for logger in loggers:
            logger.removeHandler(handler)
    if handler.records and request.node.get_closest_marker("allow_error_logs") is None:
        pytest.fail(
            "the code logged errors (mark the test allow_error_logs if expected):\n"
            + handler.describe(),
            pytrace=False,
        )
