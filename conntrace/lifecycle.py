"""A connection record's life: made before the driver's connect, ended at close or without one.

The wrappers (``wrappers``) call in here. Everything runs fenced by them:
an exception raised here is reported as a conntrace internal error, never
into the database call. Costly work (events, formatted stacks) happens only
when something will be shown; see docs/performance.md for what a normal
connect and close cost.
"""

from __future__ import annotations

import logging
import sys
import time
import warnings
import weakref
from functools import partial
from typing import Any, Optional

from conntrace import (
    conf,
    direct_closes,
    drivers,
    events,
    metric_hooks,
    process,
    psycopg_pools,
    records,
    stacks,
)
from conntrace.exceptions import CloseErrorWarning
from conntrace.fields import anomaly_fields, base_fields, context_ever_bound, snapshot_context
from conntrace.names import NORMAL_OUTCOMES, ClosedBy, Event, Observed, Outcome, State
from conntrace.observers import notify, observers

RECORD_ATTR = "_conntrace_record"
# Set by the fork hook (policy "raise") on a wrapper whose inherited connection it discarded.
INHERITED_ATTR = "_conntrace_inherited"
DEBUG = logging.DEBUG
INFO = logging.INFO
WARNING = logging.WARNING

REF_ATTR = "_conntrace_ref"
# Frames kept for a normal close when nothing will show them (no debug events, no panel):
# the caller of close() and who called it. Anomalies and shown closes keep STACK_DEPTH frames.
NORMAL_CLOSE_FRAMES = 3
# The thread of a close attempt made by the garbage collector (an abandoned connection).
GC_THREAD = "garbage collector"


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


def open_record(wrapper: Any) -> records.ConnectionRecord:
    """Make and register the record before the real connect; connected() takes it back if no session came.

    Before, for two reasons: Django sends ``connection_created`` from inside
    ``connect()``, and a receiver that closes or uses the new session must
    find its record (tests/test_lifecycle.py fails with registration after the
    connect); and the code after the driver's connect meets cold caches
    (docs/performance.md).
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
    record.opened_request_gen = process.request_gen
    if context_ever_bound():
        snapshot_context(record)
    else:
        record.context_gen = process.request_gen  # nothing was ever bound: nothing to copy
    if observers:  # uses are watched: the open is its first use in this request (last_used_in)
        record.use_stack, record.use_stack_mono = record.stack, record.opened_mono
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
    record.state = State.ENDED
    wrapper_dict = wrapper.__dict__
    if wrapper_dict.get(RECORD_ATTR) is record:
        if previous is None:
            wrapper_dict.pop(RECORD_ATTR, None)
        else:
            wrapper_dict[RECORD_ATTR] = previous
    ref = record.wrapper_ref
    if ref is not None and ref.record is record:
        ref.record = previous if previous is not None and previous.state is State.OPEN else None


def _on_wrapper_gone(ref: _WrapperRef) -> None:
    """Garbage-collector callback: a wrapper died, maybe holding an open connection.

    It runs in whatever thread or greenlet the collector runs in, even one being
    finalised (gevent): it reads no thread- or greenlet-local state, takes no lock
    and emits nothing (that could take a lock this thread holds); the record
    leaves the live registry before anything that could raise.
    """
    _watched.pop(id(ref), None)
    record = ref.record
    if record is None or record.state is not State.OPEN:
        return
    try:
        end_without_close(record, Outcome.ABANDONED, thread=GC_THREAD)
        process.pending.append(partial(_report_abandoned, record))
    except Exception as exc:
        records.registry.ended(record)
        process.pending.append(partial(events.internal_error, "abandoned", exc))


def _report_abandoned(record: records.ConnectionRecord) -> None:
    if metric_hooks.recorder is not None:
        metric_hooks.recorder.ended(record)
        metric_hooks.recorder.anomaly(Event.CONNECTION_ABANDONED, record.alias)
    events.emit(WARNING, Event.CONNECTION_ABANDONED, anomaly_fields(record))


def connected(
    wrapper: Any, record: records.ConnectionRecord, previous: Any, before: Any, debug: bool
) -> None:
    """Finish the record of a new session; ``debug`` was asked before the connect, while caches were warm.

    ``previous`` is the wrapper's record before this connect and ``before`` its
    driver connection then: a connect that left no new one made no session.
    """
    if record.state is not State.OPEN:
        return  # closed already, by a connection_created receiver
    conn = wrapper.connection
    if conn is None or conn is before:
        _unregister(wrapper, record, previous)
        return
    if previous is not None and previous.state is State.OPEN and _held_by(previous, wrapper):
        # connect() on a wrapper that was already connected drops the old session (the
        # record may also be a copied wrapper's: copy.copy() shares the attribute).
        _on_abandon_now(previous)
    record.backend_pid = drivers.backend_pid(conn)
    if record.pooled:
        psycopg_pools.checked_out(record, conn)
    if metric_hooks.recorder is not None:
        metric_hooks.recorder.connected(wrapper, record, time.monotonic() - record.opened_mono)
    if debug:
        _report_opened(record)
    if observers:
        notify(Observed.OPENED, wrapper, record)


def _report_opened(record: records.ConnectionRecord) -> None:
    """Emit ``connection_opened`` for a new session, ``connection_checked_out`` for a pool's lent one."""
    fields = base_fields(record)
    event = Event.CONNECTION_OPENED
    if record.pooled:
        fields["pooled"] = True
        if not record.new_session:
            event = Event.CONNECTION_CHECKED_OUT
    events.emit(DEBUG, event, fields)


def _held_by(record: records.ConnectionRecord, wrapper: Any) -> bool:
    ref = record.wrapper_ref
    return ref is not None and ref() is wrapper


def _on_abandon_now(record: records.ConnectionRecord) -> None:
    end_without_close(record, Outcome.ABANDONED)
    _report_abandoned(record)


def _forget(record: records.ConnectionRecord) -> None:
    ref = record.wrapper_ref
    if ref is not None and ref.record is record:
        ref.record = None


def _end(record: records.ConnectionRecord, now: float) -> None:
    record.closed_mono = now
    _forget(record)
    records.registry.ended(record)


def end_without_close(
    record: records.ConnectionRecord,
    outcome: Outcome,
    closed_by: Optional[str] = None,
    thread: Optional[str] = None,
) -> None:
    """End ``record`` for a session that went away without Django closing it (abandoned, discarded)."""
    _end(record, time.monotonic())
    attempt = records.CloseAttempt(
        time.time(), process.pid, thread or process.thread_name(), (), outcome, closed_by
    )
    record.add_close(attempt)


def _report_close(
    record: records.ConnectionRecord, attempt: records.CloseAttempt, exc: Optional[BaseException]
) -> None:
    if attempt.outcome is Outcome.NOOP:
        return
    if exc is not None:
        metric_hooks.count_anomaly(Event.CONNECTION_CLOSE_FAILED, record.alias)
        fields = anomaly_fields(record)
        fields.update(error_type=attempt.error_type, error=attempt.error, downgraded=True)
        events.emit(WARNING, Event.CONNECTION_CLOSE_FAILED, fields)
    elif attempt.outcome == Outcome.ALREADY_CLOSED:
        fields = anomaly_fields(record)
        fields["closed_by"] = attempt.closed_by
        if attempt.direct_close:
            fields.update(attempt.direct_close)
        if record.lost is not None:
            # connection_lost already warned about this session: its close is the expected end.
            fields["cause"] = record.lost
            events.emit(INFO, Event.CONNECTION_DOUBLE_CLOSE, fields)
        else:
            metric_hooks.count_anomaly(Event.CONNECTION_DOUBLE_CLOSE, record.alias)
            events.emit(WARNING, Event.CONNECTION_DOUBLE_CLOSE, fields)
    elif events.enabled(DEBUG):
        fields = base_fields(record)
        fields.update(outcome=attempt.outcome, age_s=record.age_s(), close_count=record.close_count)
        events.emit(DEBUG, Event.CONNECTION_CLOSED, fields)


def start_close(wrapper: Any, record: records.ConnectionRecord, shown: bool) -> records.CloseAttempt:
    """Record a close attempt before the real close: the code after it meets cold caches.

    ``shown``: debug events or a panel will show this close, so a normal close
    keeps its whole stack too.
    """
    conn = wrapper.connection
    now = time.monotonic()
    settings = conf.get()
    if conn is None or wrapper.closed_in_transaction or record.state is not State.OPEN:
        outcome, closed_by = Outcome.NOOP, None
    else:
        # The socket is polled for sessions old enough for a server or pooler to have ended
        # them unseen, and for any that crossed a fork (a child may have ended it).
        crossed_a_fork = bool(record.open_at_forks) or record.inherited
        closed_by = drivers.closed_state(
            conn, crossed_a_fork or now - record.opened_mono >= settings["SOCKET_CHECK_AFTER_S"]
        )
        if closed_by is not None:
            outcome = Outcome.ALREADY_CLOSED
            if closed_by is ClosedBy.SERVER and crossed_a_fork:
                closed_by = ClosedBy.SERVER_OR_FORKED_CHILD
        elif record.pooled:
            outcome = Outcome.RETURNED_TO_POOL
        else:
            outcome = Outcome.CLOSED
    depth = settings["STACK_DEPTH"]
    if not shown and outcome in NORMAL_OUTCOMES and depth > NORMAL_CLOSE_FRAMES:
        depth = NORMAL_CLOSE_FRAMES
    attempt = records.CloseAttempt(
        time.time(), process.pid, process.thread_name(), stacks.capture(depth, skip=2), outcome, closed_by
    )
    if closed_by is ClosedBy.APPLICATION:
        _describe_direct_close(conn, record, attempt)
    record.add_close(attempt)
    if outcome is not Outcome.NOOP:
        _end(record, now)
        if metric_hooks.recorder is not None:
            metric_hooks.recorder.ended(record)
    return attempt


def _describe_direct_close(
    conn: Any, record: records.ConnectionRecord, attempt: records.CloseAttempt
) -> None:
    """Name (psycopg 3: counted in ``closes`` when it happened) or bound the application's own close."""
    closed_in = stacks.frame_filter().first_user_frame(attempt.stack)
    attempt.direct_close = direct_closes.fields(
        conn,
        (record.use_mono, record.use_stack or record.stack),
        record,
        f"this close {stacks.in_place(closed_in)} at {records.iso_time(attempt.at)}",
    )


def finish_close(
    wrapper: Any,
    record: records.ConnectionRecord,
    attempt: records.CloseAttempt,
    exc: Optional[BaseException],
) -> None:
    try:
        if exc is not None:
            predicted_noop = attempt.outcome is Outcome.NOOP
            attempt.outcome = Outcome.FAILED
            attempt.error_type = type(exc).__name__
            attempt.error = events.error_text(exc)
            if predicted_noop:
                # The driver's close ran after all: start_close() did not end the record.
                _end(record, time.monotonic())
        _report_close(record, attempt, exc)
        if observers:
            notify(Observed.CLOSE_ATTEMPTED, wrapper, record)
    except Exception as internal:
        events.internal_error("close", internal)


def downgrade(wrapper: Any, record: Optional[records.ConnectionRecord], exc: BaseException) -> None:
    # Django's close() has already left the wrapper closed (connection is None,
    # or closed_in_transaction inside an atomic block): the next use reconnects.
    where = ""
    if record is not None:
        try:
            where = f" (opened {stacks.in_place(record.opened_in())})"
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
    frame = sys._getframe(2)  # the caller of downgrade's caller
    level = 2
    try:
        while frame is not None and filter_.is_plumbing_or_django(frame.f_code.co_filename):
            frame = frame.f_back
            level += 1
    finally:
        del frame
    return level


def record_of(wrapper: Any) -> Optional[records.ConnectionRecord]:
    """Return the record of the session ``wrapper`` holds or last held."""
    return wrapper.__dict__.get(RECORD_ATTR)
