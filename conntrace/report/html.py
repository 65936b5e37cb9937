"""One self-contained HTML page: the problems with their stacks, a timeline, the lives, the families.

No network, no script: the timeline is inline SVG, with one lane per process
(grouped by host, each host on its own clock, since hosts' clocks may
disagree), a bar per connection life in the lane of the process that opened
it, marks where a process inherited it, closed it or reported a problem, and
links from each problem to its lives. Beyond ``MAX_LANES`` processes and
``MAX_BARS`` lives the page draws the first ones and says how many it left out.
"""

from __future__ import annotations

from html import escape
from typing import Any, Optional

from conntrace.report import advice, model
from conntrace.report.findings import iso

MAX_LANES = 300
MAX_BARS = 5_000
MAX_TABLE_LIVES = 2_000
OPEN_AT_END = "open when the logs end"
WIDTH = 1100
LABEL_W = 230
LANE_H = 18
PLOT_W = WIDTH - LABEL_W - 10
MARK_COLOURS = {"error": "#c0392b", "critical": "#c0392b", "warning": "#e67e22", "info": "#7f8c8d"}

STYLE = """
body{font:14px/1.4 system-ui,sans-serif;margin:16px 24px;color:#222}
h1{font-size:20px;margin:0 0 4px} h2{font-size:16px;margin:20px 0 6px}
.meta{color:#555;margin-bottom:8px} .damaged{color:#b35900}
.problem{border-left:4px solid #999;padding:4px 10px;margin:6px 0;background:#fafafa}
.problem.warning{border-color:#e67e22} .problem.error,.problem.critical{border-color:#c0392b}
.level{font-weight:bold;text-transform:uppercase;font-size:12px;margin-right:8px}
.culprit{font-family:ui-monospace,monospace;font-weight:bold;font-size:15px}
.what{color:#1a5276} pre{margin:4px 0;font-size:12px;background:#f0f0f0;padding:4px}
table{border-collapse:collapse;font-size:12px} td,th{border:1px solid #ddd;padding:2px 6px;text-align:left}
tr:target{background:#fff3b0} .note{color:#555;font-style:italic}
svg text{font:11px ui-monospace,monospace} a{color:#1f618d}
"""


def _e(value: Any) -> str:
    return escape(str(value), quote=True)


def _problem(number: int, problem: dict[str, Any]) -> str:
    kinds = ", ".join(f"{_e(kind)} x{count}" for kind, count in problem["kinds"].items())
    lives = " ".join(f'<a href="#life-{n}">#{n}</a>' for n in problem["lives"])
    killers = ", ".join(_e(k) for k in problem["killed_by"])
    stack = "\n".join(problem["stack"])
    details = "".join(
        f"<li><b>{_e(k)}</b>: {_e(v)}</li>" for kind in problem["details"].values() for k, v in kind.items()
    )
    return f"""<div class="problem {_e(problem["level"])}" id="problem-{number}">
<span class="level">{_e(problem["level"])}</span><span class="culprit">{_e(problem["culprit"])}</span>
x{problem["count"]}<div>{kinds}</div>
<div>{len(problem["processes"])} process(es) on {_e(", ".join(problem["hosts"]))}:
{_e(", ".join(problem["process_labels"][:12]))}
{f"; inherited by {problem['inheritors']} forked process(es)" if problem["inheritors"] else ""}</div>
{f"<div>closed by another process first: {killers}</div>" if killers else ""}
<div>first {_e(problem["first_seen"])}, last {_e(problem["last_seen"])}</div>
<div class="what">What to do: {_e(problem["what_to_do"])}</div>
<details><summary>stack and details</summary><pre>{_e(stack)}</pre><ul>{details}</ul></details>
<div>lives: {lives or "none"}</div></div>"""


def _lanes(findings: dict[str, Any]) -> list[dict[str, Any]]:
    """Return the processes in drawing order: by host, each family parent first."""
    processes = findings["processes"]
    ordered: list[dict[str, Any]] = []

    def walk(process: dict[str, Any]) -> None:
        ordered.append(process)
        for child in process["children"]:
            walk(processes[child])

    for process in sorted(processes, key=lambda p: (p["host"] or p["source"], p["first_ts"] or 0.0)):
        if process["parent"] is None:
            walk(process)
    return ordered


class Axis:
    """One host's clock mapped onto the plot's width."""

    def __init__(self, lanes: list[dict[str, Any]]) -> None:
        times = [t for p in lanes for t in (p["first_ts"], p["last_ts"]) if t is not None]
        self.start = min(times, default=0.0)
        self.span = max(max(times, default=0.0) - self.start, 1e-3)

    def x(self, ts: Optional[float], default: float) -> float:
        value = default if ts is None else ts
        return LABEL_W + (value - self.start) / self.span * PLOT_W


def _place(
    process: int, ts: Optional[float], row: dict[int, int], axis_of: dict[int, Axis], default: float
) -> Optional[tuple[float, int]]:
    """Return where a close or a mark by ``process`` at ``ts`` goes, or None if its lane is not drawn."""
    if process not in row:
        return None
    return axis_of[process].x(ts, default), row[process] * LANE_H + 20


def _close_svg(place: tuple[float, int], close: dict[str, Any], life: int) -> str:
    x, y = place
    return (
        f'<rect x="{x - 1:.1f}" y="{y}" width="2" height="{LANE_H - 2}" fill="#1b4f72">'
        f"<title>{_e(close['outcome'])} (life #{life})</title></rect>"
    )


def _mark_svg(place: tuple[float, int], mark: dict[str, Any], life: int) -> str:
    x, y = place
    fill = MARK_COLOURS.get(mark["level"], "#e67e22")
    return (
        f'<a href="#life-{life}"><path d="M{x:.1f} {y + 1} l5 7 l-5 7 l-5 -7 z" fill="{fill}">'
        f"<title>{_e(mark['kind'])} ({_e(mark['level'])}, life #{life})</title></path></a>"
    )


def _timeline(findings: dict[str, Any]) -> tuple[str, str]:
    """Return the SVG and a note on what it leaves out."""
    lanes = _lanes(findings)
    drawn = lanes[:MAX_LANES]
    row = {process["id"]: index for index, process in enumerate(drawn)}
    hosts: dict[str, list[dict[str, Any]]] = {}
    for process in drawn:
        hosts.setdefault(process["host"] or process["source"], []).append(process)
    axes = {host: Axis(group) for host, group in hosts.items()}
    axis_of = {p["id"]: axes[p["host"] or p["source"]] for p in drawn}
    height = len(drawn) * LANE_H + 30
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" id="timeline">']
    for process in drawn:
        y = row[process["id"]] * LANE_H + 20
        indent = 0 if process["parent"] is None else 12
        parts.append(f'<rect x="0" y="{y}" width="{WIDTH}" height="{LANE_H - 2}" fill="#f6f6f6"/>')
        parts.append(f'<text x="{4 + indent}" y="{y + 12}">{_e(process["label"])}</text>')
    for host, axis in axes.items():
        y = row[hosts[host][0]["id"]] * LANE_H + 16
        parts.append(
            f'<text x="{LABEL_W}" y="{y}" fill="#555">{_e(host)}: {_e(iso(axis.start))} '
            f"+{axis.span:.3f} s (this host's clock)</text>"
        )
    bars = 0
    for life in findings["lives"]:
        if life["opened_by"] not in row or bars >= MAX_BARS:
            continue
        bars += 1
        axis = axis_of[life["opened_by"]]
        opener = findings["processes"][life["opened_by"]]
        x0 = axis.x(life["opened_ts"], opener["first_ts"] or axis.start)
        x1 = axis.x(life["ended_ts"], axis.start + axis.span)  # still open when the logs end: to the edge
        y = row[life["opened_by"]] * LANE_H + 23
        colour = "#c0392b" if life["problems"] else "#5dade2"
        tip = f"life #{life['id']} conn {life['conn_id']} {life['alias']} opened in {life['opened_in']}"
        parts.append(
            f'<a href="#life-{life["id"]}"><rect x="{x0:.1f}" y="{y}" width="{max(x1 - x0, 2):.1f}" '
            f'height="{LANE_H - 8}" fill="{colour}" opacity="0.7"><title>{_e(tip)}</title></rect></a>'
        )
        points = [(close, x1, _close_svg) for close in life["closes"]]
        points += [(mark, x0, _mark_svg) for mark in life["marks"]]
        for point, default, draw in points:
            place = _place(point["by"], point["ts"], row, axis_of, default)
            if place:
                parts.append(draw(place, point, life["id"]))
    parts.append("</svg>")
    note = []
    if len(lanes) > len(drawn):
        note.append(
            f"{len(lanes) - len(drawn)} of {len(lanes)} processes are not drawn (the first {MAX_LANES} are)."
        )
    totals = findings["totals"]
    if totals["lives"] > bars:
        note.append(
            f"{bars} of {totals['lives']} connection lives drawn: every life with a problem (up to "
            f"{model.KEPT_LIVES}) and the first {model.SAMPLED_LIVES} others; "
            "the rest are counted in the totals."
        )
    return "".join(parts), " ".join(note)


def _lives_table(findings: dict[str, Any]) -> str:
    labels = {p["id"]: p["label"] for p in findings["processes"]}
    rows = []
    for life in findings["lives"][:MAX_TABLE_LIVES]:
        closes = "; ".join(f"{_e(labels[c['by']])}: {_e(c['outcome'])}" for c in life["closes"])
        marks = "; ".join(f"{_e(labels[m['by']])}: {_e(m['kind'])}" for m in life["marks"])
        killer = labels.get(life["killed_by"], "") if life["killed_by"] is not None else ""
        rows.append(
            f'<tr id="life-{life["id"]}"><td>#{life["id"]}</td><td>{_e(labels[life["opened_by"]])}</td>'
            f"<td>{_e(life['conn_id'])}</td><td>{_e(life['alias'])}</td><td>{_e(life['backend_pid'])}</td>"
            f"<td>{_e(life['opened_in'])}</td><td>{_e(life['opened_at'])}</td>"
            f"<td>{_e(life['ended_at'] or OPEN_AT_END)}</td>"
            f"<td>{_e(', '.join(labels[p] for p in life['inherited_by']))}</td>"
            f"<td>{closes}</td><td>{marks}</td>"
            f"<td>{_e(killer)}</td></tr>"
        )
    head = (
        "<tr><th>life</th><th>opened by</th><th>conn_id</th><th>alias</th><th>backend pid</th>"
        "<th>opened in</th><th>opened</th><th>ended</th><th>inherited by</th><th>closes</th>"
        "<th>problems</th><th>closed first by</th></tr>"
    )
    more = len(findings["lives"]) - MAX_TABLE_LIVES
    tail = f'<p class="note">{more} more lives are in --json.</p>' if more > 0 else ""
    return f"<table>{head}{''.join(rows)}</table>{tail}"


def render(findings: dict[str, Any]) -> str:
    """Return the whole page."""
    read = findings["input"]
    nothing = advice.NO_EVENTS if read["events"] == 0 else advice.NO_PROBLEMS
    problems = "".join(_problem(n, p) for n, p in enumerate(findings["problems"], 1))
    problems = problems or f"<p>{escape(nothing)}</p>"
    damaged = "".join(f'<div class="damaged">damaged: {_e(line)}</div>' for line in read["damaged"])
    svg, note = _timeline(findings)
    totals = findings["totals"]
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>conntrace report</title><style>{STYLE}</style></head>
<body><h1>conntrace report</h1>
<div class="meta">{read["files"]} file(s), {read["lines"]} lines, {read["events"]} conntrace events,
{read["other_lines"]} other lines skipped, {read["corrupt_lines"]} corrupt; {totals["processes"]} processes on
{totals["hosts"]} host(s), {totals["lives"]} connection lives</div>{damaged}
<h2>Problems by culprit</h2>{problems}
<h2>Timeline</h2><p class="note">One lane per process (children under their parent); bars: connection lives
(red: with a problem); ticks: closes; diamonds: problems. {_e(note)}</p>{svg}
<h2>Connection lives</h2>{_lives_table(findings)}
</body></html>
"""
