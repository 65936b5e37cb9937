"""Django's psycopg pools (``OPTIONS={"pool": ...}``, Django 5.1+): find them, describe, discard.

Django keeps one pool per alias in a class-level dict of its PostgreSQL
backend. Their idle connections were opened by the pool's own thread, so the
line that matters for them is the application's checkout that last used them.
Every checkout passes Django's ``connect()``: only the first checkout of a
driver connection in this process is a new session.
"""

from __future__ import annotations

import sys
import threading
import weakref
from typing import Any, Optional

from conntrace import drivers, process, records

# (alias, pool, its idle driver connections)
PoolInfo = tuple[str, Any, list[Any]]

# The driver connections a pool has lent in this process (or its parent, before a fork).
_sessions_seen: weakref.WeakSet[Any] = weakref.WeakSet()


def checked_out(record: records.ConnectionRecord, conn: Any) -> None:
    """Remember which thread took a pooled connection, and whether the pool made its session for it.

    psycopg_pool opens sessions in its own threads, so Django's ``connect()``
    cannot tell a new one from a lent one: a driver connection never lent
    before in this process is new (one set lookup per checkout).
    """
    record.thread_ref = weakref.ref(threading.current_thread())
    if conn in _sessions_seen:
        record.new_session = False
    else:
        _sessions_seen.add(conn)


def django_pools() -> Optional[dict[str, Any]]:
    """Return the class-level dict in which Django keeps psycopg pools, if the backend is loaded."""
    module = sys.modules.get("django.db.backends.postgresql.base")
    return getattr(getattr(module, "DatabaseWrapper", None), "_connection_pools", None)


def idle_pools() -> list[PoolInfo]:
    """Return the psycopg pools Django keeps, each with its idle connections."""
    pools = django_pools()
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


def idle_fields(alias: str, backend_pid: Optional[int], opened_by_pid: int) -> dict[str, Any]:
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


def discard(alias: str, pool: Any, idle: list[Any]) -> None:
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
    pools = django_pools()
    if pools is not None and pools.get(alias) is pool:
        del pools[alias]
