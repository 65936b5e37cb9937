"""conntrace: make the life of every Django database connection visible.

Add ``"conntrace"`` to ``INSTALLED_APPS``; or call :func:`install` yourself.
Importing this package has no side effects.
"""

from __future__ import annotations

from typing import Any

from conntrace.exceptions import CloseErrorWarning, InheritedConnectionError

__version__ = "0.1.0"


def install() -> bool:
    """Instrument Django's database wrappers (idempotent); False if disabled by settings."""
    from conntrace import instrument

    return instrument.install()


def uninstall() -> None:
    """Remove the instrumentation, restoring Django's own methods."""
    from conntrace import instrument

    instrument.uninstall()


def is_installed() -> bool:
    """Return True while conntrace records connections."""
    from conntrace import process

    return process.active


def live() -> list[dict[str, Any]]:
    """Return the connections open now in this process (all threads), as plain dicts."""
    from conntrace import process, records

    if process.pending:
        process.flush_pending()
    return [record.as_dict() for record in records.registry.open_records()]


def history() -> list[dict[str, Any]]:
    """Return the recently ended connections of this process, oldest first, as plain dicts."""
    from conntrace import process, records

    if process.pending:
        process.flush_pending()
    return [record.as_dict() for record in records.registry.ended_records()]


def pools() -> list[dict[str, Any]]:
    """Return Django's psycopg pools in this process: sizes, counters, who holds each connection."""
    from conntrace import pool_forensics, process

    if process.pending:
        process.flush_pending()
    return pool_forensics.all_pools()


__all__ = [
    "CloseErrorWarning",
    "InheritedConnectionError",
    "history",
    "install",
    "is_installed",
    "live",
    "pools",
    "uninstall",
]
