"""Connections that cross ``fork()``: report them at both ends and apply the fork policy.

Policies (``CONNTRACE["FORK_POLICY"]``):

* ``reset`` (default): the child discards every inherited connection, its
  Django wrappers' and the idle ones in a psycopg pool, without sending
  anything on the shared socket (see ``drivers.discard``), and opens its own
  on first use;
* ``warn``: report only; Django behaves as without conntrace;
* ``raise``: discard as ``reset`` does, then the first use of the connection
  raises ``InheritedConnectionError`` (closing it first is the correct
  handling and is allowed, as Django's parallel test runner does).

The hooks do the minimum. The child's hook takes no lock and logs nothing:
another thread of the parent may have held a logging or structlog lock at the
moment of fork, and in the child nobody will ever release it. It records,
detaches sockets and queues its reports in ``process.pending``; they are
emitted at the next safe point (a connect, a close, a request, a use, exit). What the
reports say is in ``fork_reports``; Django's psycopg pools are in ``pools``.
The parent's report is emitted by the parent's after-fork hook, once the child
exists: a pre-forking master (gunicorn with ``--preload``) never runs Django
code again, so there is no later point, and in the parent every lock is held
by a thread that goes on running (logging's own at-fork lock is released by
logging's hook, which runs before this one).
"""

from __future__ import annotations

import atexit
import os
import sys
import threading
from collections.abc import Callable
from functools import partial
from typing import Any

from conntrace import conf, drivers, events, fork_reports, lifecycle, pools, process, records, stacks
from conntrace.exceptions import InheritedConnectionError
from conntrace.names import Discard, Outcome, Policy

FORK_STACK_DEPTH = 40

_RUNNER_FILE = os.path.join("django", "test", "runner.py")

_registered = False
# Switches the use hook on (wrappers.watch_uses), handed over by register_hooks(): the
# wrappers call into this module, so it cannot import them.
_watch_uses: Callable[[], None] = lambda: None  # noqa: E731


class _Fork:
    """What the parent's before-fork hook saw, for its after-fork hook (and the child's)."""

    def __init__(self) -> None:
        self.armed = False  # the before-fork hook ran for this fork
        self.records: list[records.ConnectionRecord] = []
        self.pools: list[pools.PoolInfo] = []
        self.policy: str = Policy.RESET
        self.by_runner = False
        self.stack: stacks.RawStack = ()

    def clear(self) -> None:
        self.armed = False
        self.records = []
        self.pools = []
        self.stack = ()
        self.by_runner = False

    def crossing(self) -> bool:
        return bool(self.records) or any(idle for _, _, idle in self.pools)


_fork = _Fork()


def register_hooks(watch_uses: Callable[[], None]) -> None:
    """Register the at-fork hooks once per process (they cannot be unregistered).

    ``watch_uses`` switches the use hook on, for a child that inherited connections.
    """
    global _registered, _watch_uses
    _watch_uses = watch_uses
    if not _registered:
        os.register_at_fork(
            before=_before_fork, after_in_parent=_after_in_parent, after_in_child=_after_in_child
        )
        # A child that exits without touching the database still emits its reports.
        atexit.register(_flush_at_exit)
        _registered = True


# --------------------------------------------------------------------------- hooks


def _before_fork() -> None:
    _fork.clear()
    if not process.active:
        return
    try:
        _fork.policy = conf.get()["FORK_POLICY"]
        _fork.records = records.registry.open_records()
        _fork.pools = pools.idle_pools()
        if _fork.crossing():
            _fork.stack = stacks.capture(FORK_STACK_DEPTH, skip=1)
            _fork.by_runner = _forked_by_test_runner(_fork.stack)
            for record in _fork.records:
                record.open_at_forks += 1
        _fork.armed = True
    except Exception:
        _fork.clear()


def _after_in_parent() -> None:
    if not _fork.crossing():
        _fork.clear()
        return
    crossing, idle_pools, policy, by_runner, stack = (
        _fork.records,
        _fork.pools,
        _fork.policy,
        _fork.by_runner,
        _fork.stack,
    )
    _fork.clear()
    try:
        fork_reports.report_open_at_fork(crossing, idle_pools, policy, by_runner, stack)
    except Exception as exc:
        events.internal_error("fork_parent", exc)


def _after_in_child() -> None:
    process.after_fork_in_child()
    process.pending.clear()  # the parent's unsent reports are the parent's
    armed, policy, by_runner = _fork.armed, _fork.policy, _fork.by_runner
    _fork.clear()
    if not process.active:
        return
    try:
        if not armed:
            # Forked without the interpreter's before-fork hook: a server embedding Python
            # (uWSGI) that calls fork() itself, then PyOS_AfterFork_Child().
            policy = conf.get()["FORK_POLICY"]
        # Everything open here was opened by the parent, in any of its threads.
        inherited = records.registry.open_records()
        if inherited:
            _watch_uses()  # their first use here is reported (warn) or raises (raise)
        for record in inherited:
            record.inherited = True
            record.fork_policy = policy
            if policy != Policy.WARN:
                _discard_record(record, raise_on_use=policy == Policy.RAISE)
            process.pending.append(partial(fork_reports.report_inherited, record, by_runner))
        for alias, pool, idle in pools.idle_pools():
            backend_pids = [drivers.backend_pid(conn) for conn in idle]
            if policy != Policy.WARN:
                pools.discard(alias, pool, idle)
            for backend_pid in backend_pids:
                process.pending.append(
                    partial(fork_reports.report_pooled, alias, backend_pid, policy, by_runner)
                )
    except Exception as exc:
        process.pending.append(partial(events.internal_error, "fork_child", exc))


def _flush_at_exit() -> None:
    try:
        if process.active and process.pending:
            process.flush_pending()
    except Exception:
        pass


# --------------------------------------------------------------------------- what the hooks do


def _forked_by_test_runner(stack: stacks.RawStack) -> bool:
    """Return True if Django's test runner is forking (also when a multiprocessing thread forks for it)."""
    if _runs_runner(stacks.codes(stack)):
        return True
    main = threading.main_thread()
    if threading.current_thread() is main:
        return False
    # multiprocessing.Pool re-populates its workers from a handler thread: look at the main thread.
    frame = sys._current_frames().get(main.ident or 0)
    codes = []
    while frame is not None and len(codes) < FORK_STACK_DEPTH:
        codes.append(frame.f_code)
        frame = frame.f_back
    del frame
    return _runs_runner(codes)


def _runs_runner(codes: Any) -> bool:
    return any(code.co_filename.endswith(_RUNNER_FILE) for code in codes)


def _discard_record(record: records.ConnectionRecord, raise_on_use: bool = False) -> None:
    """Drop an inherited connection from its Django wrapper, sending nothing on its socket."""
    wrapper = record.wrapper_ref() if record.wrapper_ref is not None else None
    how = Discard.WRAPPER_GONE
    if wrapper is not None:
        conn = wrapper.connection
        if conn is not None:
            how = drivers.discard(conn)
        wrapper.connection = None
        wrapper.closed_in_transaction = False
        if raise_on_use:
            wrapper.__dict__[lifecycle.INHERITED_ATTR] = record
    lifecycle.end_without_close(record, Outcome.DISCARDED_AFTER_FORK, closed_by=how)


# --------------------------------------------------------------------------- use in the child


def _error(record: records.ConnectionRecord) -> InheritedConnectionError:
    return InheritedConnectionError(
        f"database connection {record.alias!r} was opened by process {record.pid} in "
        f"{record.opened_in()} and inherited by process {process.pid} through fork(); "
        "it has been discarded without touching the parent's session, and the next use opens "
        "a new connection. Close connections before forking, or close this one first in the child."
    )


def on_discarded_use(wrapper: Any) -> None:
    """Raise for the first use of a connection discarded under the ``raise`` policy."""
    record = wrapper.__dict__.pop(lifecycle.INHERITED_ATTR, None)
    if record is None:
        return
    if process.pending:
        process.flush_pending()
    raise _error(record)


def on_inherited_use(wrapper: Any, record: records.ConnectionRecord) -> None:
    """Handle a child's first use of a connection its parent opened that is still in place.

    That is every inherited connection under ``warn``, and one the hooks did
    not see (opened by another thread while the fork happened) under the
    other policies.
    """
    if process.pending:
        process.flush_pending()
    seen = record.inherited
    policy = record.fork_policy or conf.get()["FORK_POLICY"]
    record.inherited = True
    record.fork_policy = policy
    if policy != Policy.WARN:
        _discard_record(record)
        if not seen:
            fork_reports.report_inherited(record, False)
        if policy == Policy.RAISE:
            raise _error(record)
        return
    # warn: report once, then let Django go on with the shared session.
    record.fork_gen = process.fork_gen
    if not seen:
        fork_reports.report_inherited(record, False)
    fork_reports.report_inherited_used(record, policy)
