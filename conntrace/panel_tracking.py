"""Which database connections one toolbar request used, from the panel's start to ``request_finished``.

While the Connections panel is enabled for a request, :func:`observe` is one of
conntrace's ``observers``: it is registered when the first such
request starts and removed when the last one ends, so nothing listens while no
toolbar request is in flight. A request is found through a context variable
(WSGI, and the threads ASGI runs sync code in) or, at ``request_finished`` under
ASGI, which runs in another context, through the threads the request used.

The toolbar's own store (``DatabaseStore``, or ``CacheStore`` on the database
cache) writes through the ORM, inside the request too: any activity that comes
from ``debug_toolbar/store.py`` is the toolbar's, never the application's.
Nothing here imports ``debug_toolbar``.
"""

from __future__ import annotations

import contextvars
import os
import sys
import threading
import time
from collections.abc import Callable
from typing import Any, Optional

from django.core.signals import request_finished
from django.db import close_old_connections, connections

from conntrace import events, instrument, process, records, stacks
from conntrace.names import Observed, Origin, State

RECEIVER_UID = "conntrace.panels.request_finished"
STALE_S = 300.0  # a request whose request_finished never came is forgotten after this long
_STORE_FILE = os.path.join("debug_toolbar", "store.py")


class Touch:
    """A connection the request used: its record, and where this request's part of its story starts."""

    __slots__ = ("closes_at_stats", "closes_before", "origin", "record")

    def __init__(self, record: records.ConnectionRecord, origin: Origin, closes_before: int) -> None:
        self.record = record
        self.origin = origin
        self.closes_before = closes_before
        self.closes_at_stats: Optional[int] = None


class Session:
    """What one toolbar request did with connections, from enable_instrumentation to request_finished."""

    def __init__(self, save: Optional[Callable[[Session], None]] = None) -> None:
        # Called at request_finished with this session, to store the stats again.
        self.save = save
        self.started_mono = time.monotonic()
        self.started_at = time.time()  # wall clock, as close attempts are timed
        # Between the toolbar's stats and request_finished: only this request's closes count.
        self.paused = False
        self.touched: dict[int, Touch] = {}
        # Threads where the request used a connection (under ASGI, not the one that enabled the panel).
        self.threads: set[int] = set()
        self.stats_recorded = False
        self.late = False
        self.end_pending = False

    def observe(self, kind: Observed, record: records.ConnectionRecord) -> None:
        if self.paused:
            # Between the toolbar's stats and request_finished only closes of this
            # request's connections count: the rest is the toolbar storing its stats.
            if kind == Observed.CLOSE_ATTEMPTED and record.conn_id in self.touched:
                self.late = True
            return
        self.threads.add(threading.get_ident())
        if record.conn_id in self.touched:
            return
        if kind == Observed.USED and record.state != State.OPEN:
            return  # Django's connect() uses the wrapper before conntrace has its new record
        if kind == Observed.OPENED:
            if not opened_by_toolbar(record):
                self.touched[record.conn_id] = Touch(record, Origin.REQUEST, 0)
            return
        if toolbar_in_stack():
            return
        if opened_by_toolbar(record):
            origin = Origin.TOOLBAR
        elif record.pid == process.pid and record.opened_mono >= self.started_mono:
            origin = Origin.REQUEST
        else:
            origin = Origin.EARLIER
        before = record.close_count - (1 if kind == Observed.CLOSE_ATTEMPTED else 0)
        self.touched[record.conn_id] = Touch(record, origin, before)

    def pause(self) -> None:
        self.paused = True
        with _lock:
            for ident in self.threads:
                _by_thread[ident] = self

    def finish(self) -> None:
        """Store the stats again when the request's end changed them."""
        save = self.save
        if save is None or not self.stats_recorded or not (self.late or self.end_pending):
            return
        save_quietly(lambda: save(self))


_current: contextvars.ContextVar[Optional[Session]] = contextvars.ContextVar("conntrace_panel", default=None)
# ASGI closes a request in another context than the one its middleware ran in: find it by thread.
_by_thread: dict[int, Session] = {}
_sessions: set[Session] = set()
_lock = threading.Lock()


def observe(kind: Observed, wrapper: Any, record: records.ConnectionRecord) -> None:
    """Pass a connection event to the toolbar request it belongs to, if any (an ``instrument`` observer)."""
    session = _current.get() or _by_thread.get(threading.get_ident())
    if session is not None:
        session.observe(kind, record)


def _on_request_finished(**kwargs: Any) -> None:
    session = _current.get() or _by_thread.get(threading.get_ident())
    if session is None:
        return
    stop(session)
    try:
        session.finish()
    except Exception as exc:
        events.internal_error("panel_request_finished", exc)


def start(session: Session) -> None:
    """Listen for ``session``'s request (the current context) until ``stop``."""
    with _lock:
        now = time.monotonic()
        for stale in [s for s in _sessions if now - s.started_mono > STALE_S]:
            _forget(stale)
        _sessions.add(session)
        instrument.add_observer(observe)
        connect_receiver_after_django()
    _current.set(session)


def stop(session: Session) -> None:
    """Stop listening for ``session``; unregister everything once no toolbar request is in flight."""
    _current.set(None)
    with _lock:
        _forget(session)
        if not _sessions:
            instrument.remove_observer(observe)
            request_finished.disconnect(dispatch_uid=RECEIVER_UID)


def _forget(session: Session) -> None:
    _sessions.discard(session)
    for ident in [i for i, s in _by_thread.items() if s is session]:
        del _by_thread[ident]


def connect_receiver_after_django() -> None:
    """Connect the request_finished receiver so that it runs after Django's close_old_connections.

    Receivers run in the order they were connected. Django's test client
    disconnects and reconnects close_old_connections around each response,
    which can move it behind ours: then ours is connected again, at the end.
    """
    try:
        ids = [entry[0][0] for entry in request_finished.receivers]
    except (TypeError, IndexError):  # another layout of Signal.receivers: connect once, as usual
        ids = []
    if RECEIVER_UID in ids:
        django_id = id(close_old_connections)
        if django_id not in ids or ids.index(django_id) < ids.index(RECEIVER_UID):
            return
        request_finished.disconnect(dispatch_uid=RECEIVER_UID)
    request_finished.connect(_on_request_finished, weak=False, dispatch_uid=RECEIVER_UID)


def opened_by_toolbar(record: records.ConnectionRecord) -> bool:
    return any(code.co_filename.endswith(_STORE_FILE) for code in stacks.codes(record.stack))


def toolbar_in_stack(limit: int = 60) -> bool:
    """Return True when the current call comes from the toolbar's store (its own ORM writes)."""
    frame = sys._getframe(2)
    try:
        while frame is not None and limit:
            if frame.f_code.co_filename.endswith(_STORE_FILE):
                return True
            frame = frame.f_back
            limit -= 1
        return False
    finally:
        del frame


def save_quietly(save: Callable[[], None]) -> None:
    """Run the toolbar's store write ``save``; close any connection that write had to open."""
    held = {w.alias for w in connections.all(initialized_only=True) if w.connection is not None}
    try:
        save()
    except Exception as exc:
        events.internal_error("panel_store", exc)
    finally:
        for wrapper in connections.all(initialized_only=True):
            if wrapper.alias not in held and wrapper.connection is not None:
                try:
                    wrapper.close()
                except Exception as exc:
                    events.internal_error("panel_store_close", exc)
