"""Event names and their emission through structlog.

conntrace never configures structlog or logging. It asks the application's
configuration whether a level would be kept before building an event, so
that events dropped by level cost nothing, and an application that never
configured structlog (whose defaults print every level) gets warnings only.
"""

from __future__ import annotations

import itertools
import logging
import os
import re
import socket
import sys
from typing import Any, Optional

import structlog

from conntrace import conf
from conntrace.names import Event, Level

_fallback_log = logging.getLogger("conntrace")


class _LevelGate:
    """Cache of which levels the application's structlog configuration keeps."""

    def __init__(self) -> None:
        self.key: Any = None
        self.min_level = logging.WARNING
        self.stdlib_logger: Optional[logging.Logger] = None
        self.logger: Any = None

    def refresh(self, key: Any) -> None:
        self.key = key
        name = conf.get()["LOGGER_NAME"]
        self.logger = structlog.get_logger(name)
        self.stdlib_logger = None
        if not structlog.is_configured():
            # structlog's defaults print every level: keep such projects quiet.
            self.min_level = logging.WARNING
            return
        bound = self.logger.bind()
        # A standard-library logger underneath (structlog.stdlib.LoggerFactory, as django-structlog
        # configures it) has the last word on levels, whatever structlog's wrapper class.
        underlying = getattr(bound, "_logger", None)
        if isinstance(underlying, logging.Logger):
            self.stdlib_logger = underlying
        if isinstance(bound, structlog.stdlib.BoundLogger):
            self.min_level = logging.NOTSET
            return
        check = getattr(bound, "is_enabled_for", None) or _filtered_level_check(bound)
        self.min_level = logging.NOTSET
        if check is not None:
            for level in Level:
                if check(level):
                    self.min_level = level
                    break
            else:
                self.min_level = logging.CRITICAL + 1


def _filtered_level_check(bound: Any) -> Any:
    """Tell the levels a filtering logger drops, on a structlog without ``is_enabled_for`` (before 25.1).

    There, every method below the logger's level is one shared no-op function:
    the one a logger filtering at CRITICAL has for ``debug``.
    """
    try:
        nop = structlog.make_filtering_bound_logger(logging.CRITICAL).debug
    except Exception:
        return None
    methods = type(bound)
    return lambda level: getattr(methods, Level(level).name.lower(), None) is not nop


gate = _LevelGate()
# structlog's one configuration object: configure() and reset_defaults() change it in place,
# so three identity tests tell whether it changed. It is private: without it (another
# structlog), the public get_config() is read instead, about 1 µs more per check.
_CONFIG: Any = getattr(getattr(structlog, "_config", None), "_CONFIG", None)
if not all(hasattr(_CONFIG, name) for name in ("is_configured", "default_wrapper_class", "logger_factory")):
    _CONFIG = None


def _public_config_key() -> tuple[Any, Any, Any]:
    config = structlog.get_config()
    return (structlog.is_configured(), config.get("wrapper_class"), config.get("logger_factory"))


def reset() -> None:
    """Forget the cached logger and levels (settings or structlog configuration changed)."""
    gate.key = None


def enabled(level: int) -> bool:
    """Return True if an event at ``level`` would be kept by the application's configuration."""
    try:
        # One frame, no tuple built, the configuration compared field by field: every
        # connect and close asks (see docs/performance.md).
        config = _CONFIG
        key = gate.key
        if config is None:
            fresh = _public_config_key()
            if key is None or any(a is not b for a, b in zip(key, fresh, strict=True)):
                gate.refresh(fresh)
        elif (
            key is None
            or key[0] is not config.is_configured
            or key[1] is not config.default_wrapper_class
            or key[2] is not config.logger_factory
        ):
            gate.refresh((config.is_configured, config.default_wrapper_class, config.logger_factory))
        if level < gate.min_level:
            return False
        if gate.stdlib_logger is not None:
            return gate.stdlib_logger.isEnabledFor(level)
        return True
    except Exception as exc:
        internal_error("level_check", exc)
        return level >= logging.WARNING


class _Stamp:
    """What every event adds so that a reader of many processes' logs can order and place it.

    ``seq`` counts this process's events (1, 2, ...), restarted in a forked child: the order
    within a process whatever the clocks, and a pid reused later starts again at 1. ``host`` is
    the machine's name, read once, unless the application bound its own ``host`` in structlog's
    context (which then comes through instead). Events are never emitted per query.
    """

    def __init__(self) -> None:
        self.pid = 0
        self.counter: itertools.count[int] = itertools.count(1)
        self.host: Optional[str] = None

    def add_to(self, fields: dict[str, Any]) -> None:
        pid = os.getpid()
        if pid != self.pid:
            self.pid = pid
            self.counter = itertools.count(1)
        fields["seq"] = next(self.counter)
        fields.setdefault("pid", pid)
        if "host" not in fields and "host" not in structlog.contextvars.get_contextvars():
            if self.host is None:
                self.host = socket.gethostname()
            fields["host"] = self.host


stamp = _Stamp()


def emit(level: int, event: Event, fields: dict[str, Any]) -> None:
    """Send one event; a failure of the logging pipeline is reported once, never raised."""
    try:
        stamp.add_to(fields)
        logger = gate.logger or structlog.get_logger(conf.get()["LOGGER_NAME"])
        name = event.value
        if level >= logging.ERROR:
            logger.error(name, **fields)
        elif level >= logging.WARNING:
            logger.warning(name, **fields)
        elif level >= logging.INFO:
            logger.info(name, **fields)
        else:
            logger.debug(name, **fields)
    except Exception as exc:
        internal_error("emit", exc)


_reported: set[tuple[str, str]] = set()


def internal_error(where: str, exc: BaseException) -> None:
    """Report a failure inside conntrace once per kind; never raise."""
    key = (where, type(exc).__name__)
    if key in _reported:
        return
    _reported.add(key)
    fields = {"where": where, "error_type": type(exc).__name__, "error": error_text(exc)}
    line = "{} where={} error_type={} error={}".format(Event.INTERNAL_ERROR.value, *fields.values())
    try:
        stamp.add_to(fields)
        structlog.get_logger(conf.get()["LOGGER_NAME"]).error(Event.INTERNAL_ERROR.value, **fields)
    except Exception:
        try:
            _fallback_log.error("%s", line)
        except Exception:
            # The logging pipeline itself is what fails: a last resort, as logging's own handleError().
            try:
                sys.stderr.write(line + "\n")
            except Exception:
                pass


def error_text(exc: BaseException) -> str:
    """Return ``str(exc)`` without secrets, or a placeholder when the exception cannot be printed."""
    try:
        return redact(str(exc))
    except Exception:
        return f"<unprintable {type(exc).__name__}>"


def reset_internal_errors() -> None:
    """Allow every kind of internal error to be reported again (for tests)."""
    _reported.clear()


_PATTERNS = (
    re.compile(r"(password\s*=\s*)('[^']*'|\"[^\"]*\"|\S+)", re.IGNORECASE),
    re.compile(r"(://[^:/@\s]*:)([^@\s]+)(?=@)"),
)
_secrets: Optional[tuple[str, ...]] = None


def _configured_secrets() -> tuple[str, ...]:
    from django.conf import settings

    found = set()
    try:
        for db in getattr(settings, "DATABASES", {}).values():
            for source in (db, db.get("OPTIONS") or {}):
                for key, value in source.items():
                    if (
                        isinstance(value, str)
                        and value
                        and (
                            "password" in key.lower()
                            or "dsn" in key.lower()
                            or key.lower() in ("passwd", "conninfo")
                        )
                    ):
                        found.add(value)
                        # A DSN's own password, too.
                        for pattern in _PATTERNS:
                            for match in pattern.finditer(value):
                                found.add(match.group(2).strip("'\""))
    except Exception:
        pass
    return tuple(sorted((s for s in found if s), key=len, reverse=True))


def redact(text: str) -> str:
    """Remove database passwords and DSN credentials from ``text``."""
    global _secrets
    if _secrets is None:
        _secrets = _configured_secrets()
    for secret in _secrets:
        if secret in text:
            text = text.replace(secret, "***")
    for pattern in _PATTERNS:
        text = pattern.sub(lambda m: m.group(1) + "***", text)
    return text


def forget_secrets() -> None:
    """Re-read the secrets on next use (DATABASES changed)."""
    global _secrets
    _secrets = None
