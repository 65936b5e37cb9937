"""The model as plain, JSON-safe data: what ``--json`` prints, and what the text and HTML outputs render.

Times are ISO 8601 strings in UTC (``*_at``) beside their epoch seconds
(``*_ts``) for drawing; processes and lives are referred to by number.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, Optional

from conntrace.report.entities import Life, Problem, Process
from conntrace.report.model import WARNING, Deployment
from conntrace.report.reading import ReadStats
from conntrace.report.times import epoch

LEVEL_NAMES = {10: "debug", 20: "info", 30: "warning", 40: "error", 50: "critical"}


def iso(ts: Optional[float]) -> Optional[str]:
    """Return ``ts`` (epoch seconds) as an ISO 8601 UTC time, milliseconds shown."""
    if ts is None:
        return None
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _process(process: Process) -> dict[str, Any]:
    return {
        "id": process.number,
        "label": process.label,
        "host": process.host,
        "source": process.source,
        "pid": process.pid,
        "start": process.start,
        "parent": process.parent.number if process.parent else None,
        "parent_pid": process.parent_pid,
        "children": [child.number for child in process.children],
        "first_seen": iso(epoch(process.first_ts)),
        "last_seen": iso(epoch(process.last_ts)),
        "first_ts": epoch(process.first_ts),
        "last_ts": epoch(process.last_ts),
        "events": process.events,
        "opened": process.opened,
        "closed": process.closed,
        "problems": dict(process.problems),
    }


def _life(life: Life) -> dict[str, Any]:
    return {
        "id": life.number,
        "opened_by": life.opener.number,
        "conn_id": life.conn_id,
        "alias": life.alias,
        "backend_pid": life.backend_pid,
        "opened_in": life.opened_in,
        "opened_at": iso(epoch(life.opened_ts)),
        "ended_at": iso(epoch(life.ended_ts)),
        "opened_ts": epoch(life.opened_ts),
        "ended_ts": epoch(life.ended_ts),
        "inherited_by": [process.number for process in life.inherited_by],
        "used_by": [process.number for process in life.used_by],
        "closes": [
            {"by": process.number, "outcome": outcome, "at": iso(epoch(ts)), "ts": epoch(ts)}
            for process, outcome, ts in life.closes
        ],
        "marks": [
            {
                "kind": kind,
                "by": process.number,
                "at": iso(epoch(ts)),
                "ts": epoch(ts),
                "level": LEVEL_NAMES.get(level, str(level)),
            }
            for kind, process, ts, level in life.marks
        ],
        "problems": sorted(life.problems),
        "killed_by": life.killed_by.number if life.killed_by else None,
    }


def _problem(problem: Problem) -> dict[str, Any]:
    return {
        "culprit": problem.culprit,
        "level": LEVEL_NAMES.get(problem.level, str(problem.level)),
        "count": problem.count,
        "left_out": problem.left_out,
        "kinds": dict(problem.kinds.most_common()),
        "processes": sorted(problem.processes),
        "process_labels": [problem.processes[n].label for n in sorted(problem.processes)],
        "inheritors": len(problem.inheritors),
        "hosts": sorted(problem.hosts),
        "first_seen": iso(problem.first_ts),
        "last_seen": iso(problem.last_ts),
        "what_to_do": problem.what_to_do,
        "stack": problem.stack,
        "killed_by": dict(problem.killers.most_common()),
        "details": problem.examples,
        "lives": [life.number for life in problem.lives],
    }


def problem_order(problem: Problem) -> tuple[bool, int, str]:
    """Warnings and errors first, then the most frequent, then by culprit."""
    return (problem.level < WARNING, -problem.count, problem.culprit)


def build(deployment: Deployment, stats: ReadStats) -> dict[str, Any]:
    """Return everything the report found, as data."""
    problems = sorted(deployment.problems.values(), key=problem_order)
    lives = {**deployment.sampled, **deployment.kept}
    shown = sorted(lives.values(), key=lambda life: life.number)
    return {
        "input": {
            "files": stats.files,
            "lines": stats.lines,
            "events": stats.events,
            "other_lines": stats.other,
            "corrupt_lines": stats.corrupt,
            "damaged": stats.damaged,
            "outside_since_until": deployment.filtered,
        },
        "problems": [_problem(problem) for problem in problems],
        "processes": [_process(process) for process in deployment.processes],
        "lives": [_life(life) for life in shown],
        "totals": {
            "processes": len(deployment.processes),
            "hosts": len({p.host or p.origin for p in deployment.processes}),
            "lives": deployment.lives_total,
            "lives_shown": len(shown),
            "lives_ended": deployment.lives_ended,
            "lives_open_at_end": deployment.open_lives(),
            "opened": sum(p.opened for p in deployment.processes),
            "closed": sum(p.closed for p in deployment.processes),
            "problems_by_kind": dict(deployment.kinds.most_common()),
        },
        "worst_level": LEVEL_NAMES.get(max((p.level for p in problems), default=0)),
    }


def has_warnings(findings: dict[str, Any]) -> bool:
    """Return True when a warning- or error-level problem was found (exit status 1)."""
    return any(problem["level"] in ("warning", "error", "critical") for problem in findings["problems"])
