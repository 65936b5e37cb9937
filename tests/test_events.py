"""How conntrace talks to structlog: levels, logger name, and never configuring it."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import textwrap

import pytest
import structlog
from django.db import connection, connections

from conntrace import events
from conntrace.names import Event

pytestmark = [pytest.mark.django_db(transaction=True)]


def run_script(body: str) -> subprocess.CompletedProcess[str]:
    """Run ``body`` in a fresh interpreter with the test settings (structlog unconfigured)."""
    code = "import django; django.setup()\n" + textwrap.dedent(body)
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "tests.settings"}
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60)


def test_unconfigured_structlog_gets_no_debug_lines_but_does_get_warnings():
    result = run_script(
        """
        import structlog
        from django.db import connection, connections
        assert not structlog.is_configured()
        for _ in range(3):
            with connection.cursor() as cursor:
                cursor.execute("SELECT 1")
            connection.close()
        print("QUIET-UNTIL-HERE")
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
        connection.connection.close()
        connection.close()
        """
    )
    assert result.returncode == 0, result.stderr
    before, after = result.stdout.split("QUIET-UNTIL-HERE")
    assert before.strip() == ""
    assert "connection_double_close" in after
    assert "connection_opened" not in after


def test_importing_and_installing_does_not_configure_structlog_or_logging():
    result = run_script(
        """
        import logging, structlog
        import conntrace
        conntrace.install()
        assert not structlog.is_configured(), "structlog configured"
        assert logging.getLogger().handlers == [], logging.getLogger().handlers
        assert logging.getLogger("conntrace").handlers == []
        print("ok")
        """
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"


def test_filtering_logger_at_info_drops_debug_events_before_they_are_built():
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.INFO))
    try:
        events.reset()
        assert not events.enabled(logging.DEBUG)
        assert events.enabled(logging.WARNING)
    finally:
        structlog.reset_defaults()
        events.reset()


def test_stdlib_logger_level_is_respected(caplog):
    structlog.configure(
        wrapper_class=structlog.stdlib.BoundLogger,
        logger_factory=structlog.stdlib.LoggerFactory(),
        processors=[structlog.processors.JSONRenderer()],
    )
    try:
        events.reset()
        logging.getLogger("conntrace").setLevel(logging.WARNING)
        assert not events.enabled(logging.DEBUG)
        logging.getLogger("conntrace").setLevel(logging.DEBUG)
        assert events.enabled(logging.DEBUG)
        with caplog.at_level(logging.DEBUG, logger="conntrace"):
            connection.close()
            with connection.cursor() as cursor:
                cursor.execute("SELECT 1")
        assert any('"connection_opened"' in r.getMessage() and r.name == "conntrace" for r in caplog.records)
    finally:
        logging.getLogger("conntrace").setLevel(logging.NOTSET)
        structlog.reset_defaults()
        events.reset()


def test_logger_name_setting_names_the_logger(settings, caplog):
    structlog.configure(
        wrapper_class=structlog.stdlib.BoundLogger,
        logger_factory=structlog.stdlib.LoggerFactory(),
        processors=[structlog.processors.JSONRenderer()],
    )
    settings.CONNTRACE = {"LOGGER_NAME": "myapp.db"}
    try:
        with caplog.at_level(logging.DEBUG, logger="myapp.db"):
            connection.close()
            with connection.cursor() as cursor:
                cursor.execute("SELECT 1")
        assert [r.name for r in caplog.records if '"connection_opened"' in r.getMessage()] == ["myapp.db"]
    finally:
        structlog.reset_defaults()
        events.reset()


def test_redact_removes_configured_passwords_and_dsn_credentials():
    from tests import pgserver

    text = f"password={pgserver.APP_PASSWORD} postgres://u:hunter2@db/x {pgserver.APP_PASSWORD}"
    redacted = events.redact(text)
    assert pgserver.APP_PASSWORD not in redacted
    assert "hunter2" not in redacted
    assert redacted.count("***") == 3


def test_without_structlogs_private_config_the_level_gate_reads_the_public_one(monkeypatch):
    """structlog's ``_CONFIG`` is private: another release may not have it."""
    monkeypatch.setattr(events, "_CONFIG", None)
    events.reset()
    try:
        assert not events.enabled(logging.DEBUG)  # structlog's defaults: warnings only
        structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.DEBUG))
        assert events.enabled(logging.DEBUG)  # the change is seen without a reset
        structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.ERROR))
        assert not events.enabled(logging.WARNING)
    finally:
        structlog.reset_defaults()
        events.reset()


def test_without_structlogs_private_context_variables_the_request_context_is_still_remembered(
    monkeypatch,
):
    """structlog's ``_CONTEXT_VARS`` is private: without it, the public ``get_contextvars()`` is read."""
    from conntrace import fields, lifecycle

    monkeypatch.setattr(fields, "STRUCTLOG_VARS", None)
    connection.close()
    with structlog.contextvars.bound_contextvars(request_id="req-public-api"), connection.cursor() as cursor:
        cursor.execute("SELECT 1")
    assert lifecycle.record_of(connections["default"]).context == {"request_id": "req-public-api"}


def test_the_structlog_under_test_is_the_one_asked_for():
    """``scripts/test.sh`` runs these tests again on the oldest structlog conntrace supports."""
    wanted = os.environ.get("CONNTRACE_TEST_STRUCTLOG")
    installed = __import__("importlib.metadata").metadata.version("structlog")
    assert installed == (wanted or installed)
    assert structlog.__file__.startswith(os.environ.get("CONNTRACE_TEST_STRUCTLOG_PATH", ""))


def test_the_standard_library_loggers_level_is_respected_whatever_structlogs_wrapper_class():
    """django-structlog's documented configuration sets a stdlib LoggerFactory and no wrapper class."""
    structlog.configure(
        processors=[structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
    )
    try:
        events.reset()
        logging.getLogger("conntrace").setLevel(logging.INFO)
        assert not events.enabled(logging.DEBUG)  # no debug event is built only to be dropped
        assert events.enabled(logging.INFO)
    finally:
        logging.getLogger("conntrace").setLevel(logging.NOTSET)
        structlog.reset_defaults()
        events.reset()


def test_every_event_carries_its_process_sequence_pid_and_host(captured):
    import socket

    for _ in range(2):
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
        connection.close()
    stamps = [(e["event"], e["pid"], e["host"]) for e in captured]
    assert stamps == [
        (name, os.getpid(), socket.gethostname()) for name in ["connection_opened", "connection_closed"] * 2
    ]
    seqs = [e["seq"] for e in captured]
    assert seqs == list(range(seqs[0], seqs[0] + 4))


def test_the_sequence_starts_again_at_one_in_a_forked_child_and_a_bound_host_wins(captured):
    events.emit(logging.WARNING, Event.REPORTS_REPEATED, {})
    read, write = os.pipe()
    child = os.fork()
    if child == 0:
        structlog.contextvars.bind_contextvars(host="web-7")
        with structlog.testing.capture_logs() as child_events:
            events.emit(logging.WARNING, Event.REPORTS_REPEATED, {})
        os.write(
            write, repr((child_events[0]["seq"], child_events[0]["pid"], "host" in child_events[0])).encode()
        )
        os._exit(0)
    os.waitpid(child, 0)
    os.close(write)
    assert os.read(read, 200).decode() == repr((1, child, False))  # merge_contextvars brings "web-7"
    os.close(read)
    assert captured[0]["seq"] >= 1
