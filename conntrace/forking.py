"""Connections that cross ``fork()``: report them at both ends and apply the fork policy.

The hooks do the minimum: they run while another thread of the parent may
hold a logging or structlog lock that the child will never see released, so
they only record, detach sockets and bump counters. Events are queued in
``process.pending`` and emitted at the next safe point (a connect, a close,
a request start, a use of the connection).

Policies (``CONNTRACE["FORK_POLICY"]``):

* ``reset``: the child discards every inherited connection, its own and the
  idle ones in a psycopg pool, without sending anything on the shared
  socket, so that it opens its own on first use;
* ``warn``: report only;
* ``raise``: the first use of an inherited connection raises
  ``InheritedConnectionError`` (and the connection is discarded as in reset).
"""

from __future__ import annotations

import logging
import os
import sys
import time
from typing import Any, Optional

from conntrace import conf, drivers, events, process, records, stacks
from conntrace.exceptions import InheritedConnectionError

RESET = "reset"
WARN = "warn"
RAISE = "raise"
DISCARDED = "discarded_after_fork"  # close outcome of a connection the child reset

_registered = False
# Filled in the parent just before fork(): what crosses it.
_crossing: list[records.ConnectionRecord] = []
_fork_context: dict[str, Optional[str]] = {"forked_by": None, "forked_in": None}

TEST_RUNNER_HINT = (
    "Django's parallel test runner forks its workers with connections open; "
    "with FORK_POLICY 'reset' each worker discards its copy safely and opens its own. "
    "Nothing to fix."
)
DEPLOY_HINT = (
    "A connection opened before fork() is shared by every child. Find the line in "
    "opened_in (usually a query at import time), or close connections before forking "
    "(gunicorn: no --preload, or close in a post_fork hook; uWSGI: lazy-apps = true)."
)


def register_hooks() -> None:
    """Register the at-fork hooks once per process (they cannot be unregistered)."""
    global _registered
    if not _registered:
        os.register_at_fork(before=_before_fork, after_in_parent=_after_in_parent, after_in_child=_after_in_child)
        _registered = True


def _forked_by(stack: stacks.RawStack) -> Optional[str]:
    for code, _ in stack:
        name = code.co_filename
        if name.endswith(os.path.join("django", "test", "runner.py")):
            return "django_test_runner"
    return None


def _before_fork() -> None:
    if not process.active:
        return
    try:
        crossing = records.registry.open_records()
        for record in crossing:
            record.open_at_forks += 1
        _crossing[:] = crossing
        stack = stacks.capture(60, skip=1)
        _fork_context["forked_by"] = _forked_by(stack)
        _fork_context["forked_in"] = stacks.frame_filter().first_user_frame(stack) if crossing else None
    except Exception:
        _crossing.clear()


def _after_in_parent() -> None:
    if not _crossing:
        return
    crossing = list(_crossing)
    _crossing.clear()
    by_runner = _fork_context["forked_by"] == "django_test_runner"
    for record in crossing:
        try:
            fields = _fork_fields(record)
            fields.update(forked_in=_fork_context["forked_in"], hint=TEST_RUNNER_HINT if by_runner else DEPLOY_HINT)
            level = logging.INFO if by_runner else logging.WARNING
            if events.enabled(level):
                events.emit(level, events.CONNECTION_OPEN_AT_FORK, fields)
        except Exception as exc:
            events.internal_error("fork_parent", exc)


def _after_in_child() -> None:
    from collections import deque

    process.after_fork_in_child()
    process.pending = deque()
    crossing = list(_crossing)
    _crossing.clear()
    if not process.active:
        return
    try:
        policy = conf.get()["FORK_POLICY"]
        by_runner = _fork_context["forked_by"] == "django_test_runner"
        for record in crossing:
            record.inherited = True
            record.fork_policy = policy
            if policy == RESET:
                _discard_record(record)
            process.pending.append(_child_report(record, by_runner))
        for pooled in _inherited_pools(policy):
            process.pending.append(_pool_report(pooled, policy, by_runner))
    except Exception as exc:
        process.pending.append(lambda exc=exc: events.internal_error("fork_child", exc))


def _discard_record(record: records.ConnectionRecord) -> None:
    """Drop an inherited connection from its Django wrapper, sending nothing on its socket."""
    wrapper = record.wrapper_ref() if record.wrapper_ref is not None else None
    how = "already gone"
    if wrapper is not None:
        conn = wrapper.connection
        if conn is not None:
            how = drivers.discard(conn)
        wrapper.connection = None
        wrapper.closed_in_transaction = False
    record.add_close(
        records.CloseAttempt(time.time(), process.pid, process.thread_name(), (), DISCARDED, closed_by=how)
    )
    record.closed_mono = time.monotonic()
    ref = record.wrapper_ref
    if ref is not None:
        from conntrace import instrument

        instrument._watched.pop(id(ref), None)
    records.registry.ended(record)


def _inherited_pools(policy: str) -> list[dict[str, Any]]:
    """Handle psycopg pools Django keeps in a class-level dict; return one entry per idle socket."""
    module = sys.modules.get("django.db.backends.postgresql.base")
    pools = getattr(getattr(module, "DatabaseWrapper", None), "_connection_pools", None)
    if not pools:
        return []
    found = []
    for alias, pool in list(pools.items()):
        idle = list(getattr(pool, "_pool", ()) or ())
        for conn in idle:
            found.append({"alias": alias, "backend_pid": drivers.backend_pid(conn), "pool": pool})
        if policy in (RESET, RAISE):
            for conn in idle:
                drivers.discard(conn)
            try:
                pool._pool.clear()
                pool._closed = True  # its worker threads did not survive the fork
            except Exception:
                pass
            drivers.discard(pool)
            pools.pop(alias, None)
    return found


def _fork_fields(record: records.ConnectionRecord) -> dict[str, Any]:
    from conntrace.instrument import base_fields

    fields = base_fields(record)
    fields.update(
        opened_by_pid=record.pid,
        opened_thread=record.thread,
        age_s=record.age_s(),
        parent_pid=process.parent_pid,
    )
    return fields


def _child_report(record: records.ConnectionRecord, by_runner: bool) -> Any:
    def report() -> None:
        level = logging.INFO if by_runner else logging.ERROR
        if not events.enabled(level):
            return
        fields = _fork_fields(record)
        fields.update(policy=record.fork_policy, hint=TEST_RUNNER_HINT if by_runner else DEPLOY_HINT)
        if record.fork_policy == RESET:
            fields["action"] = "discarded without touching the shared socket; this process reconnects on first use"
        events.emit(level, events.CONNECTION_FORK_INHERITED, fields)

    return report


def _pool_report(pooled: dict[str, Any], policy: str, by_runner: bool) -> Any:
    def report() -> None:
        level = logging.INFO if by_runner else logging.ERROR
        if not events.enabled(level):
            return
        fields = {
            "alias": pooled["alias"],
            "vendor": "postgresql",
            "conn_id": None,
            "pid": process.pid,
            "thread": process.thread_name(),
            "backend_pid": pooled["backend_pid"],
            "opened_by_pid": process.parent_pid,
            "pooled_idle": True,
            "policy": policy,
            "opened_in": None,
            "opened_stack": [],
            "hint": TEST_RUNNER_HINT if by_runner else DEPLOY_HINT,
        }
        events.emit(level, events.CONNECTION_FORK_INHERITED, fields)

    return report


def on_inherited_use(wrapper: Any, record: records.ConnectionRecord) -> None:
    """Called when a child first uses a connection its parent opened (not discarded by ``reset``)."""
    if process.pending:
        process.flush_pending()
    policy = record.fork_policy or conf.get()["FORK_POLICY"]
    if policy == RAISE:
        _discard_record(record)
        raise InheritedConnectionError(
            f"database connection {record.alias!r} was opened by process {record.pid} "
            f"in {record.opened_in()} and inherited by process {process.pid} through fork(); "
            "it has been discarded, the next use opens a new connection"
        )
    # warn (or a record the hook could not see): report once, then let Django go on.
    record.fork_gen = process.fork_gen
    if not record.inherited:
        record.inherited = True
        record.fork_policy = policy
        _child_report(record, False)()
    if events.enabled(logging.WARNING):
        fields = _fork_fields(record)
        fields["policy"] = policy
        events.emit(logging.WARNING, events.CONNECTION_INHERITED_USED, fields)
