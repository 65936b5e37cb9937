"""Listeners of a debugging tool (the toolbar panel), told of every open, first use and close attempt.

Empty in normal operation, so the hot paths pay one truth test. An observer
is called as ``observer(kind, wrapper, record)`` with ``kind`` a
``names.Observed``; one that raises is reported once and never breaks the
database call.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from conntrace import events
from conntrace.names import Observed
from conntrace.records import ConnectionRecord

Observer = Callable[[Observed, Any, ConnectionRecord], None]

observers: list[Observer] = []


def add(observer: Observer) -> None:
    """Call ``observer`` from now on (idempotent)."""
    if observer not in observers:
        observers.append(observer)


def remove(observer: Observer) -> None:
    """Stop calling ``observer``."""
    if observer in observers:
        observers.remove(observer)


def notify(kind: Observed, wrapper: Any, record: ConnectionRecord) -> None:
    """Tell each observer; one that raises is reported once and never breaks the database call."""
    for observer in list(observers):
        try:
            observer(kind, wrapper, record)
        except Exception as exc:
            events.internal_error("observer", exc)
