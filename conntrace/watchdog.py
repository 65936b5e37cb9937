"""The watchdog: a daemon thread that reports connections held too long while they are still held.

A connection checked out of a pool, or inside a transaction, for longer than
``HELD_WARN_S``, or idle in a transaction for longer than
``IDLE_IN_TRANSACTION_WARN_S``, is reported once as ``connection_held_long``.
The holder may be blocked forever (a lock wait, a stuck HTTP call, a thread
that never returns), so no hook of the holder's can say it: a thread of
conntrace's own looks every ``WATCHDOG_INTERVAL_S`` seconds.

The thread only reads records (a copy of the registry's live dict: single
reads of attributes, atomic under the GIL) and emits; it never touches a
connection or the database and takes no lock the application can hold. It is
started at the first connect while conntrace is installed (a receiver of
Django's ``connection_created`` that disconnects itself), stopped at
interpreter exit (a daemon, woken by an event: no hang) and by
``WATCHDOG_INTERVAL_S=0`` (``uninstall()`` leaves it asleep and inert), and
started again in a forked child at its first safe point (threads do not
cross ``fork()``).
"""

from __future__ import annotations

import atexit
import os
import threading
import time
from typing import Any, Optional

from django.db.backends.signals import connection_created

from conntrace import conf, events, metric_hooks, process, records
from conntrace.fields import base_fields
from conntrace.names import Event, Level, State
from conntrace.stacks import frame_filter

CONNECTED_UID = "conntrace.watchdog_start"
THREAD_NAME = "conntrace-watchdog"
STOP_TIMEOUT_S = 2.0


class _Watchdog:
    """The running thread of this process, its stop signal and what it already reported."""

    def __init__(self) -> None:
        self.thread: Optional[threading.Thread] = None
        self.stop: Optional[threading.Event] = None
        self.pid = 0
        self.exiting = False
        self.at_exit_registered = False
        # (conn_id, since) of every holding already reported: a later transaction is a new holding.
        self.reported: set[tuple[int, float]] = set()


_state = _Watchdog()


def running() -> bool:
    """Return True while this process's watchdog thread runs."""
    thread = _state.thread
    return thread is not None and _state.pid == os.getpid() and thread.is_alive()


def arm() -> None:
    """Start the watchdog at the next connect (``install()``)."""
    connection_created.connect(_on_connection_created, dispatch_uid=CONNECTED_UID, weak=False)


def disarm() -> None:
    """Forget the pending start (``uninstall()``); a running watchdog sleeps on, doing nothing.

    Stopping it there would make every install/uninstall cycle (test suites, the
    benchmark's paired samples) start a thread at its next connect: in the
    benchmark's in-process W1 that was a tenth of the time. It ends at exit, and
    when ``WATCHDOG_INTERVAL_S`` becomes 0.
    """
    connection_created.disconnect(dispatch_uid=CONNECTED_UID)


def _on_connection_created(**kwargs: Any) -> None:
    connection_created.disconnect(dispatch_uid=CONNECTED_UID)  # once: the connect path stays untouched
    start()


def start() -> None:
    """Start the watchdog thread unless it runs, is turned off (interval 0) or the interpreter exits."""
    try:
        if _state.exiting or not process.active or running() or conf.get()["WATCHDOG_INTERVAL_S"] <= 0:
            return
        stop_event = threading.Event()
        thread = threading.Thread(target=_run, args=(stop_event,), name=THREAD_NAME, daemon=True)
        _state.thread, _state.stop, _state.pid = thread, stop_event, os.getpid()
        if not _state.at_exit_registered:
            atexit.register(_at_exit)
            _state.at_exit_registered = True
        thread.start()
    except Exception as exc:
        events.internal_error("watchdog_start", exc)


def stop() -> None:
    """Stop the watchdog thread and wait for it briefly (it wakes at once)."""
    thread, stop_event = _state.thread, _state.stop
    _state.thread = _state.stop = None
    if stop_event is not None:
        stop_event.set()
    if thread is not None and thread is not threading.current_thread() and thread.is_alive():
        thread.join(STOP_TIMEOUT_S)


def restart() -> None:
    """Start again with the settings just re-read, if it ran (a ``conf.on_reload`` listener)."""
    if running():
        stop()
        start()


def after_fork_in_child() -> None:
    """Forget the parent's thread (gone in the child) and start ours at the child's first safe point.

    Called from the child's at-fork hook, which must take no lock: starting a
    thread does, so it is queued with the deferred reports.
    """
    was_running = _state.thread is not None
    _state.thread = _state.stop = None
    _state.reported = set()
    if was_running:
        process.pending.append(start)


def _at_exit() -> None:
    _state.exiting = True
    stop()


def _run(stop_event: threading.Event) -> None:
    while True:
        interval = conf.get()["WATCHDOG_INTERVAL_S"]
        if interval <= 0 or stop_event.wait(interval):
            return
        try:
            if process.active:
                check()
        except Exception as exc:
            events.internal_error("watchdog", exc)


# --------------------------------------------------------------------------- one look


def held_since(record: records.ConnectionRecord) -> Optional[float]:
    """Return since when (monotonic) ``record``'s session is held: its transaction, else its checkout."""
    if record.transaction_mono is not None:
        return record.transaction_mono
    if record.pooled:
        return record.opened_mono  # a pooled record is one checkout, from connect() to close()
    return None


def check(now: Optional[float] = None) -> list[dict[str, Any]]:
    """Report every connection held too long and not yet reported; return the events' fields."""
    settings = conf.get()
    held_warn_s, idle_warn_s = settings["HELD_WARN_S"], settings["IDLE_IN_TRANSACTION_WARN_S"]
    now = time.monotonic() if now is None else now
    live = list(records.registry.live.values())
    reported = []
    alive: Optional[dict[int, str]] = None
    for record in live:
        since = held_since(record)
        # A connection inherited from a parent process is the fork reports' business.
        if since is None or record.fork_gen != process.fork_gen or record.state is not State.OPEN:
            continue
        key = (record.conn_id, since)
        if key in _state.reported:
            continue
        held_s = now - since
        idle_s = now - max(since, record.use_mono or since)
        in_transaction = record.transaction_mono is not None
        if held_s < held_warn_s and not (in_transaction and idle_s >= idle_warn_s):
            continue
        _state.reported.add(key)
        if alive is None:
            alive = records.alive_threads()
        fields = held_fields(record, held_s, idle_s, record.thread_alive(alive))
        fields.update(held_warn_s=held_warn_s, idle_in_transaction_warn_s=idle_warn_s)
        metric_hooks.count_anomaly(Event.CONNECTION_HELD_LONG, record.alias)
        if events.enabled(Level.WARNING):
            events.emit(Level.WARNING, Event.CONNECTION_HELD_LONG, fields)
        reported.append(fields)
    live_keys = {record.conn_id for record in live}
    _state.reported = {key for key in _state.reported if key[0] in live_keys}
    return reported


def held_fields(
    record: records.ConnectionRecord, held_s: float, idle_s: float, thread_alive: Optional[bool]
) -> dict[str, Any]:
    """Return what ``connection_held_long`` says about ``record``: who holds it, since which line."""
    fields = base_fields(record)
    in_transaction = record.transaction_mono is not None
    fields.update(
        thread=record.thread,  # the holder's, not the watchdog's
        thread_alive=thread_alive,
        pooled=record.pooled,
        held_s=round(held_s, 3),
        idle_s=round(idle_s, 3),
        in_transaction=in_transaction,
        transaction_started_in=record.transaction_started_in(),
        transaction_stack=frame_filter().visible_stack(record.transaction_stack) if in_transaction else [],
        opened_at=records.iso_time(record.opened_at),
    )
    return fields
