"""Who holds a psycopg pool's connections: its state now, and ``pool_exhausted`` when a checkout gets none.

A ``PoolTimeout`` says only how long the caller waited. Every checkout is a
live pooled record (made by the connect wrapper, ended when Django returns
the connection), so the holders are already known: their line, thread,
request context and transaction. Nothing here runs on a checkout that
succeeds; it runs when a checkout fails and when someone asks (``pools()``,
the panel). It reads the pool's counters (``get_stats()`` takes no lock) and
never queries the database.
"""

from __future__ import annotations

import logging
import sys
import time
from typing import Any, Optional

from conntrace import events, metric_hooks, process, psycopg_pools, records, transactions
from conntrace.names import Event, State

ERROR = logging.ERROR


def holder_fields(record: records.ConnectionRecord, now: float) -> dict[str, Any]:
    """Return what is known of one checked-out connection and the code that holds it.

    A record inherited across fork() belongs to the other process: its line,
    thread and time are as they were at the fork, and whether its thread lives
    or its transaction is open cannot be seen from here (None).
    """
    here = record.fork_gen == process.fork_gen
    thread_alive: Optional[bool] = None
    in_transaction: Optional[bool] = None
    started_in = None
    if here:
        thread = record.thread_ref() if record.thread_ref is not None else None
        thread_alive = thread is not None and thread.is_alive()
        wrapper = record.wrapper_ref() if record.wrapper_ref is not None else None
        if wrapper is not None:
            in_transaction = bool(wrapper.in_atomic_block or not wrapper.autocommit)
            started_in = transactions.started_in(wrapper)
    return {
        "conn_id": record.conn_id,
        "pid": record.pid,
        "in_this_process": here,
        "thread": record.thread,
        "thread_alive": thread_alive,
        "backend_pid": record.backend_pid,
        "held_s": round(now - record.opened_mono, 3),
        "checked_out_at": records.iso_time(record.opened_at),
        "checked_out_in": record.opened_in(),
        "checked_out_stack": record.opened_stack(),
        "in_transaction": in_transaction,
        "transaction_started_in": started_in,
        "context": dict(record.context or {}),
    }


def holders(alias: str, now: float) -> list[dict[str, Any]]:
    """Return the connections of ``alias``'s pool checked out now, in this process or seen at a fork."""
    held = [
        r
        for r in records.registry.open_records()
        # A record without a thread is a checkout still waiting for its connection.
        if r.alias == alias and r.pooled and r.state is State.OPEN and r.thread_ref is not None
    ]
    return [holder_fields(r, now) for r in sorted(held, key=lambda r: r.conn_id)]


def pool_state(alias: str, pool: Any, now: float) -> dict[str, Any]:
    """Return one pool's sizes, counters and holders.

    ``holders_unseen`` counts the connections the pool says are out that no
    record here explains: taken in another process sharing this pool, or being
    opened by a pool thread that did not survive a fork.
    """
    stats = pool.get_stats()
    size = stats.get("pool_size", 0)
    available = stats.get("pool_available", 0)
    held = holders(alias, now)
    return {
        "alias": alias,
        "min_size": stats.get("pool_min"),
        "max_size": stats.get("pool_max"),
        "timeout_s": getattr(pool, "timeout", None),
        "size": size,
        "available": available,
        "waiting": stats.get("requests_waiting", 0),
        "checked_out": size - available,
        "holders": held,
        "holders_unseen": max(0, size - available - len(held)),
    }


def all_pools() -> list[dict[str, Any]]:
    """Return the state of every psycopg pool Django keeps in this process."""
    now = time.monotonic()
    kept = psycopg_pools.django_pools() or {}
    return [pool_state(alias, pool, now) for alias, pool in list(kept.items())]


def is_pool_error(exc: BaseException, name: str) -> bool:
    """Return True if ``exc`` is psycopg_pool's exception ``name`` (without importing psycopg_pool)."""
    error = getattr(sys.modules.get("psycopg_pool"), name, None)
    return error is not None and isinstance(exc, error)


def checkout_failed(wrapper: Any, record: records.ConnectionRecord, exc: BaseException) -> None:
    """Emit ``pool_exhausted`` when a pooled ``connect()`` found no connection, before the error goes on.

    Exhausted: the checkout timed out (``PoolTimeout``), or the pool refused it
    at once because ``max_waiting`` requests were already waiting
    (``TooManyRequests``); only the first is a timeout for the metrics.
    """
    try:
        timed_out = is_pool_error(exc, "PoolTimeout")
        if not timed_out and not is_pool_error(exc, "TooManyRequests"):
            return
        if metric_hooks.recorder is not None:
            if timed_out:
                metric_hooks.recorder.timed_out(wrapper.alias)
            metric_hooks.recorder.anomaly(Event.POOL_EXHAUSTED, wrapper.alias)
        pool = (psycopg_pools.django_pools() or {}).get(wrapper.alias)
        if pool is None:
            return
        now = time.monotonic()
        fields = dict(record.context or {})
        fields.update(pool_state(wrapper.alias, pool, now))
        fields.update(
            waited_s=round(now - record.opened_mono, 3),
            pid=process.pid,
            thread=process.thread_name(),
            requested_in=record.opened_in(),
            requested_stack=record.opened_stack(),
            error_type=type(exc).__name__,
            error=events.error_text(exc),
        )
        events.emit(ERROR, Event.POOL_EXHAUSTED, fields)
    except Exception as internal:
        events.internal_error("pool_exhausted", internal)
