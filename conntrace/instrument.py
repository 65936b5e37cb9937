"""The thin wrappers around Django's ``BaseDatabaseWrapper``: install, uninstall, is_installed.

Methods of the base class are wrapped, once, behind a marker that keeps
the original: ``connect`` (a session is established) and ``close`` (every
close attempt and its outcome) always; ``_cursor`` (the first use of a
connection in a request, and use after a fork) only once something needs
uses seen (watch_uses()). Every backend that inherits them, built-in or
third-party, is covered without per-backend code. ``ensure_connection`` is
left alone: test runners (pytest-django) swap it themselves.

Bookkeeping runs around the original call and is fenced: a failure inside
conntrace is reported once and the database call goes on unchanged.
"""

from __future__ import annotations

import logging
import sys
import time
import warnings
import weakref
from _thread import get_ident
from collections.abc import Callable
from typing import Any, Optional

from django.core.exceptions import SynchronousOnlyOperation
from django.core.signals import request_started
from django.db.backends.base.base import BaseDatabaseWrapper

from conntrace import conf, drivers, events, process, records, stacks
from conntrace.exceptions import CloseErrorWarning
from conntrace.fields import STRUCTLOG_VARS, anomaly_fields, base_fields, snapshot_context

MARK = "_conntrace_original"
RECORD_ATTR = "_conntrace_record"
# Set by the fork hook (policy "raise") on a wrapper whose inherited connection it discarded.
INHERITED_ATTR = "_conntrace_inherited"
DEBUG = logging.DEBUG
WARNING = logging.WARNING

REF_ATTR = "_conntrace_ref"
# Frames kept for a normal close when nothing will show them (no debug events, no panel):
# the caller of close() and who called it. Anomalies and shown closes keep STACK_DEPTH frames.
NORMAL_CLOSE_FRAMES = 3
CLOSED_NORMALLY = (records.CLOSED, records.RETURNED_TO_POOL)


class _WrapperRef(weakref.ref):
    """A weak reference to one Django wrapper, made once per wrapper, that holds its current record.

    Made once and kept for the wrapper's life, so that a connect allocates no
    reference and a close frees none (see docs/performance.md).
    """

    __slots__ = ("record",)

    def __new__(cls, wrapper: Any) -> _WrapperRef:
        self = super().__new__(cls, wrapper, _on_wrapper_gone)
        self.record = None
        return self

    def __init__(self, wrapper: Any) -> None:
        super().__init__(wrapper, _on_wrapper_gone)


# id(reference) -> the reference to each live wrapper that ever connected: kept here, outside
# the wrapper's own reference cycles, so that its callback runs when the wrapper is collected.
_watched: dict[int, _WrapperRef] = {}
# Listeners of a debugging tool (the toolbar panel): observer(kind, wrapper, record) with kind
# "opened", "used" or "closed". Empty in normal operation, so the hot paths pay one truth test.
observers: list[Callable[[str, Any, records.ConnectionRecord], None]] = []


def add_observer(observer: Callable[[str, Any, records.ConnectionRecord], None]) -> None:
    """Call ``observer`` at every open, first use in a request, and close (a debugging tool's hook)."""
    if observer not in observers:
        observers.append(observer)
    watch_uses()


def remove_observer(observer: Callable[[str, Any, records.ConnectionRecord], None]) -> None:
    """Stop calling ``observer``."""
    if observer in observers:
        observers.remove(observer)


def _notify(kind: str, wrapper: Any, record: records.ConnectionRecord) -> None:
    for observer in list(observers):
        try:
            observer(kind, wrapper, record)
        except Exception as exc:
            events.internal_error("observer", exc)


# --------------------------------------------------------------------------- recording


def _open_record(wrapper: Any) -> records.ConnectionRecord:
    """Make and register the record before the real connect: the code after it meets cold caches.

    The connect wrapper takes the registration back if no session came of it.
    """
    record = records.ConnectionRecord(
        wrapper.alias,
        wrapper.vendor,
        process.pid,
        process.thread_name(),
        time.time(),
        time.monotonic(),
        # Skip this function and the connect wrapper: start at connect's caller.
        stacks.capture(conf.get()["STACK_DEPTH"], skip=2),
        process.fork_gen,
    )
    record.pooled = bool(wrapper.settings_dict.get("OPTIONS", {}).get("pool"))
    if STRUCTLOG_VARS is None or STRUCTLOG_VARS:
        snapshot_context(record)
        if not process.watch_use:
            watch_uses()  # also at each later request's first use
    else:
        record.context_gen = process.request_gen  # nothing was ever bound: nothing to copy
    wrapper_dict = wrapper.__dict__
    ref = wrapper_dict.get(REF_ATTR)
    if ref is None or ref() is not wrapper:  # none yet, or copied from another wrapper
        ref = wrapper_dict[REF_ATTR] = _WrapperRef(wrapper)
        _watched[id(ref)] = ref
    record.wrapper_ref = ref
    ref.record = record
    wrapper_dict[RECORD_ATTR] = record
    records.registry.live[record.conn_id] = record
    return record


def _unregister(wrapper: Any, record: records.ConnectionRecord, previous: Any) -> None:
    """Take back the registration of ``record``: its connect made no session."""
    records.registry.live.pop(record.conn_id, None)
    record.state = records.ENDED
    wrapper_dict = wrapper.__dict__
    if wrapper_dict.get(RECORD_ATTR) is record:
        if previous is None:
            wrapper_dict.pop(RECORD_ATTR, None)
        else:
            wrapper_dict[RECORD_ATTR] = previous
    ref = record.wrapper_ref
    if ref is not None and ref.record is record:
        ref.record = previous if previous is not None and previous.state == records.OPEN else None


def _on_wrapper_gone(ref: _WrapperRef) -> None:
    """Garbage-collector callback: a wrapper died, maybe holding an open connection."""
    _watched.pop(id(ref), None)
    record = ref.record
    if record is None or record.state != records.OPEN:
        return
    end_without_close(record, records.ABANDONED)
    # Emitting from inside the garbage collector could take a lock this thread holds.
    process.pending.append(lambda: events.emit(WARNING, events.CONNECTION_ABANDONED, anomaly_fields(record)))


def _connected(
    wrapper: Any, record: records.ConnectionRecord, previous: Any, before: Any, debug: bool
) -> None:
    """Finish the record of a new session; ``debug`` was asked before the connect, while caches were warm.

    ``previous`` is the wrapper's record before this connect and ``before`` its
    driver connection then: a connect that left no new one made no session.
    """
    if record.state != records.OPEN:
        return  # closed already, by a connection_created receiver
    conn = wrapper.connection
    if conn is None or conn is before:
        _unregister(wrapper, record, previous)
        return
    if previous is not None and previous.state == records.OPEN and _held_by(previous, wrapper):
        # connect() on a wrapper that was already connected drops the old session (the
        # record may also be a copied wrapper's: copy.copy() shares the attribute).
        _on_abandon_now(previous)
    record.backend_pid = drivers.backend_pid(conn)
    if debug:
        events.emit(DEBUG, events.CONNECTION_OPENED, base_fields(record))
    if observers:
        _notify("opened", wrapper, record)


def _held_by(record: records.ConnectionRecord, wrapper: Any) -> bool:
    ref = record.wrapper_ref
    return ref is not None and ref() is wrapper


def _on_abandon_now(record: records.ConnectionRecord) -> None:
    end_without_close(record, records.ABANDONED)
    events.emit(WARNING, events.CONNECTION_ABANDONED, anomaly_fields(record))


def _forget(record: records.ConnectionRecord) -> None:
    ref = record.wrapper_ref
    if ref is not None and ref.record is record:
        ref.record = None


def _end(record: records.ConnectionRecord) -> None:
    record.closed_mono = time.monotonic()
    _forget(record)
    records.registry.ended(record)


def end_without_close(
    record: records.ConnectionRecord, outcome: str, closed_by: Optional[str] = None
) -> None:
    """End ``record`` for a session that went away without Django closing it (abandoned, discarded)."""
    record.add_close(
        records.CloseAttempt(time.time(), process.pid, process.thread_name(), (), outcome, closed_by)
    )
    _end(record)


def _report_close(
    record: records.ConnectionRecord, attempt: records.CloseAttempt, exc: Optional[BaseException]
) -> None:
    if attempt.outcome == records.NOOP:
        return
    if exc is not None:
        fields = anomaly_fields(record)
        fields.update(error_type=attempt.error_type, error=attempt.error, downgraded=True)
        events.emit(WARNING, events.CONNECTION_CLOSE_FAILED, fields)
    elif attempt.outcome == records.ALREADY_CLOSED:
        fields = anomaly_fields(record)
        fields["closed_by"] = attempt.closed_by
        events.emit(WARNING, events.CONNECTION_DOUBLE_CLOSE, fields)
    elif events.enabled(DEBUG):
        fields = base_fields(record)
        fields.update(outcome=attempt.outcome, age_s=record.age_s(), close_count=record.close_count)
        events.emit(DEBUG, events.CONNECTION_CLOSED, fields)


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
            record = _open_record(self)
            debug = events.enabled(DEBUG)
        except Exception as exc:
            events.internal_error("connect", exc)
        try:
            return original(self)
        finally:
            # Also when connect() raised: a session may exist (init_connection_state() failed).
            if record is not None:
                try:
                    _connected(self, record, previous, before, debug)
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
                attempt = _start_close(self, record, debug or bool(observers))
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
                _undo_close(record, attempt)
            raise
        except Exception as exc:
            if record is not None and attempt is not None:
                _finish_close(self, record, attempt, exc)
            if not conf.get()["DOWNGRADE_CLOSE_ERRORS"]:
                raise
            _downgrade(self, record, exc)
            return None
        # A normal close with debug events dropped ends here, with nothing left to do.
        if (report or observers) and record is not None and attempt is not None:
            _finish_close(self, record, attempt, None)
        return result

    return close


def _undo_close(record: records.ConnectionRecord, attempt: records.CloseAttempt) -> None:
    """Forget a close attempt that never ran (Django raised before closing)."""
    try:
        if record.closes and record.closes[-1] is attempt:
            record.closes.pop()
        record.close_count -= 1
        if attempt.outcome != records.NOOP:
            record.closed_mono = None
            records.registry.reopened(record)
            ref = record.wrapper_ref
            if ref is not None and ref.record is None:
                ref.record = record
    except Exception as exc:
        events.internal_error("close", exc)


def _start_close(wrapper: Any, record: records.ConnectionRecord, shown: bool) -> records.CloseAttempt:
    """Record a close attempt before the real close: the code after it meets cold caches.

    ``shown``: debug events or a panel will show this close, so a normal close
    keeps its whole stack too.
    """
    conn = wrapper.connection
    now = time.monotonic()
    settings = conf.get()
    if conn is None or wrapper.closed_in_transaction or record.state != records.OPEN:
        outcome, closed_by = records.NOOP, None
    else:
        # The socket is polled for sessions old enough for a server or pooler to have ended
        # them unseen, and for any that crossed a fork (a child may have ended it).
        closed_by = drivers.closed_state(
            conn,
            bool(record.open_at_forks) or now - record.opened_mono >= settings["SOCKET_CHECK_AFTER_S"],
        )
        if closed_by is not None:
            outcome = records.ALREADY_CLOSED
            if closed_by == drivers.BY_SERVER and record.open_at_forks:
                closed_by = "server_or_forked_child"
        elif record.pooled:
            outcome = records.RETURNED_TO_POOL
        else:
            outcome = records.CLOSED
    depth = settings["STACK_DEPTH"]
    if not shown and outcome in CLOSED_NORMALLY and depth > NORMAL_CLOSE_FRAMES:
        depth = NORMAL_CLOSE_FRAMES
    attempt = records.CloseAttempt(
        time.time(), process.pid, process.thread_name(), stacks.capture(depth, skip=2), outcome, closed_by
    )
    # Inlined _end(), as this runs on every close.
    record.add_close(attempt)
    if outcome != records.NOOP:
        record.closed_mono = now
        ref = record.wrapper_ref
        if ref is not None and ref.record is record:
            ref.record = None
        records.registry.ended(record)
    return attempt


def _finish_close(
    wrapper: Any,
    record: records.ConnectionRecord,
    attempt: records.CloseAttempt,
    exc: Optional[BaseException],
) -> None:
    try:
        if exc is not None:
            predicted_noop = attempt.outcome == records.NOOP
            attempt.outcome = records.FAILED
            attempt.error_type = type(exc).__name__
            attempt.error = events.error_text(exc)
            if predicted_noop:
                _end(record)  # the driver's close ran after all: _closing() did not end it
        _report_close(record, attempt, exc)
        if observers:
            _notify("closed", wrapper, record)
    except Exception as internal:
        events.internal_error("close", internal)


def _downgrade(wrapper: Any, record: Optional[records.ConnectionRecord], exc: BaseException) -> None:
    # Django's close() has already left the wrapper closed (connection is None,
    # or closed_in_transaction inside an atomic block): the next use reconnects.
    where = ""
    if record is not None:
        try:
            where = f" (opened in {record.opened_in()})"
        except Exception:
            pass
    warnings.warn(
        CloseErrorWarning(
            f"conntrace: closing database connection {wrapper.alias!r}{where} raised "
            f"{type(exc).__name__}: {events.error_text(exc)}; downgraded to this warning"
        ),
        stacklevel=_caller_stacklevel(),
    )


def _caller_stacklevel() -> int:
    """Return the ``stacklevel`` that points a warning at the first frame outside Django and conntrace."""
    filter_ = stacks.frame_filter()
    frame = sys._getframe(2)  # the caller of _downgrade's caller
    level = 2
    try:
        while frame is not None and filter_.is_plumbing_or_django(frame.f_code.co_filename):
            frame = frame.f_back
            level += 1
    finally:
        del frame
    return level


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
                    _notify("used", self, record)
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
    if not process.watch_use and (STRUCTLOG_VARS is None or STRUCTLOG_VARS):
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
    if process.watch_use or STRUCTLOG_VARS is None or STRUCTLOG_VARS:
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


def record_of(wrapper: Any) -> Optional[records.ConnectionRecord]:
    """Return the record of the session ``wrapper`` holds or last held."""
    return wrapper.__dict__.get(RECORD_ATTR)
