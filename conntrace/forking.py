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
emitted at the next safe point (a connect, a close, a request, a use, exit).
The parent's report is emitted by the parent's after-fork hook, once the child
exists: a pre-forking master (gunicorn with ``--preload``) never runs Django
code again, so there is no later point, and in the parent every lock is held
by a thread that goes on running (logging's own at-fork lock is released by
logging's hook, which runs before this one).
"""

from __future__ import annotations

import atexit
import logging
import os
import sys
import threading
from functools import partial
from typing import Any, Optional

from conntrace import conf, drivers, events, instrument, lifecycle, process, records, stacks
from conntrace.exceptions import InheritedConnectionError
from conntrace.fields import base_fields

RESET = "reset"
WARN = "warn"
RAISE = "raise"
DISCARDED = "discarded_after_fork"  # close outcome of a connection a child discarded

FORK_STACK_DEPTH = 40

TEST_RUNNER_HINT = (
    "Django's parallel test runner forks its workers with connections open. With FORK_POLICY "
    "'reset' (or 'raise') each worker discards its copy without touching the parent's session "
    "and opens its own: expected, nothing to fix."
)
TEST_RUNNER_WARN_HINT = (
    "Django's parallel test runner forks its workers with connections open, and each worker "
    "closes its copy: with FORK_POLICY 'warn' that close ends the parent's session. "
    "Use FORK_POLICY 'reset' (the default)."
)
DEPLOY_HINT = (
    "A connection opened before fork() is shared by every child: their queries interleave on one "
    "session and can read each other's rows. Remove the query at opened_in (usually run at import "
    "time), or close connections in the parent before it forks (gunicorn: connections.close_all() "
    "in a pre_fork hook or at the end of the preloaded module, plus close_pool() with a psycopg pool, "
    "or no --preload; uWSGI: lazy-apps = true). "
    "Check before deploying with: python -m conntrace preflight MODULE:ATTR"
)

_ACTIONS = {
    RESET: "discarded without touching the shared socket; this process opens its own on first use",
    RAISE: "discarded without touching the shared socket; its first use raises InheritedConnectionError",
    WARN: "left in place: this process shares the parent's session",
}

_RUNNER_FILE = os.path.join("django", "test", "runner.py")

_registered = False


class _Fork:
    """What the parent's before-fork hook saw, for its after-fork hook (and the child's)."""

    def __init__(self) -> None:
        self.armed = False  # the before-fork hook ran for this fork
        self.records: list[records.ConnectionRecord] = []
        # (alias, pool, idle driver connections) for every psycopg pool Django holds.
        self.pools: list[tuple[str, Any, list[Any]]] = []
        self.policy = RESET
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


def register_hooks() -> None:
    """Register the at-fork hooks once per process (they cannot be unregistered)."""
    global _registered
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
        _fork.pools = _pools()
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
    crossing, pools, policy, by_runner, stack = (
        _fork.records,
        _fork.pools,
        _fork.policy,
        _fork.by_runner,
        _fork.stack,
    )
    _fork.clear()
    try:
        level, hint = _level_and_hint(policy, by_runner, logging.WARNING)
        if not events.enabled(level):
            return
        forked_in = stacks.frame_filter().first_user_frame(stack)
        for record in crossing:
            fields = _fork_fields(record)
            fields.update(forked_in=forked_in, policy=policy, hint=hint)
            events.emit(level, events.CONNECTION_OPEN_AT_FORK, fields)
        for alias, _, idle in pools:
            for conn in idle:
                fields = _pooled_fields(alias, drivers.backend_pid(conn), process.pid)
                fields.update(forked_in=forked_in, policy=policy, hint=hint)
                events.emit(level, events.CONNECTION_OPEN_AT_FORK, fields)
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
            instrument.watch_uses()  # their first use here is reported (warn) or raises (raise)
        for record in inherited:
            record.inherited = True
            record.fork_policy = policy
            if policy != WARN:
                _discard_record(record, raise_on_use=policy == RAISE)
            process.pending.append(partial(_report_inherited, record, by_runner))
        for alias, pool, idle in _pools():
            backend_pids = [drivers.backend_pid(conn) for conn in idle]
            if policy != WARN:
                _discard_pool(alias, pool, idle)
            for backend_pid in backend_pids:
                process.pending.append(partial(_report_pooled, alias, backend_pid, policy, by_runner))
    except Exception as exc:
        process.pending.append(partial(events.internal_error, "fork_child", exc))


def _flush_at_exit() -> None:
    try:
        if process.active and process.pending:
            process.flush_pending()
    except Exception:
        pass


# --------------------------------------------------------------------------- what the hooks do


def _django_pools() -> Optional[dict[str, Any]]:
    """Return the class-level dict in which Django keeps psycopg pools, if the backend is loaded."""
    module = sys.modules.get("django.db.backends.postgresql.base")
    return getattr(getattr(module, "DatabaseWrapper", None), "_connection_pools", None)


def _pools() -> list[tuple[str, Any, list[Any]]]:
    """Return the psycopg pools Django keeps in a class-level dict, each with its idle connections."""
    pools = _django_pools()
    if not pools:
        return []
    found = []
    for alias, pool in list(pools.items()):
        try:
            idle = list(getattr(pool, "_pool", ()) or ())
        except RuntimeError:  # a pool thread changed it while we looked
            idle = []
        found.append((alias, pool, idle))
    return found


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
    how = "wrapper already gone"
    if wrapper is not None:
        conn = wrapper.connection
        if conn is not None:
            how = drivers.discard(conn)
        wrapper.connection = None
        wrapper.closed_in_transaction = False
        if raise_on_use:
            wrapper.__dict__[lifecycle.INHERITED_ATTR] = record
    lifecycle.end_without_close(record, DISCARDED, closed_by=how)


def _discard_pool(alias: str, pool: Any, idle: list[Any]) -> None:
    """Drop a psycopg pool a child inherited, so that Django builds a fresh one on first use.

    Every socket it holds is the parent's, and its worker threads did not
    survive the fork (even an empty pool would wait forever for them): its
    idle connections are detached, the pool is marked closed (its finaliser
    then does nothing) and kept alive unclosed.
    """
    for conn in idle:
        drivers.discard(conn)
    try:
        pool._closed = True
    except Exception:
        pass
    drivers.discard(pool)
    pools = _django_pools()
    if pools is not None and pools.get(alias) is pool:
        del pools[alias]


# --------------------------------------------------------------------------- reports


def _level_and_hint(policy: str, by_runner: bool, default: int) -> tuple[int, str]:
    if by_runner and policy != WARN:
        return logging.INFO, TEST_RUNNER_HINT
    if by_runner:
        return default, TEST_RUNNER_WARN_HINT
    return default, DEPLOY_HINT


def _fork_fields(record: records.ConnectionRecord) -> dict[str, Any]:
    fields = base_fields(record)
    fields.update(
        opened_by_pid=record.pid,
        opened_thread=record.thread,
        age_s=record.age_s(),
        open_at_forks=record.open_at_forks,
    )
    return fields


def _pooled_fields(alias: str, backend_pid: Optional[int], opened_by_pid: int) -> dict[str, Any]:
    """Return the fields of an idle pooled connection.

    The pool's own thread opened it, so the line that matters is the
    application's: the checkout that last used this session, else the last
    checkout from this pool (``conn_id`` is then None).
    """
    used = [
        r
        for r in (*records.registry.ended_records(), *records.registry.open_records())
        if r.alias == alias and r.pooled
    ]
    same = [r for r in used if r.backend_pid == backend_pid]
    last = (same or used or [None])[-1]
    return {
        "alias": alias,
        "vendor": "postgresql",
        "conn_id": same[-1].conn_id if same else None,
        "pid": process.pid,
        "thread": process.thread_name(),
        "backend_pid": backend_pid,
        "opened_in": last.opened_in() if last else None,
        "opened_stack": last.opened_stack() if last else [],
        "opened_by_pid": opened_by_pid,
        "pooled_idle": True,
    }


def _report_inherited(record: records.ConnectionRecord, by_runner: bool) -> None:
    policy = record.fork_policy or RESET
    level, hint = _level_and_hint(policy, by_runner, logging.ERROR)
    if not events.enabled(level):
        return
    fields = _fork_fields(record)
    fields.update(parent_pid=process.parent_pid, policy=policy, action=_ACTIONS[policy], hint=hint)
    events.emit(level, events.CONNECTION_FORK_INHERITED, fields)


def _report_pooled(alias: str, backend_pid: Optional[int], policy: str, by_runner: bool) -> None:
    level, hint = _level_and_hint(policy, by_runner, logging.ERROR)
    if not events.enabled(level):
        return
    fields = _pooled_fields(alias, backend_pid, process.parent_pid)
    fields.update(parent_pid=process.parent_pid, policy=policy, action=_ACTIONS[policy], hint=hint)
    events.emit(level, events.CONNECTION_FORK_INHERITED, fields)


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
    if policy != WARN:
        _discard_record(record)
        if not seen:
            _report_inherited(record, False)
        if policy == RAISE:
            raise _error(record)
        return
    # warn: report once, then let Django go on with the shared session.
    record.fork_gen = process.fork_gen
    if not seen:
        _report_inherited(record, False)
    if events.enabled(logging.WARNING):
        fields = _fork_fields(record)
        fields.update(parent_pid=process.parent_pid, policy=policy, hint=DEPLOY_HINT)
        events.emit(logging.WARNING, events.CONNECTION_INHERITED_USED, fields)
