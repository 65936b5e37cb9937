"""Who killed it: a lost session classified at the moment the application sees the error.

Nothing runs on a query that succeeds. Django sets ``errors_occurred = True``
on its wrapper only on the error path, inside ``DatabaseErrorWrapper.__exit__``,
for every error that may make the connection unusable (all but DataError and
IntegrityError), while the driver's exception is the one being handled. While
conntrace is installed, ``errors_occurred`` is a property of
``BaseDatabaseWrapper`` that keeps its value in the instance's ``__dict__``
(where Django's own attribute lives, so ``uninstall()`` only deletes the
property) and, when it becomes True, asks the driver whether the session is
gone. If it is, ``connection_lost`` is emitted once for the session, with its
cause. Observation only: the application's exception goes on unchanged.

57P01 ("terminating connection due to administrator command") is sent both by
``pg_terminate_backend()`` and to every session at a fast shutdown, with the
same text. conntrace never asks the server from a hook, so it decides on what
this process can see at that moment: the loss is ``server_shutdown`` when
another session of this process to the same server (host and port) has been
ended too, or when a loss this process already classified as a shutdown of
that server came after this session opened; otherwise ``terminated_by_admin``.
``cause_evidence`` says which.
"""

from __future__ import annotations

import logging
import sys
import time
from typing import Any, Optional

from django.db.backends.base.base import BaseDatabaseWrapper

from conntrace import (
    conf,
    direct_closes,
    drivers,
    events,
    metric_hooks,
    process,
    records,
    stacks,
    transactions,
)
from conntrace.fields import anomaly_fields
from conntrace.lifecycle import record_of
from conntrace.names import Cause, ClosedBy, Event, State

ATTR = "errors_occurred"
WARNING = logging.WARNING

CAUSE_BY_SQLSTATE = {
    "57P02": Cause.SERVER_CRASH,  # crash_shutdown
    "57P03": Cause.SERVER_SHUTDOWN,  # cannot_connect_now
    "57P05": Cause.IDLE_SESSION_TIMEOUT,  # idle_session_timeout (PostgreSQL 14+)
    "25P03": Cause.IDLE_IN_TRANSACTION_TIMEOUT,  # idle_in_transaction_session_timeout
}
ADMIN_SHUTDOWN = "57P01"
LOSS_SQLSTATES = frozenset({ADMIN_SHUTDOWN, *CAUSE_BY_SQLSTATE})
# The server's own words, for a driver that reports the message without its SQLSTATE.
SQLSTATE_BY_MESSAGE = (
    ("terminating connection due to administrator command", ADMIN_SHUTDOWN),
    ("terminating connection because of crash of another server process", "57P02"),
    ("the database system is shutting down", "57P03"),
    ("terminating connection due to idle-session timeout", "57P05"),
    ("terminating connection due to idle-in-transaction timeout", "25P03"),
)
# pgbouncer sends its own errors as protocol_violation.
POOLER_SQLSTATE = "08P01"
# pgbouncer's own reasons for ending a client's session (pgbouncer 1.x, src/*.c).
POOLER_MESSAGES = (
    "server conn crashed?",
    "client_idle_timeout",
    "server_idle_timeout",
    "idle transaction timeout",
    "query_timeout",
    "query_wait_timeout",
    "client_login_timeout",
    "pgbouncer cannot connect to server",
    "server login has been failing",
    "database removed",
    "database configuration changed",
    "server connections dropped",
    "no more connections allowed",
)
# Frames of Django's cursor layer: a failure there is a query on the cursor last opened.
CURSOR_CODE_NAMES = frozenset({"_execute", "_executemany", "callproc", "_cursor", "create_cursor"})
SEARCHED_FRAMES = 12


def _get(wrapper: Any) -> bool:
    return wrapper.__dict__.get(ATTR, False)


def _set(wrapper: Any, value: bool) -> None:
    wrapper.__dict__[ATTR] = value
    if value and process.active:
        on_error(wrapper)


ERRORS_OCCURRED = property(_get, _set, doc="Django's flag, watched by conntrace (see conntrace.losses).")

# (host, port) -> time.monotonic() when a loss of a session there was classified as a shutdown.
_shutdowns: dict[tuple[str, str], float] = {}


def install() -> None:
    """Watch Django's ``errors_occurred`` (a second call is a no-op)."""
    if BaseDatabaseWrapper.__dict__.get(ATTR) is not ERRORS_OCCURRED:
        setattr(BaseDatabaseWrapper, ATTR, ERRORS_OCCURRED)


def uninstall() -> None:
    """Give Django back its plain attribute (kept all along in each wrapper's ``__dict__``)."""
    if BaseDatabaseWrapper.__dict__.get(ATTR) is ERRORS_OCCURRED:
        delattr(BaseDatabaseWrapper, ATTR)


def on_error(wrapper: Any) -> None:
    """Emit ``connection_lost`` if the error Django is handling ended ``wrapper``'s session; never raise."""
    try:
        exc = sys.exc_info()[1]
        record = record_of(wrapper)
        conn = wrapper.connection
        if exc is None or conn is None or record is None:
            return
        if record.state is not State.OPEN or record.lost is not None:
            return
        fields = _lost_fields(wrapper, record, conn, exc)
        if fields is not None:
            record.lost = fields["cause"]
            metric_hooks.count_anomaly(Event.CONNECTION_LOST, record.alias)
            events.emit(WARNING, Event.CONNECTION_LOST, fields)
    except Exception as internal:
        events.internal_error("lost", internal)


def _sqlstate(exc: BaseException, text: str) -> tuple[Optional[str], bool]:
    """Return the error's SQLSTATE and whether the driver gave it (else read from the messages)."""
    code = drivers.sqlstate(exc)
    if code is not None:
        return code, True
    for message, inferred in SQLSTATE_BY_MESSAGE:
        if message in text:
            return inferred, False
    return None, False


def _lost_fields(wrapper: Any, record: records.ConnectionRecord, conn: Any, exc: BaseException) -> Any:
    closed = drivers.closed_state(conn, poll_socket=False)
    text = events.error_text(exc)
    server_message = events.redact(drivers.server_message(conn))
    seen = f"{text}\n{server_message}"
    code, sent = _sqlstate(exc, seen)
    pooler = None
    if closed is not None or code == POOLER_SQLSTATE:  # never an application's text that looks alike
        pooler = next((message for message in POOLER_MESSAGES if message in seen), None)
    if closed is None and pooler is None and code not in LOSS_SQLSTATES:
        return None  # an error on a session that is still there
    now = time.monotonic()
    failed = stacks.capture(conf.get()["STACK_DEPTH"], skip=3)
    ff = stacks.frame_filter()
    failed_in = ff.first_user_frame(failed)
    use_mono, use_stack = _use_before_failure(record)
    fields = anomaly_fields(record)
    fields.update(sqlstate=code, error_type=type(exc).__name__, error=text)
    if server_message and server_message != text:
        fields["server_message"] = server_message  # psycopg2: libpq kept the server's own words
    cause, evidence = _classify(wrapper, record, closed, code, sent, pooler, now, fields)
    if cause is Cause.CLOSED_BY_APPLICATION:
        until = f"this error in {failed_in} at {records.iso_time(time.time())}"
        fields.update(direct_closes.fields(conn, (use_mono, use_stack), record, until))
    fields.update(
        cause=cause,
        cause_evidence=evidence,
        failed_in=failed_in,
        idle_s=round(now - use_mono, 6),
        last_used_in=ff.first_user_frame(use_stack),
        transaction_started_in=transactions.started_in(wrapper),
    )
    return fields


def _use_before_failure(record: records.ConnectionRecord) -> tuple[float, stacks.RawStack]:
    """Return the time and line of the use that came before the failing operation.

    A failure in Django's cursor layer is a query on the cursor the use hook
    just saw (the ORM opens one per query), so the use before is the one
    before that; a commit, a rollback or a close fails after the last use.
    The line is the first use's in that use's request or task (kept once per
    request, see wrappers.wrap_use); never used: the opening was its use.
    """
    frame: Any = sys._getframe(3)
    on_cursor = False
    try:
        for _ in range(SEARCHED_FRAMES):
            if frame is None:
                break
            if frame.f_code.co_name in CURSOR_CODE_NAMES and "django" in frame.f_code.co_filename:
                on_cursor = True
                break
            frame = frame.f_back
    finally:
        del frame
    used = record.previous_use_mono if on_cursor else record.use_mono
    if used is None:
        return record.opened_mono, record.stack
    stack = record.use_stack
    if on_cursor and record.use_stack_mono == record.use_mono:
        stack = record.previous_use_stack  # the failing cursor was its request's first use
    return used, stack  # () unless uses are watched: last_used_in is then unknown, not the opening


def _server(wrapper: Any) -> tuple[str, str]:
    settings = wrapper.settings_dict
    return (str(settings.get("HOST") or ""), str(settings.get("PORT") or ""))


def _classify(
    wrapper: Any,
    record: records.ConnectionRecord,
    closed: Optional[ClosedBy],
    code: Optional[str],
    sent: bool,
    pooler: Optional[str],
    now: float,
    fields: dict[str, Any],
) -> tuple[Cause, str]:
    said = f"SQLSTATE {code}" if sent else f"the server's message for SQLSTATE {code}"
    if code == ADMIN_SHUTDOWN:
        return _admin_or_shutdown(wrapper, record, now, said)
    if code in CAUSE_BY_SQLSTATE:
        cause = CAUSE_BY_SQLSTATE[code]
        if cause is Cause.SERVER_SHUTDOWN or cause is Cause.SERVER_CRASH:
            _shutdowns[_server(wrapper)] = now
        return cause, said
    if pooler is not None:
        return Cause.POOLER, f"pgbouncer's message {pooler!r}" + (f" (SQLSTATE {code})" if sent else "")
    if closed is ClosedBy.APPLICATION:
        return Cause.CLOSED_BY_APPLICATION, "the driver connection was closed, not broken, before this use"
    if record.open_at_forks or record.inherited:
        return Cause.FORKED_SIBLING, _fork_evidence(record, fields)
    if code is None and closed is ClosedBy.SERVER:
        return Cause.NETWORK, "no SQLSTATE; the driver reports the connection broken"
    seen = f"SQLSTATE {code}" if code else "no SQLSTATE"
    return Cause.UNKNOWN, f"{seen}; the driver reports the connection {closed or 'open'}"


def _admin_or_shutdown(
    wrapper: Any, record: records.ConnectionRecord, now: float, said: str
) -> tuple[Cause, str]:
    server = _server(wrapper)
    ended = _other_sessions_ended(wrapper, record, server)
    if ended:
        _shutdowns[server] = now
        sessions = ", ".join(f"{r.alias} (conn_id {r.conn_id})" for r in ended)
        return Cause.SERVER_SHUTDOWN, f"{said}; this process's other sessions there ended too: {sessions}"
    seen = _shutdowns.get(server)
    if seen is not None and seen >= record.opened_mono:
        ago = round(now - seen, 3)
        return Cause.SERVER_SHUTDOWN, f"{said}; a shutdown of the server seen {ago} s ago, since it opened"
    return Cause.TERMINATED_BY_ADMIN, f"{said}; no other session of this process to the server ended with it"


def _other_sessions_ended(
    wrapper: Any, record: records.ConnectionRecord, server: tuple[str, str]
) -> list[records.ConnectionRecord]:
    """Return the other open sessions of this process to ``server`` that the server has ended too.

    Their driver flags are read and their sockets peeked at: nothing is sent.
    """
    ended = []
    for other in records.registry.open_records():
        other_wrapper = other.wrapper_ref() if other is not record and other.wrapper_ref else None
        if other_wrapper is None or other_wrapper is wrapper or _server(other_wrapper) != server:
            continue
        conn = other_wrapper.connection
        if conn is not None and drivers.closed_state(conn, poll_socket=True) is ClosedBy.SERVER:
            ended.append(other)
    return ended


def _fork_evidence(record: records.ConnectionRecord, fields: dict[str, Any]) -> str:
    if record.inherited:
        fields["other_pid"] = record.pid
        return f"inherited through fork() from process {record.pid}, which opened it and shares its socket"
    fields["open_at_forks"] = record.open_at_forks
    return (
        f"open in this process at {record.open_at_forks} fork(s): a child process shares its socket "
        "and closed or used it"
    )
