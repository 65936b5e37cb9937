"""Times as log lines write them: kept as written, read into epoch seconds only when needed.

One process writes one format, whose strings sort as its times do: the fold
compares them as written, and parses a time (~1 µs) only to show it, to
filter by --since / --until, or to compare processes of one host.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, Optional

TIME_KEYS = ("timestamp", "time", "ts", "@timestamp")

_second_cache: dict[tuple[str, str], float] = {}


def epoch(value: Any) -> Optional[float]:
    """Return seconds since the epoch of an ISO 8601 time (naive: UTC) or a number; None if neither.

    The whole seconds are parsed once per distinct second, the fraction as a float.
    """
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if not isinstance(value, str) or len(value) < 19:
        return None
    head, rest = value[:19], value[19:]
    fraction = 0.0
    if rest[-1:] == "Z" and rest[:1] == ".":  # structlog's TimeStamper(fmt="iso"): the usual case first
        base = _second_cache.get((head, "Z"))
        if base is not None:
            try:
                return base + float(rest[:-1])
            except ValueError:
                return None
    if rest[:1] == ".":
        end = 1
        while end < len(rest) and rest[end].isdigit():
            end += 1
        fraction = float(rest[:end]) if end > 1 else 0.0
        rest = rest[end:]
    key = (head, rest)
    base = _second_cache.get(key)
    if base is None:
        try:
            moment = datetime.fromisoformat(head + ("+00:00" if rest in ("Z", "z") else rest))
        except ValueError:
            return None
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=UTC)
        if len(_second_cache) > 100_000:
            _second_cache.clear()
        base = _second_cache[key] = moment.timestamp()
    return base + fraction


def event_time(event: dict[str, Any]) -> Any:
    """Return the time of ``event`` as written (an ISO 8601 string or a number), from its first time field."""
    value = event.get("timestamp")
    if value is None:
        for key in TIME_KEYS:
            if key in event:
                return event[key]
    return value
