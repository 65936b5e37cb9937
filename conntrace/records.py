"""The connection record and this process's registry of them.

The registry holds no lock: every mutation is a single dict or deque
operation, atomic under the GIL, so it is safe across threads, inside
garbage-collector callbacks and in the child of a fork (where a lock held by
another thread of the parent would stay held forever).
"""

from __future__ import annotations

import datetime
import itertools
import threading
import time
import weakref
from collections import deque
from dataclasses import dataclass
from typing import Any, Optional

from conntrace.names import Outcome, State
from conntrace.stacks import RawStack, frame_filter

MAX_CLOSE_ATTEMPTS = 20  # per record; later attempts are only counted

_ids = itertools.count(1)


def take_id() -> int:
    """Return a new connection id: every later record's ``conn_id`` is greater."""
    return next(_ids)


@dataclass(slots=True)
class CloseAttempt:
    """One call to close a connection, by whom and with what outcome."""

    at: float
    pid: int
    thread: str
    stack: RawStack
    outcome: Outcome
    closed_by: Optional[str] = None  # a ClosedBy, or for a discard after fork a Discard
    error_type: Optional[str] = None
    error: Optional[str] = None
    # Event fields that name or bound an earlier direct close of the driver connection.
    direct_close: Optional[dict[str, Any]] = None

    def as_event(self) -> dict[str, Any]:
        """Return this attempt as it appears inside an event: the user's frames only."""
        ff = frame_filter()
        return {
            "at": iso_time(self.at),
            "pid": self.pid,
            "thread": self.thread,
            "outcome": self.outcome,
            "closed_by": self.closed_by,
            "error_type": self.error_type,
            "error": self.error,
            "closed_in": ff.first_user_frame(self.stack),
            "stack": ff.visible_stack(self.stack),
        }

    def as_dict(self) -> dict[str, Any]:
        """Return this attempt as plain, JSON-serialisable data, with every frame too."""
        data = self.as_event()
        data["stack_full"] = frame_filter().format_stack(self.stack)
        return data


class ConnectionRecord:
    """Everything conntrace knows about one DB session of one DatabaseWrapper."""

    __slots__ = (
        "__weakref__",
        "alias",
        "backend_pid",
        "close_count",
        "closed_mono",
        "closes",
        "conn_id",
        "context",
        "context_gen",
        "fork_gen",
        "fork_policy",
        "inherited",
        "lost",
        "new_session",
        "open_at_forks",
        "opened_at",
        "opened_mono",
        "opened_request_gen",
        "pid",
        "pooled",
        "previous_use_mono",
        "previous_use_stack",
        "stack",
        "state",
        "thread",
        "thread_ref",
        "transaction_mono",
        "transaction_stack",
        "use_mono",
        "use_stack",
        "use_stack_mono",
        "vendor",
        "wrapper_ref",
    )

    def __init__(
        self,
        alias: str,
        vendor: str,
        pid: int,
        thread: str,
        opened_at: float,
        opened_mono: float,
        stack: RawStack,
        fork_gen: int,
    ) -> None:
        self.conn_id = next(_ids)
        self.alias = alias
        self.vendor = vendor
        self.pid = pid
        self.thread = thread
        self.opened_at = opened_at
        self.opened_mono = opened_mono
        self.stack = stack
        self.backend_pid: Optional[int] = None
        self.pooled = False
        # False for a pool's checkout of a session it already had; who took it (pooled only).
        self.new_session = True
        self.thread_ref: Optional[weakref.ref] = None
        self.state = State.OPEN
        self.closes: list[CloseAttempt] = []
        self.close_count = 0
        self.closed_mono: Optional[float] = None
        self.fork_gen = fork_gen
        self.inherited = False
        self.fork_policy: Optional[str] = None
        self.open_at_forks = 0
        self.context: Optional[dict[str, Any]] = None
        self.context_gen = -1
        # process.request_gen when it opened: 0 is before this process (or its parent) began any request.
        self.opened_request_gen = -1
        self.wrapper_ref: Optional[weakref.ref] = None
        # When it was last used (a new cursor) and the time before that, for connection_lost;
        # the line is kept once per request or task (its first use there), with its time.
        self.use_mono: Optional[float] = None
        self.previous_use_mono: Optional[float] = None
        self.use_stack: RawStack = ()
        self.use_stack_mono: Optional[float] = None
        self.previous_use_stack: RawStack = ()
        self.lost: Optional[str] = None  # the cause, once connection_lost was emitted for this session
        # When and where the open transaction began (autocommit turned off: the outermost
        # atomic() or set_autocommit(False)); None outside one. Set once per transaction.
        self.transaction_mono: Optional[float] = None
        self.transaction_stack: RawStack = ()

    def add_close(self, attempt: CloseAttempt) -> None:
        """Record one close attempt (bounded: later ones are only counted)."""
        self.close_count += 1
        if len(self.closes) < MAX_CLOSE_ATTEMPTS:
            self.closes.append(attempt)

    def age_s(self, now: Optional[float] = None) -> float:
        """Return seconds since the connection opened (until it closed, if it did)."""
        end = self.closed_mono if self.closed_mono is not None else (now or time.monotonic())
        return round(end - self.opened_mono, 6)

    def idle_s(self, now: Optional[float] = None) -> float:
        """Return seconds since the last new cursor (or the opening, if none yet)."""
        last = self.use_mono if self.use_mono is not None else self.opened_mono
        return round((now or time.monotonic()) - last, 6)

    def thread_ident(self) -> Optional[int]:
        """Return the identifier of the thread whose Django wrapper holds this session, if still known."""
        wrapper = self.wrapper_ref() if self.wrapper_ref is not None else None
        return getattr(wrapper, "_thread_ident", None)

    def thread_alive(self, alive: Optional[dict[int, str]] = None) -> Optional[bool]:
        """Return whether the holding thread still runs (``alive``: ``alive_threads()``); None if unknown.

        The name is compared too: a new thread may be given an ended one's identifier.
        """
        ident = self.thread_ident()
        if ident is None:
            return None
        return (alive if alive is not None else alive_threads()).get(ident) == self.thread

    def transaction_started_in(self) -> Optional[str]:
        """Return the user's line that began the open transaction, or None outside one."""
        if self.transaction_mono is None:
            return None
        return frame_filter().first_user_frame(self.transaction_stack)

    def opened_in(self) -> Optional[str]:
        """Return the user's line that opened this connection."""
        return frame_filter().first_user_frame(self.stack)

    def opened_stack(self) -> list[str]:
        """Return the user's frames of the opening stack as ``"path:line in func"`` strings."""
        return frame_filter().visible_stack(self.stack)

    def opened_stack_full(self) -> list[str]:
        """Return every frame of the opening stack, framework frames included."""
        return frame_filter().format_stack(self.stack)

    def as_dict(self) -> dict[str, Any]:
        """Return this record as plain, JSON-serialisable data."""
        return {
            "conn_id": self.conn_id,
            "alias": self.alias,
            "vendor": self.vendor,
            "state": self.state,
            "pid": self.pid,
            "thread": self.thread,
            "opened_at": iso_time(self.opened_at),
            "age_s": self.age_s(),
            "backend_pid": self.backend_pid,
            "pooled": self.pooled,
            "new_session": self.new_session,
            "opened_in": self.opened_in(),
            "opened_stack": self.opened_stack(),
            "opened_stack_full": self.opened_stack_full(),
            "close_count": self.close_count,
            "closes": [attempt.as_dict() for attempt in self.closes],
            "inherited": self.inherited,
            "fork_policy": self.fork_policy,
            "open_at_forks": self.open_at_forks,
            "request_id": (self.context or {}).get("request_id"),
            "idle_s": self.idle_s() if self.state is State.OPEN else None,
            "thread_alive": self.thread_alive() if self.state is State.OPEN else None,
            "transaction_started_in": self.transaction_started_in(),
            "lost": self.lost,
        }


def alive_threads() -> dict[int, str]:
    """Return {identifier: name} of this process's running threads."""
    # threading.enumerate() holds threading's own list lock only while it copies the list.
    return {thread.ident: thread.name for thread in threading.enumerate() if thread.ident is not None}


def iso_time(ts: float) -> str:
    """Return a wall-clock time as UTC ISO 8601."""
    return datetime.datetime.fromtimestamp(ts, datetime.UTC).isoformat()


class Registry:
    """Records of this process: the open ones, and a bounded history of ended ones."""

    def __init__(self, max_records: int = 500) -> None:
        self.live: dict[int, ConnectionRecord] = {}
        self.history: deque[ConnectionRecord] = deque(maxlen=max_records)

    def resize(self, max_records: int) -> None:
        """Change how many ended records are kept."""
        if self.history.maxlen != max_records:
            self.history = deque(self.history, maxlen=max_records)

    def ended(self, record: ConnectionRecord) -> None:
        """Move a record from the open set to the history (idempotent)."""
        # Ended even when no longer listed (after clear()): an OPEN state left behind
        # would make the wrapper's next connect report this closed session as abandoned.
        record.state = State.ENDED
        if self.live.pop(record.conn_id, None) is not None:
            self.history.append(record)

    def open_records(self) -> list[ConnectionRecord]:
        """Return the records of connections open now."""
        return list(self.live.values())

    def ended_records(self) -> list[ConnectionRecord]:
        """Return the kept records of ended connections, oldest first."""
        return list(self.history)

    def clear(self) -> None:
        """Forget every record (for tests)."""
        self.live.clear()
        self.history.clear()


registry = Registry()
