"""The thin wrappers around Django's ``BaseDatabaseWrapper``: install, uninstall, is_installed.

Methods of the base class are wrapped, once, behind a marker that keeps
the original: ``connect`` (a session is established) and ``close`` (every
close attempt and its outcome) always; ``_cursor`` (the first use of a
connection in a request, and use after a fork) only once something needs
uses seen (watch_uses()). Every backend that inherits them, built-in or
third-party, is covered without per-backend code. ``ensure_connection`` is
left alone: test runners (pytest-django) swap it themselves.

Bookkeeping runs around the original call and is fenced: a failure inside
conntrace is reported once and the database call goes on unchanged. What the
bookkeeping does to a connection's record is in ``lifecycle``.
"""

from __future__ import annotations

import logging
from _thread import get_ident
from collections.abc import Callable
from typing import Any

from django.core.exceptions import SynchronousOnlyOperation
from django.core.signals import request_started
from django.db.backends.base.base import BaseDatabaseWrapper

from conntrace import conf, events, lifecycle, process, records
from conntrace.fields import context_ever_bound, snapshot_context
from conntrace.lifecycle import INHERITED_ATTR, RECORD_ATTR, observers

MARK = "_conntrace_original"
DEBUG = logging.DEBUG


def add_observer(observer: Callable[[str, Any, records.ConnectionRecord], None]) -> None:
    """Call ``observer`` at every open, first use in a request, and close (a debugging tool's hook)."""
    if observer not in observers:
        observers.append(observer)
    watch_uses()


def remove_observer(observer: Callable[[str, Any, records.ConnectionRecord], None]) -> None:
    """Stop calling ``observer``."""
    if observer in observers:
        observers.remove(observer)


# --------------------------------------------------------------------------- wrappers


def _wrap_connect(original: Callable[[Any], Any]) -> Callable[[Any], Any]:
    def connect(self: Any) -> Any:
        if not process.active:
            return original(self)
        if process.watch_use and INHERITED_ATTR in self.__dict__:
            # The first use of a connection discarded under FORK_POLICY "raise" (it reconnects).
            from conntrace import forking

            forking.on_discarded_use(self)
        record = previous = before = None
        debug = False
        try:
            if process.pending:
                process.flush_pending()
            previous = self.__dict__.get(RECORD_ATTR)
            before = self.connection
            record = lifecycle.open_record(self)
            if not process.watch_use and context_ever_bound():
                watch_uses()  # context to remember at each later request's first use
            debug = events.enabled(DEBUG)
        except Exception as exc:
            events.internal_error("connect", exc)
        try:
            return original(self)
        finally:
            # Also when connect() raised: a session may exist (init_connection_state() failed).
            if record is not None:
                try:
                    lifecycle.connected(self, record, previous, before, debug)
                except Exception as exc:
                    events.internal_error("connect", exc)

    return connect


def _wrap_close(original: Callable[[Any], Any]) -> Callable[[Any], Any]:
    def close(self: Any) -> Any:
        if not process.active:
            return original(self)
        if self._thread_ident != get_ident():
            # Django's own check, run first so that its error is never mistaken for a close
            # error; in the owning thread it cannot fail (and it takes a lock).
            self.validate_thread_sharing()
        if process.watch_use:
            # Closing a connection inherited under FORK_POLICY "raise" is the correct handling.
            self.__dict__.pop(INHERITED_ATTR, None)
        record = attempt = None
        report = False
        try:
            if process.pending:
                process.flush_pending()
            record = self.__dict__.get(RECORD_ATTR)
            if record is not None:
                debug = events.enabled(DEBUG)
                attempt = lifecycle.start_close(self, record, debug or bool(observers))
                outcome = attempt.outcome
                report = outcome != records.NOOP and (outcome == records.ALREADY_CLOSED or debug)
        except Exception as exc:
            events.internal_error("close", exc)
            record = None
        try:
            result = original(self)
        except SynchronousOnlyOperation:
            # Django refused to close from async code before doing anything: nothing happened.
            if record is not None and attempt is not None:
                lifecycle.undo_close(record, attempt)
            raise
        except Exception as exc:
            if record is not None and attempt is not None:
                lifecycle.finish_close(self, record, attempt, exc)
            if not conf.get()["DOWNGRADE_CLOSE_ERRORS"]:
                raise
            lifecycle.downgrade(self, record, exc)
            return None
        # A normal close with debug events dropped ends here, with nothing left to do.
        if (report or observers) and record is not None and attempt is not None:
            lifecycle.finish_close(self, record, attempt, None)
        return result

    return close


def _wrap_use(original: Callable[..., Any]) -> Callable[..., Any]:
    def _cursor(self: Any, name: Any = None) -> Any:
        if process.active and self.connection is not None:
            record = self.__dict__.get(RECORD_ATTR)
            # An ended record here belongs to a closed session whose wrapper reconnects next.
            if record is not None and record.state == records.OPEN:
                if record.fork_gen != process.fork_gen:
                    from conntrace import forking

                    forking.on_inherited_use(self, record)
                elif record.context_gen != process.request_gen:
                    try:
                        snapshot_context(record)
                    except Exception as exc:
                        events.internal_error("use", exc)
                if observers:
                    lifecycle.notify("used", self, record)
        elif process.active and INHERITED_ATTR in self.__dict__:
            from conntrace import forking

            forking.on_discarded_use(self)
        return original(self, name)

    return _cursor


# Always wrapped while installed.
_WRAPPERS = {
    "connect": _wrap_connect,
    "close": _wrap_close,
}
# The use hook: every cursor passes through BaseDatabaseWrapper._cursor. Wrapped only once
# something needs a connection's first use seen (watch_uses()), so that until then a
# cursor never enters conntrace.
USE_METHOD = "_cursor"


def watch_uses() -> None:
    """Start seeing each connection's first use in a request and after a fork (idempotent).

    Called when structlog context was bound (its ``request_id`` is remembered per
    request), when a panel observes, and in a child that inherited connections.
    """
    process.watch_use = True
    if process.active:
        _wrap(USE_METHOD, _wrap_use)


# --------------------------------------------------------------------------- signals


def _on_request_started(**kwargs: Any) -> None:
    process.request_gen += 1
    if not process.watch_use and context_ever_bound():
        watch_uses()  # something was bound: remember it at each request's first use
    if process.pending:
        process.flush_pending()


# --------------------------------------------------------------------------- public API


def install() -> bool:
    """Instrument Django's database wrappers; a second call is a no-op.

    Returns False when ``CONNTRACE["ENABLED"]`` is false.
    """
    if not conf.get()["ENABLED"]:
        return False
    for name, make in _WRAPPERS.items():
        _wrap(name, make)
    records.registry.resize(conf.get()["MAX_RECORDS"])
    request_started.connect(_on_request_started, dispatch_uid="conntrace.request_started")
    from conntrace import forking

    forking.register_hooks()
    process.active = True
    if process.watch_use or context_ever_bound():
        watch_uses()
    return True


def _wrap(name: str, make: Callable[[Any], Any]) -> None:
    """Put our wrapper on ``BaseDatabaseWrapper.name`` unless it is there already."""
    current = BaseDatabaseWrapper.__dict__[name]
    if getattr(current, MARK, None) is not None:
        return
    if _find_ours(current):
        # Another library (or Django's SimpleTestCase) wrapped ours: it reactivates, no second layer.
        return
    wrapper = make(current)
    wrapper.__name__ = current.__name__
    wrapper.__qualname__ = current.__qualname__
    wrapper.__doc__ = current.__doc__
    setattr(wrapper, MARK, current)
    setattr(BaseDatabaseWrapper, name, wrapper)


def uninstall() -> None:
    """Restore Django's original methods (records already made are kept)."""
    process.active = False
    for name in (*_WRAPPERS, USE_METHOD):
        current = BaseDatabaseWrapper.__dict__[name]
        original = getattr(current, MARK, None)
        # Where another library wrapped ours, the chain stays intact and ours is inert.
        if original is not None:
            setattr(BaseDatabaseWrapper, name, original)
    request_started.disconnect(dispatch_uid="conntrace.request_started")


def _find_ours(func: Any, depth: int = 4) -> list[Any]:
    """Return the wrappers of ours that ``func`` (another library's wrapper) closes over, at any depth."""
    seen = []
    closure = getattr(func, "__closure__", None) or ()
    for cell in closure:
        try:
            value = cell.cell_contents
        except ValueError:
            continue
        if getattr(value, MARK, None) is not None:
            seen.append(value)
        elif depth > 1 and callable(value) and getattr(value, "__closure__", None):
            seen.extend(_find_ours(value, depth - 1))
    return seen


def is_installed() -> bool:
    """Return True while conntrace is recording."""
    return process.active
