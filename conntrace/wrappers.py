"""The thin wrappers around Django's ``BaseDatabaseWrapper``, and the use hook they switch on.

``connect`` (a session is established) and ``close`` (every close attempt and
its outcome) are wrapped while conntrace is installed; ``_cursor`` (the first
use of a connection in a request, and use after a fork) only once something
needs uses seen (``watch_uses()``). Every backend that inherits them, built-in
or third-party, is covered without per-backend code. ``ensure_connection`` is
left alone: test runners (pytest-django) swap it themselves.

Bookkeeping runs around the original call and is fenced: a failure inside
conntrace is reported once and the database call goes on unchanged. What the
bookkeeping does to a connection's record is in ``lifecycle``.
"""

from __future__ import annotations

import logging
import os
from _thread import get_ident
from asyncio import _get_running_loop
from collections.abc import Callable
from typing import Any

from conntrace import conf, events, forking, lifecycle, patching, process
from conntrace.fields import context_ever_bound, snapshot_context
from conntrace.lifecycle import INHERITED_ATTR, RECORD_ATTR
from conntrace.names import Observed, Outcome, State
from conntrace.observers import notify, observers

DEBUG = logging.DEBUG


def wrap_connect(original: Callable[[Any], Any]) -> Callable[[Any], Any]:
    def connect(self: Any) -> Any:
        if not process.active:
            return original(self)
        if process.watch_use and INHERITED_ATTR in self.__dict__:
            # The first use of a connection discarded under FORK_POLICY "raise" (it reconnects).
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


def wrap_close(original: Callable[[Any], Any]) -> Callable[[Any], Any]:
    def close(self: Any) -> Any:
        if not process.active:
            return original(self)
        if self._thread_ident != get_ident():
            # Django's own check, run first so that its error is never mistaken for a close
            # error; in the owning thread it cannot fail (and it takes a lock).
            self.validate_thread_sharing()
        if _get_running_loop() is not None and not os.environ.get("DJANGO_ALLOW_ASYNC_UNSAFE"):
            # Django's async_unsafe check: it raises SynchronousOnlyOperation and closes nothing,
            # so nothing is recorded. Asked first (+0.016 µs per close, timeit), rather than
            # recording and taking the attempt back when Django refuses.
            return original(self)
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
                report = outcome != Outcome.NOOP and (outcome == Outcome.ALREADY_CLOSED or debug)
        except Exception as exc:
            events.internal_error("close", exc)
            record = attempt = None
        try:
            result = original(self)
        except Exception as exc:
            if attempt is not None:
                lifecycle.finish_close(self, record, attempt, exc)
            if not conf.get()["DOWNGRADE_CLOSE_ERRORS"]:
                raise
            lifecycle.downgrade(self, record, exc)
            return None
        # A normal close with debug events dropped ends here, with nothing left to do.
        if attempt is not None and (report or observers):
            lifecycle.finish_close(self, record, attempt, None)
        return result

    return close


def wrap_use(original: Callable[..., Any]) -> Callable[..., Any]:
    def _cursor(self: Any, name: Any = None) -> Any:
        if process.active and self.connection is not None:
            record = self.__dict__.get(RECORD_ATTR)
            # An ended record here belongs to a closed session whose wrapper reconnects next.
            if record is not None and record.state == State.OPEN:
                if record.fork_gen != process.fork_gen:
                    forking.on_inherited_use(self, record)
                elif record.context_gen != process.request_gen:
                    try:
                        snapshot_context(record)
                    except Exception as exc:
                        events.internal_error("use", exc)
                if observers:
                    notify(Observed.USED, self, record)
        elif process.active and INHERITED_ATTR in self.__dict__:
            forking.on_discarded_use(self)
        return original(self, name)

    return _cursor


# Wrapped while installed.
ALWAYS = {"connect": wrap_connect, "close": wrap_close}
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
        patching.wrap(USE_METHOD, wrap_use)


def on_request_started(**kwargs: Any) -> None:
    """Start a new request generation: each connection's first use in it snapshots its context."""
    process.request_gen += 1
    if not process.watch_use and context_ever_bound():
        watch_uses()  # something was bound: remember it at each request's first use
    if process.pending:
        process.flush_pending()
