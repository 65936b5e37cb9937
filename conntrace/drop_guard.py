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

from conntrace import process, records, stacks

STILL_IN_USE = "is being accessed by other users"


def open_connections_text() -> str:
    """Return this process's open connections, each with its thread, opening line and stack."""
    if process.pending:
        process.flush_pending()
    lines = []
    for record in records.registry.open_records():
        pooled = " (checked out of a pool)" if record.pooled else ""
        opened = stacks.in_place(record.opened_in())
        lines.append(f"  {record.alias!r}{pooled} in thread {record.thread!r}, opened {opened}")
        lines.extend(f"      {frame}" for frame in record.opened_stack())
    if not lines:
        return f"conntrace: no connection of process {process.pid} is open (the sessions are another's)"
    return f"conntrace: connections still open in process {process.pid}:\n" + "\n".join(lines)


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
