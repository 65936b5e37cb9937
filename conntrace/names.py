"""The words conntrace's users see, each defined once: outcomes, closers, states, policies, events.

Every module imports its words from here. Members are ``StrEnum``s: they
compare equal to their plain value and serialise as it (JSON, ``str()``,
f-strings, and ``repr()`` for key=value renderers), so events, records and the
panel's stored stats carry plain strings. No two names share a value.
"""

from __future__ import annotations

import logging
from enum import IntEnum, StrEnum


class Name(StrEnum):
    """A word users see: its ``repr`` is its value's, as a log line should print it."""

    def __repr__(self) -> str:
        return repr(self.value)


class State(Name):
    """Whether a record's session is open or has ended."""

    OPEN = "open"
    ENDED = "ended"


class Outcome(Name):
    """How one close attempt (or the end of a session without one) went."""

    CLOSED = "closed"
    RETURNED_TO_POOL = "returned_to_pool"  # Django's psycopg pool: close() returns it
    ALREADY_CLOSED = "already_closed"  # the driver connection was closed before Django's close
    NOOP = "noop"  # Django's wrapper was already closed: Django returned silently
    FAILED = "failed"  # the driver raised while closing
    ABANDONED = "abandoned"  # the wrapper was garbage-collected (or reconnected) while open
    DISCARDED_AFTER_FORK = "discarded_after_fork"  # a forked child dropped its inherited copy


# Closes that end a session the way it should end.
NORMAL_OUTCOMES = frozenset({Outcome.CLOSED, Outcome.RETURNED_TO_POOL})
# Close attempts that are not a problem (a no-op repeat close is Django's own habit).
CLEAN_OUTCOMES = NORMAL_OUTCOMES | {Outcome.NOOP}
# Outcomes that are a warning where a person reads them (events, the panel).
WARNING_OUTCOMES = frozenset({Outcome.ALREADY_CLOSED, Outcome.FAILED, Outcome.ABANDONED})


class ClosedBy(Name):
    """Who had already closed a connection that Django then closed again."""

    APPLICATION = "application"  # code closed the driver connection directly
    SERVER = "server"  # the server or a pooler ended the session
    SERVER_OR_FORKED_CHILD = "server_or_forked_child"  # as SERVER, for a session that crossed a fork


class Discard(Name):
    """How a forked child dropped an inherited connection (``closed_by`` of a discard)."""

    SOCKET_DETACHED = "socket detached"  # the descriptor now points at /dev/null
    KEPT_UNCLOSED = "kept unclosed"  # no descriptor: the driver object is kept, never closed
    WRAPPER_GONE = "wrapper already gone"


class Policy(Name):
    """``FORK_POLICY``: what a forked child does with a connection its parent opened."""

    RESET = "reset"
    WARN = "warn"
    RAISE = "raise"


class Event(Name):
    """Event names, as structlog's ``event`` field."""

    CONNECTION_OPENED = "connection_opened"
    CONNECTION_CLOSED = "connection_closed"
    CONNECTION_DOUBLE_CLOSE = "connection_double_close"
    CONNECTION_CLOSE_FAILED = "connection_close_failed"
    CONNECTION_ABANDONED = "connection_abandoned"
    CONNECTION_OPEN_AT_FORK = "connection_open_at_fork"
    CONNECTION_FORK_INHERITED = "connection_fork_inherited"
    CONNECTION_INHERITED_USED = "connection_inherited_used"
    CONNECTION_LOST = "connection_lost"  # a database operation failed because its session is gone
    INTERNAL_ERROR = "conntrace_internal_error"
    SETTINGS_INVALID = "conntrace_settings_invalid"
    REPORTS_REPEATED = "conntrace_reports_repeated"  # info, at exit: reports emitted once, then counted
    POOL_EXHAUSTED = "pool_exhausted"  # error: a pool checkout timed out; who holds the connections
    CONNECTION_CHECKED_OUT = "connection_checked_out"  # debug: a pool lent an existing session
    CONNECTION_HELD_LONG = "connection_held_long"  # warning: checked out or in a transaction too long
    ASGI_PERSISTENT_CONNECTIONS = "asgi_persistent_connections"  # warning: CONN_MAX_AGE under ASGI
    CONNECTIONS_LIVE = "connections_live"  # info: LIVE_SIGNAL received, what the process holds
    LIVE_SIGNAL_REFUSED = "conntrace_live_signal_refused"  # warning: the signal is the application's


class Cause(Name):
    """Why a session was lost, as ``connection_lost`` says it (``cause``)."""

    TERMINATED_BY_ADMIN = "terminated_by_admin"  # 57P01, pg_terminate_backend() (see losses.py)
    SERVER_SHUTDOWN = "server_shutdown"  # 57P01 with the server's other sessions ended too, or 57P03
    SERVER_CRASH = "server_crash"  # 57P02: another server process crashed
    IDLE_SESSION_TIMEOUT = "idle_session_timeout"  # 57P05
    IDLE_IN_TRANSACTION_TIMEOUT = "idle_in_transaction_timeout"  # 25P03
    POOLER = "pooler"  # pgbouncer ended the client's session, in its own words
    FORKED_SIBLING = "forked_sibling"  # the session crossed fork(): another process closed or used it
    CLOSED_BY_APPLICATION = "closed_by_application"  # code closed the driver connection directly
    NETWORK = "network"  # no SQLSTATE: the socket was reset, timed out or reached end-of-file
    UNKNOWN = "unknown"


class ForkNoticed(Name):
    """How a process learnt that it is a forked child holding its parent's connections."""

    AT_FORK_HOOK = "at_fork_hook"  # Python's os.register_at_fork (os.fork, multiprocessing, gunicorn)
    UWSGI_POST_FORK = "uwsgi_post_fork"  # uWSGI forks from C: its post-fork hook told us
    AT_CONNECT = "at_connect"  # nobody told us: the process id differed at the next connect,
    AT_USE = "at_use"  # ... at the connection's next use (a new cursor),
    AT_CLOSE = "at_close"  # ... or at its next close


class HandledBy(Name):
    """Who else makes a forked child's inherited connections safe, so that it is not a problem."""

    DJANGO_TEST_RUNNER = "django_test_runner"  # manage.py test --parallel: each worker closes its copy
    CELERY_DJANGO_FIXUP = "celery_django_fixup"  # Celery's worker_process_init drops inherited ones


class Level(IntEnum):
    """The levels events are emitted at (the standard library's numbers)."""

    DEBUG = logging.DEBUG
    INFO = logging.INFO
    WARNING = logging.WARNING
    ERROR = logging.ERROR


class Observed(Name):
    """What an observer (a debugging tool such as the toolbar panel) is told about a connection."""

    OPENED = "opened"
    USED = "used"  # its first use in a request, or after a fork
    CLOSE_ATTEMPTED = "close_attempted"


class Origin(Name):
    """The panel: where a connection the request touched came from."""

    REQUEST = "request"  # opened by the application during this request
    TOOLBAR = "toolbar"  # opened during this request by the toolbar's own store
    EARLIER = "earlier"  # opened before this request (or by another process)


class RequestEnd(Name):
    """The panel: whether the close Django makes at ``request_finished`` is in the stored stats."""

    PENDING = "pending"  # stats stored before request_finished, which will close something
    SEEN = "seen"  # stored again after request_finished
    NONE = "none"  # nothing to wait for


class AtRequestEnd(Name):
    """The panel: what Django's ``close_old_connections`` will do with an open connection."""

    CLOSES = "closes"
    CHECKED = "checked"  # errors occurred: Django checks it is usable, and closes it if not
    KEPT = "kept"


class PanelBadge(Name):
    """The panel: the label of each badge a connection can carry."""

    DOUBLE_CLOSE = "double close"
    CLOSE_ERROR = "close error"
    CLOSE_ERROR_DOWNGRADED = "close error downgraded"
    FORK_INHERITED = "fork-inherited"
    DRIVER_CLOSED = "driver closed behind Django's back"
    REPEAT_CLOSE = "repeat close (no-op)"
    TOOLBAR_STORE = "opened by the toolbar's store"
    LOST = "session lost"


class CloseWhen(Name):
    """The panel: when a close attempt happened, relative to the request shown."""

    BEFORE = "before this request"
    DURING = "during this request"
    AT_END = "at request end"


class PanelNote(Name):
    """The panel: badges and lines saying why a connection matters, and when things happened."""

    BEFORE_FIRST_REQUEST = "opened before the first request"  # at import time, in this process
    OTHER_PROCESS = "opened by another process"
    SHARED_BY_WORKERS = "a preforking server would share it with every worker; see preflight"
    INTO_REQUEST = "+{} into the request"
    BEFORE_REQUEST = "{} before the request"
    KEPT_FOR_REUSE = "open: kept for reuse (CONN_MAX_AGE)"
    REQUEST_END_MARK = "request end"


class Placeholder(Name):
    """What a field says when what it names does not exist."""

    NO_APPLICATION_FRAME = "no application frame"  # opened_in / closed_in / forked_in: all hidden


class Metric(Name):
    """OpenTelemetry instruments: the database-metrics conventions' (``db.client.*``) and conntrace's own."""

    CONNECTION_COUNT = "db.client.connection.count"
    CREATE_TIME = "db.client.connection.create_time"
    USE_TIME = "db.client.connection.use_time"
    WAIT_TIME = "db.client.connection.wait_time"
    TIMEOUTS = "db.client.connection.timeouts"
    PENDING_REQUESTS = "db.client.connection.pending_requests"
    MAX = "db.client.connection.max"
    IDLE_MAX = "db.client.connection.idle.max"
    IDLE_MIN = "db.client.connection.idle.min"
    ANOMALIES = "conntrace.connection.anomalies"  # attribute conntrace.event: the anomaly's event name
    AGE = "conntrace.connection.age"  # at close


class MetricAttribute(Name):
    """The attributes of conntrace's OpenTelemetry measurements."""

    POOL_NAME = "db.client.connection.pool.name"  # "alias/host:port/database" (metrics.pool_name)
    STATE = "db.client.connection.state"  # a ConnectionState
    EVENT = "conntrace.event"


class ConnectionState(Name):
    """``db.client.connection.state``, the conventions' words (so outside VOCABULARY: Observed has "used").

    Used: a pool's checked-out connection; a persistent one from the unit of
    work (request, Celery task) that opened or used it until that unit ends.
    Idle: open and waiting, in a pool or between units of work.
    """

    IDLE = "idle"
    USED = "used"


class GuardMode(Name):
    """The test-suite guards (pytest plugin, Django test runner): their ``--conntrace`` option."""

    OFF = "off"  # nothing installed, nothing wrapped
    REPORT = "report"  # findings listed at the end of the run
    STRICT = "strict"  # the test that caused a finding fails (at teardown: its own result is kept)


class FindingKind(Name):
    """What the test-suite guards find about one test's connections (``kind`` of a finding)."""

    THREAD_LEFT_OPEN = "thread_left_open"  # opened by the test in another thread, still open after it
    ABANDONED = "abandoned_unclosed"  # opened by the test, garbage-collected while open
    DOUBLE_CLOSE = "double_close"  # Django closed a connection someone had already closed
    CLOSE_ERROR = "close_error"  # the driver raised while closing (downgraded to CloseErrorWarning)
    CROSSED_FORK = "import_connection_crossed_fork"  # opened at import or collection, open at a fork
    POOL_LEFT_OPEN = "pool_left_open"  # a test-mirror alias's psycopg pool: Django never closes it


VOCABULARY: tuple[type[Name], ...] = (
    State,
    Outcome,
    ClosedBy,
    Discard,
    Policy,
    Event,
    Cause,
    ForkNoticed,
    HandledBy,
    Observed,
    Origin,
    RequestEnd,
    AtRequestEnd,
    PanelBadge,
    CloseWhen,
    PanelNote,
    Placeholder,
    Metric,
    MetricAttribute,
    GuardMode,
    FindingKind,
)
