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

A child learns that it is one from Python's at-fork hook (``os.fork``,
``multiprocessing``, gunicorn, billiard); under uWSGI, which forks from C and
runs Python's hooks only with ``--py-call-osafterfork``, from uWSGI's own
post-fork hook; and, whatever forked it, from the process id having changed at
the next connect, cursor or close of a connection (``notice_untold_fork``,
called by the wrappers before anything touches the socket).

The hooks do the minimum. The child's hook takes no lock and logs nothing:
another thread of the parent may have held a logging or structlog lock at the
moment of fork, and in the child nobody will ever release it. It records,
detaches sockets and queues its reports in ``process.pending``; they are
emitted at the next safe point (a connect, a close, a request, a use, exit). What the
reports say is in ``fork_reports``; Django's psycopg pools are in ``psycopg_pools``.
The parent's report is emitted by the parent's after-fork hook, once the child
exists: a pre-forking master (gunicorn with ``--preload``) never runs Django
code again, so there is no later point, and in the parent every lock is held
by a thread that goes on running (logging's own at-fork lock is released by
logging's hook, which runs before this one).
"""

from __future__ import annotations

import atexit
import os
from collections.abc import Callable
from functools import partial
from typing import Any, Optional

from conntrace import (
    conf,
    drivers,
    events,
    fork_handlers,
    fork_reports,
    lifecycle,
    process,
    psycopg_pools,
    records,
    stacks,
)
from conntrace.exceptions import InheritedConnectionError
from conntrace.names import Discard, ForkNoticed, HandledBy, Outcome, Policy

FORK_STACK_DEPTH = 40

_registered = False
# Called first in every forked child (from the at-fork hook: they take no lock, emit nothing).
_child_callbacks: list[Callable[[], None]] = []


class _Fork:
    """What the parent's before-fork hook saw, for its after-fork hook (and the child's)."""

    def __init__(self) -> None:
        self.armed = False  # the before-fork hook ran for this fork
        self.records: list[records.ConnectionRecord] = []
        self.pools: list[psycopg_pools.PoolInfo] = []
        self.policy: str = Policy.RESET
        self.handled: Optional[HandledBy] = None
        self.stack: stacks.RawStack = ()

    def clear(self) -> None:
        self.armed = False
        self.records = []
        self.pools = []
        self.stack = ()
        self.handled = None

    def crossing(self) -> bool:
        return bool(self.records) or any(idle for _, _, idle in self.pools)


_fork = _Fork()


def register_hooks() -> None:
    """Register the at-fork hooks once per process (they cannot be unregistered), and uWSGI's."""
    global _registered
    if not _registered:
        os.register_at_fork(
            before=_before_fork, after_in_parent=_after_in_parent, after_in_child=_after_in_child
        )
        # A child that exits without touching the database still emits its reports.
        atexit.register(_at_exit)
        _register_uwsgi_post_fork()
        _registered = True


def on_child_started(callback: Callable[[], None]) -> None:
    """Call ``callback`` in every forked child, before its inherited connections are handled.

    It runs inside the child's at-fork hook: it must take no lock and emit nothing
    (queue work in ``process.pending`` instead).
    """
    if callback not in _child_callbacks:
        _child_callbacks.append(callback)


def _register_uwsgi_post_fork() -> None:
    """Inside uWSGI, be told of its forks: it forks from C and runs Python's hooks only on request.

    ``uwsgidecorators`` chains hooks on the single ``uwsgi.post_fork_hook``; its
    first import replaces that attribute, so a hook the application had set
    there directly is put in the chain first.
    """
    try:
        import uwsgi  # type: ignore[import-not-found]  # only inside uWSGI's embedded interpreter
    except Exception:
        return
    try:
        previous = getattr(uwsgi, "post_fork_hook", None)
        import uwsgidecorators  # type: ignore[import-not-found]

        if previous is not None and previous is not uwsgidecorators.postfork_chain_hook:
            uwsgidecorators.postfork_chain.insert(0, previous)
        uwsgidecorators.postfork(_on_uwsgi_post_fork)
        uwsgi.post_fork_hook = uwsgidecorators.postfork_chain_hook
    except Exception as exc:
        events.internal_error("uwsgi_post_fork", exc)


def _on_uwsgi_post_fork() -> None:
    notice_untold_fork(ForkNoticed.UWSGI_POST_FORK)


# --------------------------------------------------------------------------- hooks


def _before_fork() -> None:
    _fork.clear()
    if not process.active:
        return
    try:
        _fork.policy = conf.get()["FORK_POLICY"]
        _fork.records = records.registry.open_records()
        _fork.pools = psycopg_pools.idle_pools()
        if _fork.crossing():
            _fork.stack = stacks.capture(FORK_STACK_DEPTH, skip=1)
            _fork.handled = fork_handlers.handled_by(_fork.stack)
            for record in _fork.records:
                record.open_at_forks += 1
        _fork.armed = True
    except Exception:
        _fork.clear()


def _after_in_parent() -> None:
    if not _fork.crossing():
        _fork.clear()
        return
    crossing, idle_pools, policy, handled, stack = (
        _fork.records,
        _fork.pools,
        _fork.policy,
        _fork.handled,
        _fork.stack,
    )
    _fork.clear()
    try:
        fork_reports.report_open_at_fork(crossing, idle_pools, policy, handled, stack)
    except Exception as exc:
        events.internal_error("fork_parent", exc)


def _after_in_child() -> None:
    _child_started(ForkNoticed.AT_FORK_HOOK)


def notice_untold_fork(noticed: ForkNoticed) -> None:
    """Handle a fork nobody told this process about, noticed by its changed process id."""
    if os.getpid() != process.pid:
        _child_started(noticed)


def _child_started(noticed: ForkNoticed) -> None:
    """Apply the fork policy to every connection this new process inherited, and queue the reports.

    Takes no lock and emits nothing: another thread of the parent may have held
    a logging lock at the fork, and nobody will release it here.
    """
    process.after_fork_in_child()
    process.pending.clear()  # the parent's unsent reports are the parent's
    fork_reports.forget_repeats()
    for callback in _child_callbacks:
        try:
            callback()
        except Exception as exc:
            process.pending.append(partial(events.internal_error, "fork_child_callback", exc))
    armed, policy, handled = _fork.armed, _fork.policy, _fork.handled
    _fork.clear()
    if not process.active:
        return
    try:
        if not armed:
            # The parent's before-fork hook did not run for this fork (uWSGI, a fork from C).
            policy, handled = conf.get()["FORK_POLICY"], None
        # Everything open here was opened by the parent, in any of its threads.
        for record in records.registry.open_records():
            record.inherited = True
            record.fork_policy = policy
            if policy != Policy.WARN:
                _discard_record(record, raise_on_use=policy == Policy.RAISE)
            process.pending.append(partial(fork_reports.report_inherited, record, handled, noticed))
        for alias, pool, idle in psycopg_pools.idle_pools():
            backend_pids = [drivers.backend_pid(conn) for conn in idle]
            if policy != Policy.WARN:
                psycopg_pools.discard(alias, pool, idle)
            for backend_pid in backend_pids:
                process.pending.append(
                    partial(fork_reports.report_pooled, alias, backend_pid, policy, handled, noticed)
                )
    except Exception as exc:
        process.pending.append(partial(events.internal_error, "fork_child", exc))


def _at_exit() -> None:
    try:
        if process.active and process.pending:
            process.flush_pending()
        fork_reports.report_repeats()
    except Exception:
        pass


# --------------------------------------------------------------------------- what the hooks do


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
            fork_reports.report_inherited(record, None, ForkNoticed.AT_USE)
        if policy == Policy.RAISE:
            raise _error(record)
        return
    # warn: report once, then let Django go on with the shared session.
    record.fork_gen = process.fork_gen
    if not seen:
        fork_reports.report_inherited(record, None, ForkNoticed.AT_USE)
    fork_reports.report_inherited_used(record, policy)
