"""Helpers for the application's own tests.

>>> from conntrace.testing import track_connections
>>> with track_connections() as tracked:
...     call_the_code_under_test()
>>> assert tracked.left_open() == []
>>> tracked.assert_no_leaks()  # threads' connections left open or abandoned, bad closes
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from conntrace import findings, install, process, records, stacks
from conntrace.names import CLEAN_OUTCOMES


class TrackedConnections:
    """The connections opened inside a ``track_connections()`` block."""

    def __init__(self, first_id: int, watch: findings.TestWatch) -> None:
        self._first_id = first_id
        self._watch = watch

    def _mine(self, found: list[records.ConnectionRecord]) -> list[dict[str, Any]]:
        if process.pending:
            process.flush_pending()
        return [record.as_dict() for record in found if record.conn_id >= self._first_id]

    def opened(self) -> list[dict[str, Any]]:
        """Return every connection opened in the block, open or ended."""
        ended = self._mine(records.registry.ended_records())
        live = self._mine(records.registry.open_records())
        return sorted(ended + live, key=lambda record: record["conn_id"])

    def left_open(self) -> list[dict[str, Any]]:
        """Return the connections opened in the block that are still open."""
        return self._mine(records.registry.open_records())

    def anomalies(self) -> list[dict[str, Any]]:
        """Return the close attempts of the block's connections that were not clean."""
        return [
            {"conn_id": record["conn_id"], "opened_in": record["opened_in"], **attempt}
            for record in self.opened()
            for attempt in record["closes"]
            if attempt["outcome"] not in CLEAN_OUTCOMES
        ]

    def events(self) -> list[dict[str, Any]]:
        """Return what happened in the block: each open and close attempt, in order."""
        return list(self._watch.events)

    def findings(self) -> list[findings.Finding]:
        """Return the block's findings: connections its threads left open or abandoned, bad closes."""
        return self._watch.findings()

    def assert_no_leaks(self) -> None:
        """Fail with each finding's opening line and stack if the block has any."""
        found = self.findings()
        if found:
            raise AssertionError(f"{len(found)} connection finding(s):\n{findings.report_text(found)}")


@contextmanager
def track_connections(name: str = "track_connections") -> Iterator[TrackedConnections]:
    """Track the connections opened inside the block (installs conntrace if needed)."""
    install()
    first_id = records.take_id()
    watcher = findings.Watcher()
    watcher.start()
    try:
        yield TrackedConnections(first_id, watcher.begin(name))
    finally:
        watcher.stop()


def assert_no_open_connections(tracked: TrackedConnections) -> None:
    """Fail with the opening lines if a connection opened in the block is still open."""
    left = tracked.left_open()
    if left:
        lines = ", ".join(f"{r['alias']} opened {stacks.in_place(r['opened_in'])}" for r in left)
        raise AssertionError(f"{len(left)} connection(s) left open: {lines}")
