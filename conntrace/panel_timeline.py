"""The panel's timeline: one lane per connection, its marks placed as percentages of the request.

Plain data in, plain data out (the toolbar's store keeps it as JSON). Times are
milliseconds from the start of the request: a connection opened earlier has a
negative ``opened_ms`` and its lane starts at the left edge, with its age
written. The template draws the lanes with CSS only.
"""

from __future__ import annotations

from typing import Any, Optional

from conntrace.names import WARNING_OUTCOMES, PanelNote, State

MIN_SPAN_MS = 0.1  # a request that took no time still gets a scale


def duration(ms: float) -> str:
    """Return a short duration: ``"12.3 ms"`` under a second, ``"1.23 s"`` and ``"12.3 s"`` above."""
    if ms < 1000:
        return f"{ms:.1f} ms"
    seconds = ms / 1000
    return f"{seconds:.2f} s" if seconds < 10 else f"{seconds:.1f} s"


def relative(ms: float) -> str:
    """Say when, relative to the request: ``"+12.3 ms into the request"``, ``"3.2 s before the request"``."""
    if ms < 0:
        return PanelNote.BEFORE_REQUEST.format(duration(-ms))
    return PanelNote.INTO_REQUEST.format(duration(ms))


def build(entries: list[dict[str, Any]], end_ms: float) -> dict[str, Any]:
    """Return the timeline of ``entries`` (the panel's connection entries) for a request ``end_ms`` long."""
    last_close = max((c["at_ms"] for e in entries for c in e["closes"]), default=0.0)
    span = max(end_ms, last_close, MIN_SPAN_MS)
    return {
        "span": duration(span),
        "lanes": [_lane(entry, span) for entry in entries],
    }


def _lane(entry: dict[str, Any], span: float) -> dict[str, Any]:
    opened = entry["opened_ms"]
    earlier = opened < 0
    marks = [] if earlier else [_mark("opened", opened, span, f"opened, {relative(opened)}")]
    first_use = entry.get("first_use_ms")
    if first_use is not None and first_use >= 0:
        marks.append(_mark("used", first_use, span, f"first use, {relative(first_use)}"))
    for close in entry["closes"]:
        if close["at_ms"] < 0:
            continue  # closed before this request: not on its scale
        kind = "close-warning" if close["outcome"] in WARNING_OUTCOMES else "close"
        marks.append(_mark(kind, close["at_ms"], span, f"{close['outcome']}, {relative(close['at_ms'])}"))
    marks.append(_mark("end", span, span, PanelNote.REQUEST_END_MARK))
    ended_ms = _ended_ms(entry)
    start = 0.0 if earlier else _percent(opened, span)
    stop = _percent(ended_ms, span) if ended_ms is not None else 100.0
    return {
        "conn_id": entry["conn_id"],
        "alias": entry["alias"],
        "earlier": earlier,
        "age": duration(-opened) if earlier else None,
        "bar_left": f"{start:.2f}",
        "bar_width": f"{max(stop - start, 0.5):.2f}",
        "marks": marks,
    }


def _ended_ms(entry: dict[str, Any]) -> Optional[float]:
    """Return when the session ended on this request's scale, or None while it is still open."""
    if entry["state"] == State.OPEN or not entry["closes"]:
        return None
    return max(entry["closes"][-1]["at_ms"], 0.0)


def _mark(kind: str, ms: float, span: float, title: str) -> dict[str, str]:
    return {"kind": kind, "left": f"{_percent(ms, span):.2f}", "title": title}


def _percent(ms: float, span: float) -> float:
    return min(max(ms / span * 100, 0.0), 100.0)
