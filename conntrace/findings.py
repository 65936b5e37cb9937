"""What one test did wrong with its connections, for the test-suite guards (pytest plugin, Django runner).

A ``Watcher`` follows one test at a time through the observer interface
(opens and close attempts) and, when the test ends, turns what it saw into
``Finding``s: plain data that crosses process boundaries (pytest-xdist
workers, Django's forked ``--parallel`` workers) as a dict. The persistent
connection of the main thread is not a finding: the test framework manages it.
"""

from __future__ import annotations

import gc
import threading
from dataclasses import asdict, dataclass, field
from typing import Any, Optional

from conntrace import observers, process, psycopg_pools, records, stacks
from conntrace.names import FindingKind as Kind
from conntrace.names import Observed, Outcome, State

# Close attempts that are a finding, and the kind each is.
CLOSE_KINDS = {Outcome.ALREADY_CLOSED: Kind.DOUBLE_CLOSE, Outcome.FAILED: Kind.CLOSE_ERROR}


@dataclass
class Finding:
    """One problem with one connection, attributed to the test that caused it."""

    test: str
    kind: str
    alias: str
    opened_in: Optional[str]
    stack: list[str]
    detail: str
    closed_in: Optional[str] = None
    extra: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        """Return plain data (picklable, JSON-safe) that ``from_dict`` reads back."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Finding:
        return cls(**data)

    def text(self) -> str:
        """Return the finding as a person reads it: the test, the kind, the opening line, the stack."""
        lines = [
            f"{self.test}: {self.kind}: {self.alias!r} connection opened "
            f"{stacks.in_place(self.opened_in)}: {self.detail}"
        ]
        lines.extend(f"    {frame}" for frame in self.stack)
        return "\n".join(lines)


def report_text(found: list[Finding]) -> str:
    """Return every finding's text, one blank line between them."""
    return "\n\n".join(finding.text() for finding in found)


def _finding(test: str, kind: Kind, record: records.ConnectionRecord, detail: str) -> Finding:
    return Finding(test, kind.value, record.alias, record.opened_in(), record.opened_stack(), detail)


class TestWatch:
    """One test's connections: those it opened, and the close attempts made while it ran."""

    __test__ = False  # not a test class, whatever pytest's naming rules say

    def __init__(self, test: str) -> None:
        self.test = test
        self.opened: list[records.ConnectionRecord] = []
        self.closes: list[tuple[records.ConnectionRecord, records.CloseAttempt]] = []
        self.events: list[dict[str, Any]] = []
        self.pools_before = set(psycopg_pools.django_pools() or ())

    def saw(self, kind: Observed, record: records.ConnectionRecord) -> None:
        if kind is Observed.OPENED:
            self.opened.append(record)
        elif kind is Observed.CLOSE_ATTEMPTED and record.closes:
            self.closes.append((record, record.closes[-1]))
        else:
            return
        last = record.closes[-1].outcome if kind is Observed.CLOSE_ATTEMPTED and record.closes else None
        self.events.append(
            {
                "observed": kind,
                "conn_id": record.conn_id,
                "alias": record.alias,
                "thread": process.thread_name(),
                "opened_in": record.opened_in(),
                "outcome": last,
            }
        )

    def findings(self) -> list[Finding]:
        """Return what went wrong: threads' connections left open or abandoned, bad closes."""
        if process.pending:
            process.flush_pending()
        main = threading.main_thread().name
        others = [r for r in self.opened if r.thread != main]
        if any(r.state is State.OPEN and r.thread_alive() is False for r in others):
            gc.collect()  # a finished thread's wrapper is freed by the collector: abandoned, not open
            process.flush_pending()
        found = []
        for record in others:
            if record.state is State.OPEN:
                detail = f"still open after the test in thread {record.thread!r}"
                found.append(_finding(self.test, Kind.THREAD_LEFT_OPEN, record, detail))
        for record in self.opened:
            if any(attempt.outcome is Outcome.ABANDONED for attempt in record.closes):
                detail = f"opened in thread {record.thread!r}, garbage-collected while open, never closed"
                found.append(_finding(self.test, Kind.ABANDONED, record, detail))
        for record, attempt in self.closes:
            kind = CLOSE_KINDS.get(attempt.outcome)
            if kind is None or (kind is Kind.DOUBLE_CLOSE and record.lost is not None):
                continue  # a lost session's close is its expected end (connection_lost said why)
            closed_in = stacks.frame_filter().first_user_frame(attempt.stack)
            how = f"already closed by the {attempt.closed_by}" if kind is Kind.DOUBLE_CLOSE else attempt.error
            finding = _finding(self.test, kind, record, f"closed {stacks.in_place(closed_in)}: {how}")
            finding.closed_in = closed_in
            found.append(finding)
        return found + self.pools_left_open()

    def pools_left_open(self) -> list[Finding]:
        """Return the pools the test opened for a test-mirror alias, which Django never closes.

        Django closes the pool of each alias whose test database it drops; a
        mirror's pool keeps its sessions, and the drop fails ("database ... is
        being accessed by other users").
        """
        opened = set(psycopg_pools.django_pools() or ()) - self.pools_before
        if not opened:
            return []
        from django.db import connections

        found = []
        for alias in sorted(opened):
            if not connections.settings.get(alias, {}).get("TEST", {}).get("MIRROR"):
                continue
            first = next((r for r in self.opened if r.alias == alias), None)
            if first is not None:
                detail = (
                    "its psycopg pool is still open after the test: a test mirror's pool keeps its sessions, "
                    f"and dropping the test database fails; call connections[{alias!r}].close_pool()"
                )
                found.append(_finding(self.test, Kind.POOL_LEFT_OPEN, first, detail))
        return found


class Watcher:
    """Follows the tests of one process, one at a time; remembers connections opened before the first."""

    def __init__(self) -> None:
        self.current: Optional[TestWatch] = None
        # conn_id -> (record, forks it had crossed when last looked at), for connections opened
        # at import or collection time.
        self.early: dict[int, tuple[records.ConnectionRecord, int]] = {}

    def start(self) -> None:
        observers.add(self._observe)

    def stop(self) -> None:
        observers.remove(self._observe)
        self.current = None

    def _observe(self, kind: Observed, wrapper: Any, record: records.ConnectionRecord) -> None:
        if self.current is not None:
            self.current.saw(kind, record)

    def remember_early(self, first_id: int = 0, last_id: Optional[int] = None) -> None:
        """Remember the connections open now (with ids in the range given) as opened before the tests."""
        for record in records.registry.open_records():
            if record.conn_id >= first_id and (last_id is None or record.conn_id < last_id):
                self.early[record.conn_id] = (record, record.open_at_forks)

    def begin(self, test: str) -> TestWatch:
        self.current = TestWatch(test)
        return self.current

    def end(self) -> list[Finding]:
        """Stop following the current test; return its findings (none if no test was followed)."""
        watch, self.current = self.current, None
        if watch is None:
            return []
        return watch.findings() + self.crossed_forks(watch.test)

    def crossed_forks(self, test: str) -> list[Finding]:
        """Return the early connections that were open at a fork since last asked (once each)."""
        found = []
        for conn_id, (record, forks) in list(self.early.items()):
            if record.pid != process.pid:
                del self.early[conn_id]  # a forked child's copy: the fork is counted in the parent
            elif record.open_at_forks > forks:
                detail = (
                    "opened before the tests ran (at import, startup or collection), still open at a "
                    f"fork: every child of process {record.pid} shares its session"
                )
                found.append(_finding(test, Kind.CROSSED_FORK, record, detail))
                del self.early[conn_id]
            elif record.state is not State.OPEN:
                del self.early[conn_id]
        return found
