"""The terminal summary: problems by culprit, most frequent first; the process families; the totals.

Colours only on a terminal, and never when ``NO_COLOR`` is set (no-color.org).
"""

from __future__ import annotations

import os
from typing import Any, TextIO

from conntrace.report import advice

MAX_PROCESS_LINES = 40
MAX_LABELS = 6
COLOURS = {"error": "31;1", "critical": "31;1", "warning": "33;1", "info": "2", "dim": "2", "bold": "1"}


def wants_colour(stream: TextIO) -> bool:
    """Return True when ``stream`` is a terminal and ``NO_COLOR`` is not set."""
    return not os.environ.get("NO_COLOR") and hasattr(stream, "isatty") and stream.isatty()


class Painter:
    def __init__(self, colour: bool) -> None:
        self.colour = colour

    def __call__(self, style: str, text: str) -> str:
        code = COLOURS.get(style)
        return f"\033[{code}m{text}\033[0m" if self.colour and code else text


def _short(at: Any) -> str:
    return str(at).replace("T", " ") if at else "?"


def _labels(labels: list[str]) -> str:
    shown = ", ".join(labels[:MAX_LABELS])
    return shown + (f" and {len(labels) - MAX_LABELS} more" if len(labels) > MAX_LABELS else "")


def _problem_lines(number: int, problem: dict[str, Any], paint: Painter) -> list[str]:
    level = problem["level"]
    kinds = ", ".join(f"{kind} x{count}" for kind, count in problem["kinds"].items())
    hosts = problem["hosts"]
    lines = [
        f"{number}. {paint(level, level.upper())}  {paint('bold', problem['culprit'])}  x{problem['count']}"
        + (f" (+{problem['left_out']} repeats counted, not logged)" if problem["left_out"] else ""),
        f"   {kinds}",
        f"   {len(problem['processes'])} process(es) on {len(hosts)} host(s) ({_labels(hosts)}): "
        + _labels(problem["process_labels"]),
    ]
    if problem["inheritors"]:
        lines.append(f"   inherited by {problem['inheritors']} forked process(es)")
    if problem["killed_by"]:
        lines.append("   closed by another process first: " + _labels(list(problem["killed_by"])))
    lines.append(f"   first {_short(problem['first_seen'])}   last {_short(problem['last_seen'])}")
    lines.append(f"   what to do: {problem['what_to_do']}")
    return lines


def _family_lines(findings: dict[str, Any], paint: Painter) -> list[str]:
    processes = findings["processes"]
    lines: list[str] = []

    def walk(process: dict[str, Any], depth: int) -> None:
        if len(lines) >= MAX_PROCESS_LINES:
            return
        problems = ", ".join(f"{kind} {count}" for kind, count in process["problems"].items())
        lines.append(
            f"  {'  ' * depth}{'└─ ' if depth else ''}{process['label']}: opened {process['opened']}, "
            f"closed {process['closed']}" + (paint("warning", f"; {problems}") if problems else "")
        )
        for child in process["children"]:
            walk(processes[child], depth + 1)

    for process in processes:
        if process["parent"] is None:
            walk(process, 0)
    if len(processes) > len(lines):
        lines.append(f"  ... {len(processes)} processes in all (see --json or --html)")
    return lines


def render(findings: dict[str, Any], stream: TextIO) -> None:
    """Write the summary of ``findings`` to ``stream``."""
    paint = Painter(wants_colour(stream))
    read = findings["input"]
    out = [
        f"conntrace report: {read['files']} file(s), {read['lines']} lines, "
        f"{read['events']} conntrace events "
        f"({read['other_lines']} other lines skipped, {read['corrupt_lines']} corrupt)"
        + (f", {read['outside_since_until']} outside --since/--until" if read["outside_since_until"] else "")
    ]
    out += [paint("warning", f"damaged: {line}") for line in read["damaged"]]
    problems = findings["problems"]
    out.append("")
    if problems:
        out.append(paint("bold", f"Problems by culprit, most frequent first ({len(problems)})"))
        for number, problem in enumerate(problems, 1):
            out += ["", *_problem_lines(number, problem, paint)]
    else:
        out.append(advice.NO_EVENTS if read["events"] == 0 else advice.NO_PROBLEMS)
    out += [
        "",
        paint("bold", "Process families (parent, then the processes it forked)"),
        *_family_lines(findings, paint),
    ]
    totals = findings["totals"]
    kinds = ", ".join(f"{kind} {count}" for kind, count in totals["problems_by_kind"].items()) or "none"
    out += [
        "",
        paint("bold", "Totals"),
        f"  {totals['processes']} process(es) on {totals['hosts']} host(s); "
        f"{totals['lives']} connection lives "
        f"({totals['lives_ended']} ended, {totals['lives_open_at_end']} open when the logs end); "
        f"opened {totals['opened']}, closed {totals['closed']}",
        f"  problems by kind: {kinds}",
    ]
    stream.write("\n".join(out) + "\n")
