"""When the test database cannot be dropped because sessions remain, say which of ours they are.

PostgreSQL refuses ``DROP DATABASE`` while another session uses it ("database
... is being accessed by other users"), and names no culprit. This process's
open connections, with the lines that opened them, are printed before
Django's error; the error itself is raised unchanged.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from conntrace import pool_forensics, process, records, stacks

STILL_IN_USE = "is being accessed by other users"


def open_connections_text() -> str:
    """Return this process's open connections (thread, opening line, stack) and its open psycopg pools."""
    if process.pending:
        process.flush_pending()
    lines = [_pool_line(pool) for pool in pool_forensics.all_pools() if pool["size"]]
    for record in records.registry.open_records():
        pooled = " (checked out of a pool)" if record.pooled else ""
        opened = stacks.in_place(record.opened_in())
        lines.append(f"  {record.alias!r}{pooled} in thread {record.thread!r}, opened {opened}")
        lines.extend(f"      {frame}" for frame in record.opened_stack())
    if not lines:
        return f"conntrace: no connection of process {process.pid} is open (the sessions are another's)"
    return f"conntrace: connections still open in process {process.pid}:\n" + "\n".join(lines)


def _pool_line(pool: dict[str, Any]) -> str:
    alias = pool["alias"]
    first = next(
        (r for r in records.registry.ended_records() + records.registry.open_records() if r.alias == alias),
        None,
    )
    where = f", first used {stacks.in_place(first.opened_in())}" if first is not None else ""
    return (
        f"  {alias!r}: a psycopg pool still open with {pool['size']} session(s), {pool['available']} idle"
        f"{where}; close it with connections[{alias!r}].close_pool()"
    )


@contextmanager
def explaining_drop_failures(write: Callable[[str], Any]) -> Iterator[None]:
    """While active, a failed test-database drop first ``write``s the open connections."""
    from django.db.backends.base.creation import BaseDatabaseCreation

    original = BaseDatabaseCreation.destroy_test_db

    def destroy_test_db(self: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return original(self, *args, **kwargs)
        except Exception as exc:
            if STILL_IN_USE in str(exc):
                write(open_connections_text())
            raise

    BaseDatabaseCreation.destroy_test_db = destroy_test_db  # type: ignore[method-assign]
    try:
        yield
    finally:
        BaseDatabaseCreation.destroy_test_db = original  # type: ignore[method-assign]
