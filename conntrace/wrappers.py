"""The thin wrappers around Django's ``BaseDatabaseWrapper``: connect, close, and the use hook.

``connect`` (a session is established), ``close`` (every close attempt and its
outcome) and ``_cursor`` (every new cursor: the first use of a connection in a
request or task, and use after a fork) are wrapped while conntrace is
installed. Every backend that inherits them, built-in or third-party, is
covered without per-backend code. ``ensure_connection`` is left alone: test
runners (pytest-django) swap it themselves. Executing on a cursor never enters
conntrace.

Each wrapper first compares the process id with the one conntrace knows: a
process that was forked without Python being told (uWSGI, a fork from C)
applies the fork policy there, before its first byte goes on a shared socket.

Bookkeeping runs around the original call and is fenced: a failure inside
conntrace is reported once and the database call goes on unchanged. What the
bookkeeping does to a connection's record is in ``lifecycle``.
"""

from __future__ import annotations

import logging
import os
import time
from _thread import get_ident
from asyncio import _get_running_loop
from collections.abc import Callable
from typing import Any

from conntrace import conf, events, forking, lifecycle, pool_forensics, process
from conntrace.fields import snapshot_context
from conntrace.lifecycle import INHERITED_ATTR, RECORD_ATTR
from conntrace.names import ForkNoticed, Observed, Outcome, State
from conntrace.observers import notify, observers
from conntrace.stacks import capture

DEBUG = logging.DEBUG
# os.getpid() is a system call (0.15 µs here), asked once per connect, new cursor and close.
_getpid = os.getpid
_monotonic = time.monotonic
# Frames kept at a connection's first use in a request or task: enough to reach the
# application's line through the ORM's own (QuerySet -> compiler -> cursor: 7 to 9 frames).
USE_FRAMES = 12


def _notice_untold_fork(at: ForkNoticed) -> None:
    """Apply the fork policy now if this process was forked without Python being told."""
    if _getpid() != process.pid:
        forking.notice_untold_fork(at)


def wrap_connect(original: Callable[[Any], Any]) -> Callable[[Any], Any]:
    def connect(self: Any) -> Any:
        if not process.active:
            return original(self)
        _notice_untold_fork(ForkNoticed.AT_CONNECT)
        if INHERITED_ATTR in self.__dict__:
            # The first use of a connection discarded under FORK_POLICY "raise" (it reconnects).
            forking.on_discarded_use(self)
        record = previous = before = None
        debug = False
        try:
            previous = self.__dict__.get(RECORD_ATTR)
            before = self.connection
            record = lifecycle.open_record(self)
            debug = events.enabled(DEBUG)
        except Exception as exc:
            events.internal_error("connect", exc)
        try:
            return original(self)
        except Exception as exc:
            if record is not None and record.pooled:
                pool_forensics.checkout_failed(self, record, exc)  # a timeout: who holds the pool
            raise
        finally:
            # Also when connect() raised: a session may exist (init_connection_state() failed).
            if record is not None:
                try:
                    lifecycle.connected(self, record, previous, before, debug)
                except Exception as exc:
                    events.internal_error("connect", exc)
            if process.pending:
                process.flush_pending()

    return connect


def wrap_close(original: Callable[[Any], Any]) -> Callable[[Any], Any]:
    def close(self: Any) -> Any:
        if not process.active:
            return original(self)
        _notice_untold_fork(ForkNoticed.AT_CLOSE)
        if self._thread_ident != get_ident():
            # Django's own check, run first so that its error is never mistaken for a close
            # error; in the owning thread it cannot fail (and it takes a lock).
            self.validate_thread_sharing()
        if _get_running_loop() is not None and not os.environ.get("DJANGO_ALLOW_ASYNC_UNSAFE"):
            # Django's async_unsafe check: it raises SynchronousOnlyOperation and closes nothing,
            # so nothing is recorded. Asked first (+0.016 µs per close, timeit), rather than
            # recording and taking the attempt back when Django refuses.
            return original(self)
        # Closing a connection inherited under FORK_POLICY "raise" is the correct handling.
        self.__dict__.pop(INHERITED_ATTR, None)
        record = attempt = None
        report = False
        try:
            record = self.__dict__.get(RECORD_ATTR)
            if record is not None:
                debug = events.enabled(DEBUG)
                attempt = lifecycle.start_close(self, record, debug or bool(observers))
                outcome = attempt.outcome
                report = outcome is not Outcome.NOOP and (outcome is Outcome.ALREADY_CLOSED or debug)
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
        finally:
            # Deferred reports go out only after the driver's close: code that freed the socket's
            # descriptor under the driver (Celery's fixup os.close()s inherited ones) must not see
            # a log file opened meanwhile take that number, which the driver would then close.
            if process.pending:
                process.flush_pending()
        # A normal close with debug events dropped ends here, with nothing left to do.
        if attempt is not None and (report or observers):
            lifecycle.finish_close(self, record, attempt, None)
        return result

    return close


def wrap_use(original: Callable[..., Any]) -> Callable[..., Any]:
    def _cursor(self: Any, name: Any = None) -> Any:
        if process.active:
            if self.connection is not None:
                if _getpid() != process.pid:
                    forking.notice_untold_fork(ForkNoticed.AT_USE)
                record = self.__dict__.get(RECORD_ATTR)
                # An ended record here belongs to a closed session whose wrapper reconnects next.
                if record is not None and record.state is State.OPEN:
                    # For connection_lost's idle_s: no call, two attribute writes (time.monotonic is C).
                    record.previous_use_mono = record.use_mono
                    record.use_mono = now = _monotonic()
                    if record.fork_gen != process.fork_gen:
                        forking.on_inherited_use(self, record)
                    elif record.context_gen != process.request_gen:
                        try:
                            snapshot_context(record)
                            if observers:
                                # Uses are watched (a debugging tool): where is its first use in
                                # this request or task (last_used_in). Not otherwise: walking a
                                # request's frames costs about 4 µs, W3b 1.019 against 1.001.
                                record.previous_use_stack = record.use_stack
                                record.use_stack = capture(USE_FRAMES, 1)
                                record.use_stack_mono = now
                        except Exception as exc:
                            events.internal_error("use", exc)
                    if observers:
                        notify(Observed.USED, self, record)
            if self.connection is None and INHERITED_ATTR in self.__dict__:
                forking.on_discarded_use(self)  # discarded under FORK_POLICY "raise"
        return original(self, name)

    return _cursor


# BaseDatabaseWrapper method name -> the wrapper made around it while installed.
WRAPPED = {"connect": wrap_connect, "close": wrap_close, "_cursor": wrap_use}


def on_unit_of_work_started(**kwargs: Any) -> None:
    """A request (``request_started``) or a Celery task (``task_prerun``) starts.

    Each connection's first use in it remembers the structlog context bound
    then (its ``request_id`` or ``task_id``), for the close that ends it.
    """
    process.request_gen += 1
    if process.pending:
        process.flush_pending()
