"""What the report is made of: a process, a connection's life across processes, a problem.

Plain holders, filled by ``model.Deployment``'s fold; times are kept as written
(see ``times``), except a problem's, which spans processes and is in epoch seconds.
"""

from __future__ import annotations

import os
from collections import Counter
from typing import Any, Optional

from conntrace.report import advice


class Process:
    """One process: where, pid and start; its parent and children; what it opened, closed and reported."""

    __slots__ = (
        "children",
        "closed",
        "events",
        "first_ts",
        "host",
        "inherited",
        "last_ts",
        "max_seq",
        "number",
        "opened",
        "origin",
        "parent",
        "parent_pid",
        "pid",
        "problems",
        "seen_first",
        "source",
        "start",
    )  # fmt: skip

    def __init__(
        self, number: int, origin: str, host: Optional[str], pid: int, start: int, source: str
    ) -> None:
        self.number = number
        self.origin = origin
        self.host = host
        self.pid = pid
        self.start = start  # 0, then 1, 2... for a pid that started again
        self.source = source
        self.max_seq = 0
        self.seen_first = False
        self.parent_pid: Optional[int] = None
        self.parent: Optional[Process] = None
        self.children: list[Process] = []
        self.first_ts: Any = None  # times as written (see event_time)
        self.last_ts: Any = None
        self.opened = 0
        self.closed = 0
        self.events = 0
        self.problems: Counter[str] = Counter()
        self.inherited: dict[Any, int] = {}  # conn_id -> pid of the process that opened it

    @property
    def label(self) -> str:
        where = self.host or os.path.basename(self.source)
        return f"{where} pid {self.pid}" + (f" (start {self.start + 1})" if self.start else "")

    def seen_at(self, ts: Any) -> None:
        if ts is None:
            return
        if self.last_ts is None:
            self.first_ts = self.last_ts = ts
            return
        try:
            if ts > self.last_ts:
                self.last_ts = ts
            elif ts < self.first_ts:
                self.first_ts = ts
        except TypeError:  # a process that wrote two formats: its first format wins
            pass


class Life:
    """One connection's life across processes: opened, inherited, closed (by whom, how often), lost."""

    __slots__ = (
        "alias",
        "backend_pid",
        "closes",
        "conn_id",
        "ended_ts",
        "inherited_by",
        "killed_by",
        "marks",
        "number",
        "opened_in",
        "opened_ts",
        "opener",
        "problems",
        "used_by",
    )  # fmt: skip

    def __init__(self, number: int, opener: Process, conn_id: Any) -> None:
        self.number = number
        self.opener = opener
        self.conn_id = conn_id
        self.alias: Optional[str] = None
        self.backend_pid: Optional[int] = None
        self.opened_in: Optional[str] = None
        self.opened_ts: Any = None  # times as written (see event_time)
        self.ended_ts: Any = None
        # Most lives have no problem: what only problems add starts as a shared empty tuple.
        self.inherited_by: tuple[Process, ...] = ()
        self.used_by: tuple[Process, ...] = ()
        self.closes: list[tuple[Process, str, Any]] = []
        # (kind, process, time as written, level) of every problem event about this life
        self.marks: tuple[tuple[str, Process, Any, int], ...] = ()
        self.problems: frozenset[str] = frozenset()
        self.killed_by: Optional[Process] = None


class Problem:
    """Every problem event with one culprit: kinds, processes, hosts, first and last seen, lives."""

    def __init__(self, culprit: str, event: dict[str, Any]) -> None:
        self.culprit = culprit
        self.what_to_do = advice.what_to_do(event)
        self.stack = advice.stack(event)
        self.level = 0
        self.count = 0
        self.left_out = 0  # repeats a process counted instead of reporting (conntrace_reports_repeated)
        self.kinds: Counter[str] = Counter()
        self.processes: dict[int, Process] = {}
        self.inheritors: set[int] = set()  # processes that reported inheriting the connection
        self.hosts: set[str] = set()
        self.first_ts: Optional[float] = None
        self.last_ts: Optional[float] = None
        self.lives: list[Life] = []
        self.killers: Counter[str] = Counter()
        self.examples: dict[str, dict[str, Any]] = {}  # kind -> its first event's telling fields

    def add(self, kind: str, level: int, process: Process, ts: Optional[float]) -> None:
        """Count one event of this problem (``ts``: epoch seconds)."""
        self.count += 1
        self.kinds[kind] += 1
        self.level = max(self.level, level)
        self.processes[process.number] = process
        self.hosts.add(process.host or process.origin)
        if ts is not None:
            self.first_ts = ts if self.first_ts is None else min(self.first_ts, ts)
            self.last_ts = ts if self.last_ts is None else max(self.last_ts, ts)
