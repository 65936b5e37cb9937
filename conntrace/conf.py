"""Settings: one ``CONNTRACE`` dict, read in one place, with documented defaults."""

from __future__ import annotations

from typing import Any

from django.conf import settings as django_settings

FORK_POLICIES = ("reset", "warn", "raise")

DEFAULTS: dict[str, Any] = {
    # Master switch: False leaves Django's DatabaseWrapper untouched.
    "ENABLED": True,
    # How many frames of the opening (and closing) stack to keep, innermost first.
    "STACK_DEPTH": 30,
    # Extra module prefixes whose frames are hidden when looking for the user's line.
    "HIDE_MODULES": (),
    # structlog logger name used for every event.
    "LOGGER_NAME": "conntrace",
    # Turn a driver error raised while closing into a warning instead of an exception.
    "DOWNGRADE_CLOSE_ERRORS": True,
    # How many closed-connection records this process keeps for history().
    "MAX_RECORDS": 500,
    # What a forked child does with a connection inherited from its parent.
    "FORK_POLICY": "reset",
    # At close, sessions at least this many seconds old get their socket polled (one system
    # call) to tell whether the server or a pooler had already ended them. Younger ones rely
    # on the driver's own flag, which any query after such an end sets. 0: poll at every close.
    "SOCKET_CHECK_AFTER_S": 1.0,
}

# key -> (accepted types, description used by system checks)
EXPECTED: dict[str, tuple[tuple[type, ...], str]] = {
    "ENABLED": ((bool,), "True or False"),
    "STACK_DEPTH": ((int,), "an integer between 1 and 200"),
    "HIDE_MODULES": ((list, tuple), 'a list of module names, e.g. ["myproject.db"]'),
    "LOGGER_NAME": ((str,), 'a non-empty string, e.g. "conntrace"'),
    "DOWNGRADE_CLOSE_ERRORS": ((bool,), "True or False"),
    "MAX_RECORDS": ((int,), "an integer between 0 and 1000000"),
    "FORK_POLICY": ((str,), 'one of "reset", "warn", "raise"'),
    "SOCKET_CHECK_AFTER_S": ((int, float), "a number of seconds between 0 and 86400, e.g. 1.0"),
}


def value_problem(key: str, value: Any) -> str | None:
    """Return why ``value`` is not acceptable for ``key``, or None if it is."""
    types, _ = EXPECTED[key]
    if isinstance(value, bool) and bool not in types:
        return "a boolean"
    if not isinstance(value, types):
        return kind_of(value)
    if key == "STACK_DEPTH" and not 1 <= value <= 200:
        return f"{value}"
    if key == "MAX_RECORDS" and not 0 <= value <= 1_000_000:
        return f"{value}"
    if key == "SOCKET_CHECK_AFTER_S" and not 0 <= value <= 86400:  # also rejects NaN
        return f"{value}"
    if key == "LOGGER_NAME" and not value.strip():
        return "an empty string"
    if key == "HIDE_MODULES" and not all(isinstance(m, str) and m for m in value):
        return "a list holding something other than module names"
    if key == "FORK_POLICY" and value not in FORK_POLICIES:
        return repr(value)
    return None


def kind_of(value: Any) -> str:
    """Return "None", "an int", "a str"... for a message."""
    if value is None:
        return "None"
    name = type(value).__name__
    return f"{'an' if name[:1].lower() in 'aeiou' else 'a'} {name}"


def _read() -> dict[str, Any]:
    user = getattr(django_settings, "CONNTRACE", None) or {}
    merged = dict(DEFAULTS)
    if not isinstance(user, dict):
        return merged
    for key, value in user.items():
        # Invalid values fall back to the default; the system checks report them.
        if key in DEFAULTS and value_problem(key, value) is None:
            merged[key] = value
    merged["HIDE_MODULES"] = tuple(merged["HIDE_MODULES"])
    return merged


_cache: dict[str, Any] | None = None


def get() -> dict[str, Any]:
    """Return the effective settings (defaults overlaid with valid user values)."""
    global _cache
    if _cache is None:
        _cache = _read()
    return _cache


def reload(**kwargs: Any) -> None:
    """Forget cached settings; connected to Django's ``setting_changed``."""
    global _cache
    if kwargs.get("setting") in (None, "CONNTRACE", "DATABASES"):
        _cache = None
        for listener in _listeners:
            listener()


_listeners: list[Any] = []


def on_reload(listener: Any) -> None:
    """Call ``listener`` whenever the settings are re-read."""
    if listener not in _listeners:
        _listeners.append(listener)
