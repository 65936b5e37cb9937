"""The fold: a deployment's events, one at a time, into processes, their fork tree, lives and problems.

Folded one event at a time, in the order the files give them. A process is
(where, pid, start): "where" is the ``host`` field when the events carry one,
otherwise the file they came from, and a pid seen starting again (its ``seq``
back at 1) is a new process. A connection life is keyed by its opening process
and ``conn_id``, which the events of the children that inherited it carry too
(``opened_by_pid``), so one life runs across processes whatever file each
process wrote to. Memory is bounded: a life is held while open, then only if
it has a problem (up to ``KEPT_LIVES``), is among the first ``SAMPLED_LIVES``,
or among the ``RECENT_LIVES`` last ended (a late event from another process
can still find it); beyond that it is counted.
"""

from __future__ import annotations

import os
import sys
from collections import Counter, OrderedDict
from typing import Any, Optional

from conntrace.names import Event, Outcome
from conntrace.report import advice
from conntrace.report.entities import Life, Problem, Process
from conntrace.report.times import epoch, event_time

KEPT_LIVES = 20_000
SAMPLED_LIVES = 2_000
RECENT_LIVES = 10_000
LIVES_PER_PROBLEM = 50
# Threads may write a process's events a little out of ``seq`` order: a larger drop is a new process.
REORDER_WINDOW = 1_000
LEVELS = {"debug": 10, "info": 20, "warning": 30, "warn": 30, "error": 40, "exception": 40, "critical": 50}
WARNING = 30
# Plain strings on the per-event path: comparing a str with a StrEnum member costs 5 times more.
OPENED = frozenset({Event.CONNECTION_OPENED.value, Event.CONNECTION_CHECKED_OUT.value})
CLOSED = Event.CONNECTION_CLOSED.value
# Outcomes that end a session when the process that opened it makes them.
ENDINGS = frozenset(
    {Outcome.CLOSED, Outcome.RETURNED_TO_POOL, Outcome.ABANDONED, Outcome.DISCARDED_AFTER_FORK}
)
KILLING = frozenset({Event.CONNECTION_LOST, Event.CONNECTION_DOUBLE_CLOSE})

EXAMPLE_KEYS = (
    "cause", "cause_evidence", "closed_by", "failed_in", "driver_closed_in", "driver_closed_between",
    "transaction_started_in", "held_s", "error_type", "error", "policy", "fork_noticed", "forked_in",
    "handled_by", "hint", "problem", "holders",
)  # fmt: skip


def _family(process: Process) -> Process:
    """Return the first ancestor of ``process`` the logs show (itself when none)."""
    while process.parent is not None:
        process = process.parent
    return process


def _closes(life: Life) -> list[tuple[Process, str, Optional[float]]]:
    """Return the closes of ``life`` with their times in epoch seconds."""
    return [(closer, outcome, epoch(at)) for closer, outcome, at in life.closes]


def _shared(word: Any) -> Any:
    """Return one shared copy of a string many lives hold (a line, an alias, an outcome)."""
    return sys.intern(word) if word.__class__ is str else word


class Deployment:
    """The fold: ``add()`` each event, then read ``processes``, ``problems`` and ``lives``."""

    def __init__(self, since: Optional[float] = None, until: Optional[float] = None) -> None:
        self.since = since
        self.until = until
        self.filtered = 0
        self.processes: list[Process] = []
        self.problems: dict[str, Problem] = {}
        self.kinds: Counter[str] = Counter()
        self.lives_total = 0
        self.lives_ended = 0
        self.lives_dropped = 0
        self.kept: dict[tuple[int, Any], Life] = {}
        self.sampled: dict[tuple[int, Any], Life] = {}
        self._current: dict[tuple[str, int], Process] = {}
        self._hostless: dict[tuple[str, int], Process] = {}  # (directory, pid): files without a host
        self._open: dict[tuple[int, Any], Life] = {}
        self._known: dict[tuple[int, Any], Life] = {}  # every life held: open, recent, kept or sampled
        self._recent: OrderedDict[tuple[int, Any], Life] = OrderedDict()

    # -- processes

    def _new_process(self, origin: str, host: Optional[str], pid: int, start: int, source: str) -> Process:
        process = Process(len(self.processes), origin, host, pid, start, source)
        self.processes.append(process)
        self._current[(origin, pid)] = process
        if host is None:
            self._hostless[(os.path.dirname(source), pid)] = process
        return process

    def _find(self, origin: str, host: Optional[str], pid: int, source: str) -> Process:
        """Return the process ``pid`` at ``origin`` (for files without a host: in the same directory)."""
        process = self._current.get((origin, pid))
        if process is None and host is None:
            process = self._hostless.get((os.path.dirname(source), pid))
        return process or self._new_process(origin, host, pid, 0, source)

    def _adopt(self, origin: str, pid: int, source: str) -> Optional[Process]:
        """Return the process a child's event named (its opener) before its own file was read, if any."""
        placeholder = self._hostless.get((os.path.dirname(source), pid))
        if placeholder is None or placeholder.events:
            return None
        placeholder.origin, placeholder.source = origin, source
        self._current[(origin, pid)] = placeholder
        return placeholder

    def _process_of(self, source: str, event: dict[str, Any]) -> Process:
        seq = event.get("seq")
        process = self._current.get((event.get("host") or source, event.get("pid")))
        if process is not None and seq.__class__ is int and seq > process.max_seq > 0:
            process.max_seq = seq  # the usual case: the next event of a known process
            return process
        host = event.get("host")
        host = str(host) if host else None
        origin = host or source
        pid = event.get("pid")
        pid = pid if isinstance(pid, int) else 0
        process = self._current.get((origin, pid))
        if process is None and host is None:
            process = self._adopt(origin, pid, source)
        if process is None:
            process = self._new_process(origin, host, pid, 0, source)
        elif isinstance(seq, int) and (
            (seq == 1 and process.seen_first) or seq < process.max_seq - REORDER_WINDOW
        ):
            process = self._new_process(origin, host, pid, process.start + 1, source)
        if isinstance(seq, int):
            if seq == 1:
                process.seen_first = True
            if seq > process.max_seq:
                process.max_seq = seq
        return process

    # -- lives

    def _life(self, process: Process, event: dict[str, Any], source: str) -> Optional[Life]:
        conn_id = event.get("conn_id")
        if conn_id is None:
            return None
        opener_pid = event.get("opened_by_pid")
        if opener_pid is None and not process.inherited:
            opener = process  # the usual case
        else:
            if not isinstance(opener_pid, int):
                opener_pid = process.inherited.get(conn_id, process.pid)
            opener = (
                process
                if opener_pid == process.pid
                else self._find(process.origin, process.host, opener_pid, source)
            )
        key = (opener.number, conn_id)
        life = self._known.get(key)
        if life is None:
            self.lives_total += 1
            life = self._known[key] = self._open[key] = Life(self.lives_total, opener, conn_id)
            if len(self.sampled) < SAMPLED_LIVES:
                self.sampled[key] = life
            life.opened_in = _shared(event.get("opened_in"))
            life.alias = _shared(event.get("alias"))
            life.backend_pid = event.get("backend_pid")
        elif life.opened_in is None:
            life.opened_in = event.get("opened_in")
            life.alias = event.get("alias")
        if life.backend_pid is None:
            life.backend_pid = event.get("backend_pid")
        return life

    def _end(self, life: Life, ts: Any) -> None:
        key = (life.opener.number, life.conn_id)
        if self._open.pop(key, None) is None:
            return
        life.ended_ts = ts
        self.lives_ended += 1
        self._recent[key] = life
        if len(self._recent) > RECENT_LIVES:
            old, _ = self._recent.popitem(last=False)
            if old not in self.kept and old not in self.sampled:
                del self._known[old]

    def _keep(self, life: Life) -> None:
        key = (life.opener.number, life.conn_id)
        if key not in self.kept:
            if len(self.kept) < KEPT_LIVES:
                self.kept[key] = life
            else:
                self.lives_dropped += 1

    # -- the fold

    def add(self, source: str, event: dict[str, Any]) -> None:
        """Fold one event in."""
        ts = event_time(event)
        if self.since is not None or self.until is not None:
            moment = epoch(ts)
            if moment is not None and (
                (self.since is not None and moment < self.since)
                or (self.until is not None and moment > self.until)
            ):
                self.filtered += 1
                return
        process = self._process_of(source, event)
        process.events += 1
        process.seen_at(ts)
        name = event["event"]
        if name in OPENED:
            process.opened += 1
            life = self._life(process, event, source)
            if life is not None and life.opened_ts is None:
                life.opened_ts = ts
            return
        if name == CLOSED:
            process.closed += 1
            life = self._life(process, event, source)
            if life is not None:
                outcome = _shared(str(event.get("outcome")))
                life.closes.append((process, outcome, ts))
                if outcome in ENDINGS and life.opener is process:
                    self._end(life, ts)
            return
        if name == Event.REPORTS_REPEATED:
            for repeat in event.get("repeats") or ():
                if isinstance(repeat, dict) and repeat.get("opened_in") in self.problems:
                    self.problems[repeat["opened_in"]].left_out += int(repeat.get("count") or 0)
            return
        if name in advice.PROBLEM_EVENTS:
            self._problem(source, process, event, ts)

    def _problem(self, source: str, process: Process, event: dict[str, Any], ts: Any) -> None:
        name = event["event"]
        kind = advice.kind(event)
        level = LEVELS.get(str(event.get("level") or event.get("log_level") or "").lower(), WARNING)
        culprit = advice.culprit(event)
        problem = self.problems.get(culprit)
        if problem is None:
            problem = self.problems[culprit] = Problem(culprit, event)
        problem.add(kind, level, process, epoch(ts))
        if kind not in problem.examples:
            problem.examples[kind] = {key: event[key] for key in EXAMPLE_KEYS if key in event}
        self.kinds[kind] += 1
        process.problems[kind] += 1
        if name == Event.CONNECTION_FORK_INHERITED:
            problem.inheritors.add(process.number)
            parent_pid = event.get("parent_pid")
            if isinstance(parent_pid, int):
                process.parent_pid = parent_pid
            if isinstance(event.get("opened_by_pid"), int):
                process.inherited[event.get("conn_id")] = event["opened_by_pid"]
        life = self._life(process, event, source)
        if life is None:
            return
        life.marks += ((kind, process, ts, level),)
        life.problems |= {culprit}
        if name == Event.CONNECTION_FORK_INHERITED:
            life.inherited_by += (process,)
        elif name == Event.CONNECTION_INHERITED_USED:
            life.used_by += (process,)
        elif name == Event.CONNECTION_DOUBLE_CLOSE:
            life.closes.append((process, Outcome.ALREADY_CLOSED, ts))
            if life.opener is process:
                self._end(life, ts)
        elif name == Event.CONNECTION_ABANDONED and life.opener is process:
            self._end(life, ts)
        self._keep(life)
        if len(problem.lives) < LIVES_PER_PROBLEM and life not in problem.lives:
            problem.lives.append(life)

    # -- at the end

    def finish(self) -> None:
        """Link each process to its parent, and each lost or double-closed life to its killer."""
        for process in self.processes:
            if process.parent_pid is not None:
                parent = self._current.get((process.origin, process.parent_pid))
                if parent is None and process.host is None:
                    parent = self._hostless.get((os.path.dirname(process.source), process.parent_pid))
                if parent is not None and parent is not process:
                    process.parent = parent
                    parent.children.append(process)
        sessions: dict[tuple[str, Any], list[Life]] = {}
        for life in self._known.values():
            if life.backend_pid is not None:
                sessions.setdefault((life.opener.origin, life.backend_pid), []).append(life)
        for life in self.kept.values():
            same = (
                sessions.get((life.opener.origin, life.backend_pid), [life]) if life.backend_pid else [life]
            )
            self._who_killed(life, same)

    def _who_killed(self, life: Life, same_session: list[Life]) -> None:
        """Tie a loss or a double close in one process to another process's close of the same session.

        The same session is the same life (its ``conn_id``, followed into the children that inherited
        it), or failing that a life of the same host and ``backend_pid`` in the same process family.
        """
        others = [other for other in same_session if other is not life]
        for kind, victim, written, _ in life.marks:
            if kind.split(":")[0] not in KILLING:
                continue
            ts = epoch(written)
            for lives, family in (([life], None), (others, _family(victim))):
                closers = [
                    (closer, at)
                    for other in lives
                    for closer, outcome, at in _closes(other)
                    if closer is not victim
                    and outcome == Outcome.CLOSED
                    and (family is None or _family(closer) is family)
                    and (ts is None or at is None or at <= ts)
                ]
                if closers:
                    life.killed_by = max(closers, key=lambda c: c[1] or 0.0)[0]
                    for culprit in life.problems:
                        self.problems[culprit].killers[life.killed_by.label] += 1
                    return

    def open_lives(self) -> int:
        """Return how many lives were still open when the logs ended."""
        return len(self._open)
