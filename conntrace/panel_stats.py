"""The Connections panel's stats: what one request did with each connection, as plain JSON data.

The toolbar's store keeps stats as JSON (tuples come back as lists, non-string
keys are dropped), so the stats are lists and string-keyed dicts only, and the
panel renders the same from a live request and from the store.
"""

from __future__ import annotations

import time
from typing import Any, Optional

from conntrace import conf, drivers, panel_timeline, pool_forensics, process, records
from conntrace import panel_tracking as tracking
from conntrace.names import (
    WARNING_OUTCOMES,
    AtRequestEnd,
    CloseWhen,
    Origin,
    Outcome,
    PanelBadge,
    PanelNote,
    Placeholder,
    RequestEnd,
    State,
)

STATS_VERSION = 1
NO_APPLICATION_FRAME = Placeholder.NO_APPLICATION_FRAME.value


def build_stats(session: Optional[tracking.Session], request_end: Optional[str] = None) -> dict[str, Any]:
    """Return the panel's stats: JSON-safe (lists, string keys), so the toolbar's store keeps them intact."""
    if session is None:
        return {
            "version": STATS_VERSION,
            "installed": False,
            "connections": [],
            "others": [],
            "process": _process_facts(),
            "pools": [],
            "counts": {"opened": 0, "reused": 0, "warnings": 0},
            "request_end": RequestEnd.NONE,
            "timeline": panel_timeline.build([], 0.0),
        }
    now = time.monotonic()
    downgrade = conf.get()["DOWNGRADE_CLOSE_ERRORS"]
    entries = [_connection_entry(touch, session, now, downgrade) for touch in session.touched.values()]
    pending = any(e["at_request_end"] in (AtRequestEnd.CLOSES, AtRequestEnd.CHECKED) for e in entries)
    if request_end is None:
        session.end_pending = pending
        request_end = RequestEnd.PENDING if pending else RequestEnd.NONE
    others = [
        _other_entry(record, now)
        for record in records.registry.open_records()
        if record.conn_id not in session.touched and not tracking.opened_by_toolbar(record)
    ]
    return {
        "version": STATS_VERSION,
        "installed": True,
        "connections": entries,
        "others": others,
        "process": _process_facts(),
        "pools": _pools(),
        "counts": {
            # A pool's checkout of a session it already had reuses that session: not "opened".
            "opened": sum(1 for e in entries if e["origin"] != Origin.EARLIER and e["new_session"]),
            "reused": sum(1 for e in entries if e["origin"] == Origin.EARLIER or not e["new_session"]),
            "warnings": sum(e["warnings"] for e in entries),
        },
        "request_end": request_end,
        "timeline": panel_timeline.build(entries, _ms(now - session.started_mono)),
    }


def _ms(seconds: float) -> float:
    return round(seconds * 1000, 3)


def _connection_entry(
    touch: tracking.Touch, session: tracking.Session, now: float, downgrade: bool
) -> dict[str, Any]:
    record = touch.record
    data = record.as_dict()
    for index, close in enumerate(data["closes"]):
        close["at_ms"] = _ms(record.closes[index].at - session.started_at)
        close["at_relative"] = panel_timeline.relative(close["at_ms"])
        close["by_django"] = _django_closer(close["stack_full"])
        if close["by_django"] and (close["closed_in"] or "").startswith(NO_APPLICATION_FRAME):
            close["closed_in"] = None  # every frame is Django's or the server's: "by Django's ..." says it
        if index < touch.closes_before:
            close["when"] = CloseWhen.BEFORE
        elif touch.closes_at_stats is not None and index >= touch.closes_at_stats:
            close["when"] = CloseWhen.AT_END
        else:
            close["when"] = CloseWhen.DURING
    data["origin"] = touch.origin
    data["opened_by_pid"] = record.pid
    data["opened_thread"] = data.pop("thread")
    data["opened_before_s"] = round(max(session.started_mono - record.opened_mono, 0.0), 3)
    data["opened_by_other_process"] = record.pid != process.pid
    data["opened_ms"] = _ms(record.opened_mono - session.started_mono)
    data["opened_relative"] = panel_timeline.relative(data["opened_ms"])
    first_use = record.use_stack_mono
    data["first_use_ms"] = _ms(first_use - session.started_mono) if first_use is not None else None
    data["driver_closed_by"] = None
    data["at_request_end"] = None
    if record.state == State.OPEN:
        wrapper = record.wrapper_ref() if record.wrapper_ref is not None else None
        if wrapper is not None and wrapper.connection is not None:
            data["driver_closed_by"] = _driver_closed_by(wrapper.connection)
            data["at_request_end"] = _fate_at_request_end(wrapper, now)
    badges, warnings = _badges(data, record, downgrade)
    data["badges"] = badges
    data["warnings"] = warnings
    return data


def _django_closer(stack: list[str]) -> Optional[str]:
    """Name Django's own machinery when it made the close (its frames are hidden from ``closed_in``)."""
    text = "\n".join(stack)
    if " in close_old_connections" in text:
        if " in HttpResponseBase.close" in text:
            return "Django's close_old_connections at request_finished"
        return "Django's close_old_connections"
    if " in ConnectionHandler.close_all" in text:
        return "Django's connections.close_all()"
    return None


def _driver_closed_by(conn: Any) -> Optional[str]:
    try:
        return drivers.closed_state(conn)  # looks at the driver and the socket; sends nothing
    except Exception:
        return None


def _fate_at_request_end(wrapper: Any, now: float) -> str:
    """Say what Django's close_old_connections will do with this connection when the request ends."""
    if wrapper.autocommit != wrapper.settings_dict.get("AUTOCOMMIT", True):
        return AtRequestEnd.CLOSES
    if wrapper.close_at is not None and now >= wrapper.close_at:
        return AtRequestEnd.CLOSES
    if wrapper.errors_occurred:
        return AtRequestEnd.CHECKED
    return AtRequestEnd.KEPT


def _badges(
    data: dict[str, Any], record: records.ConnectionRecord, downgrade: bool
) -> tuple[list[dict[str, Any]], int]:
    badges: list[dict[str, Any]] = []
    warnings = 0
    outcomes = [close["outcome"] for close in data["closes"]]
    for close in data["closes"]:
        if close["outcome"] in WARNING_OUTCOMES:
            warnings += 1
    if Outcome.ALREADY_CLOSED in outcomes:
        who = next(c["closed_by"] for c in data["closes"] if c["outcome"] == Outcome.ALREADY_CLOSED)
        title = f"closed again after the {who or 'driver'} had closed it"
        badges.append(_badge("double-close", PanelBadge.DOUBLE_CLOSE, title))
    if Outcome.FAILED in outcomes:
        label = PanelBadge.CLOSE_ERROR_DOWNGRADED if downgrade else PanelBadge.CLOSE_ERROR
        badges.append(_badge("close-failed", label, "the driver raised while closing"))
    if Outcome.ABANDONED in outcomes:
        badges.append(_badge("abandoned", Outcome.ABANDONED, "its wrapper was garbage-collected while open"))
    if record.lost is not None:
        warnings += 1
        title = f"a query failed because the session was gone ({record.lost}): see connection_lost"
        badges.append(_badge("lost", PanelBadge.LOST, title))
    if data["inherited"]:
        warnings += 1
    badges.extend(_opened_outside_badges(record))
    if data["driver_closed_by"] and Outcome.ALREADY_CLOSED not in outcomes:
        warnings += 1
        badges.append(
            _badge(
                "driver-closed",
                PanelBadge.DRIVER_CLOSED,
                f"closed by the {data['driver_closed_by']}; Django's next close is a double close",
            )
        )
    if Outcome.NOOP in outcomes:
        badges.append(_badge("repeat-close", PanelBadge.REPEAT_CLOSE, "Django's wrapper was already closed"))
    if data["origin"] == Origin.TOOLBAR:
        badges.append(
            _badge("toolbar", PanelBadge.TOOLBAR_STORE, "the debug toolbar's DatabaseStore opened it")
        )
    return badges, warnings


def _opened_outside_badges(record: records.ConnectionRecord) -> list[dict[str, Any]]:
    """Badge a connection opened by another process, or before any request in a process that never forked.

    Such a connection is what a preforking server (gunicorn ``--preload``, uWSGI
    without ``lazy-apps``) hands to every worker: the badge says why in one line.
    """
    why = PanelNote.SHARED_BY_WORKERS.value
    if record.inherited:
        title = f"opened by process {record.pid} before a fork"
        return [_badge("fork-inherited", PanelBadge.FORK_INHERITED, title, why)]
    if record.pid != process.pid:
        return [_badge("other-process", PanelNote.OTHER_PROCESS, f"opened by process {record.pid}", why)]
    # Opened after a fork (in a worker, before its first request) it is the worker's own: no one shares it.
    if record.opened_request_gen == 0 and record.fork_gen == 0:
        title = "opened before this process began its first request (at import time or start-up)"
        return [_badge("before-first-request", PanelNote.BEFORE_FIRST_REQUEST, title, why)]
    return []


def _badge(kind: str, label: str, title: str, why: Optional[str] = None) -> dict[str, Any]:
    return {"kind": kind, "label": label, "title": title, "why": why}


def _other_entry(record: records.ConnectionRecord, now: float) -> dict[str, Any]:
    return {
        "conn_id": record.conn_id,
        "alias": record.alias,
        "vendor": record.vendor,
        "thread": record.thread,
        "pid": record.pid,
        "backend_pid": record.backend_pid,
        "age_s": round(now - record.opened_mono, 3),
        # A thread that ended, or idles, holding its connection (an executor thread under ASGI).
        "idle_s": record.idle_s(now),
        "thread_alive": record.thread_alive(),
        "transaction_started_in": record.transaction_started_in(),
        "opened_in": record.opened_in(),
        "opened_stack": record.opened_stack(),
        "opened_stack_full": record.opened_stack_full(),
        "inherited": record.inherited,
        "badges": _opened_outside_badges(record),
    }


def _pools() -> list[dict[str, Any]]:
    """Return Django's psycopg pools of this process, with who holds each connection (JSON-safe)."""
    pools = pool_forensics.all_pools()
    for pool in pools:
        for holder in pool["holders"]:
            # The context is the application's structlog values: kept as text for the store.
            holder["context"] = {str(key): str(value) for key, value in holder["context"].items()}
    return pools


def _process_facts() -> dict[str, Any]:
    held = [r for r in records.registry.open_records() if r.inherited]
    discarded = [r for r in records.registry.ended_records() if r.inherited]
    return {
        "pid": process.pid,
        "parent_pid": process.parent_pid,
        "fork_policy": conf.get()["FORK_POLICY"],
        "forked_child": process.fork_gen > 0,
        "inherited_held": len(held),
        "inherited_discarded": len(discarded),
        "recording": process.active,
    }
