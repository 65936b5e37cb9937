"""Fixtures shared by conntrace's tests."""

from __future__ import annotations

import gc
import warnings
from collections.abc import Iterator
from typing import Any

import pytest
import structlog
from django.db import connections

import conntrace
from conntrace import conf, events, fork_reports, process, records
from tests import pgserver


@pytest.fixture(autouse=True)
def conntrace_state() -> Iterator[None]:
    """Start every test installed, with an empty registry; restore the instrumentation afterwards."""
    was_installed = conntrace.is_installed()
    conntrace.install()
    process.flush_pending()
    records.registry.clear()
    events.reset_internal_errors()
    fork_reports.forget_repeats()  # each test's forks are reported afresh
    yield
    process.flush_pending()
    # A test may configure structlog; the next one starts from structlog's defaults again.
    structlog.reset_defaults()
    events.reset()
    if was_installed:
        conntrace.install()
    else:
        conntrace.uninstall()
    conf.reload()


@pytest.fixture
def captured() -> Iterator[list[dict[str, Any]]]:
    """Give the structlog events emitted during the test, as dicts.

    Connections left open by set-up are closed first, so only the test's own events show.
    """
    connections.close_all()
    process.flush_pending()
    with structlog.testing.capture_logs() as logs:
        yield logs


def named(logs: list[dict[str, Any]], event: str) -> list[dict[str, Any]]:
    """Return the captured events called ``event``."""
    return [entry for entry in logs if entry["event"] == event]


# On every event (tests/test_events.py checks them): left out where a test compares whole events.
STAMP = frozenset({"seq", "pid", "host"})


def unstamped(logs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Return the events without ``seq``, ``pid`` and ``host``."""
    return [{key: value for key, value in entry.items() if key not in STAMP} for entry in logs]


@pytest.fixture
def pg() -> pgserver.PostgresServer:
    """Give a handle on the test PostgreSQL server (psql as superuser, restart)."""
    return pgserver.server()


@pytest.fixture
def no_warnings() -> Iterator[None]:
    """Fail the test if any Python warning is issued."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        yield


@pytest.fixture
def conn_max_age() -> Iterator[Any]:
    """Give a setter for an alias's CONN_MAX_AGE, restored after the test.

    Django's wrappers share the settings dict, so a plain ``settings`` override would not reach them.
    """
    saved: dict[str, Any] = {}

    def set_max_age(seconds: Any, alias: str = "default") -> None:
        saved.setdefault(alias, connections[alias].settings_dict["CONN_MAX_AGE"])
        connections[alias].settings_dict["CONN_MAX_AGE"] = seconds

    yield set_max_age
    for alias, value in saved.items():
        connections[alias].settings_dict["CONN_MAX_AGE"] = value


def close_all_quietly() -> None:
    """Close every alias of this thread and collect garbage (test set-up helper)."""
    connections.close_all()
    gc.collect()


# The plugin's sample project is run by tests/test_pytest_plugin.py, with its own settings.
collect_ignore = ["plugin_sample"]
