"""Settings: one ``CONNTRACE`` dict, read in one place, every key one row of ``SETTINGS``.

A row holds the key's default, what a valid value looks like (the text the
system check's hint shows), how to tell a bad one and the check id that
reports it. ``checks``, the runtime fallback, the README's table and the tests
all read this table, so a new setting costs one row.
"""

from __future__ import annotations

import difflib
import importlib.util
import math
import signal
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Optional

from django.conf import settings as django_settings

from conntrace.names import Policy

# Why a value is not acceptable ("a str", "0"...), or None when it is.
Validator = Callable[[Any], Optional[str]]


@dataclass(frozen=True)
class Setting:
    """One key of the ``CONNTRACE`` dict."""

    key: str
    default: Any
    expected: str  # what to write, as the check's hint says it
    problem: Validator
    code: str  # of the system check that reports a bad value ("E004"); never reused

    @property
    def check_id(self) -> str:
        return f"conntrace.{self.code}"


def kind_of(value: Any) -> str:
    """Return "None", "an int", "a str"... for a message."""
    if value is None:
        return "None"
    name = type(value).__name__
    return f"{'an' if name[:1].lower() in 'aeiou' else 'a'} {name}"


def _typed(*types: type, then: Optional[Validator] = None) -> Validator:
    """Accept instances of ``types`` (booleans only if ``bool`` is named) that ``then`` accepts."""

    def problem(value: Any) -> Optional[str]:
        if isinstance(value, bool) and bool not in types:
            return "a boolean"
        if not isinstance(value, types):
            return kind_of(value)
        return then(value) if then is not None else None

    return problem


def _between(low: float, high: float) -> Validator:
    def problem(value: Any) -> Optional[str]:
        # math.isnan: NaN compares false both ways and would pass a plain range test.
        return None if low <= value <= high and not math.isnan(value) else f"{value}"

    return problem


def _non_empty(value: str) -> Optional[str]:
    return None if value.strip() else "an empty string"


def _module_names(value: Any) -> Optional[str]:
    if all(isinstance(name, str) and name for name in value):
        return None
    return "a list holding something other than module names"


def _one_of(choices: tuple[str, ...]) -> Validator:
    def problem(value: str) -> Optional[str]:
        return None if value in choices else repr(value)

    return problem


def _int_between(low: int, high: int) -> Validator:
    return _typed(int, then=_between(low, high))


_module_list = _typed(list, tuple, then=_module_names)
_non_empty_str = _typed(str, then=_non_empty)
_policy = _typed(str, then=_one_of(tuple(Policy)))
_seconds = _typed(int, float, then=_between(0, 86400))


def _catchable_signal(value: Any) -> Optional[str]:
    """Accept None (off) or the name of a signal a handler can be installed for."""
    if value is None:
        return None
    if not isinstance(value, str):
        return kind_of(value)
    if value not in signal.Signals.__members__ or value in ("SIGKILL", "SIGSTOP"):
        return repr(value)
    return None


# One row per line, a table to read (ruff format would unfold them).
# fmt: off
SETTINGS: tuple[Setting, ...] = (
    # Master switch: False leaves Django's DatabaseWrapper untouched.
    Setting("ENABLED", True, "True or False", _typed(bool), "E003"),
    # How many frames of the opening (and closing) stack to keep, innermost first.
    Setting("STACK_DEPTH", 30, "an integer between 1 and 200", _int_between(1, 200), "E004"),
    # Extra module prefixes whose frames are hidden when looking for the user's line.
    Setting("HIDE_MODULES", (), 'a list of module names, e.g. ["myproject.db"]', _module_list, "E005"),
    # structlog logger name used for every event.
    Setting("LOGGER_NAME", "conntrace", 'a non-empty string, e.g. "conntrace"', _non_empty_str, "E006"),
    # Turn a driver error raised while closing into a warning instead of an exception.
    Setting("DOWNGRADE_CLOSE_ERRORS", True, "True or False", _typed(bool), "E007"),
    # How many closed-connection records this process keeps for history().
    Setting("MAX_RECORDS", 500, "an integer between 0 and 1000000", _int_between(0, 1_000_000), "E008"),
    # What a forked child does with a connection inherited from its parent.
    Setting("FORK_POLICY", Policy.RESET.value, 'one of "reset", "warn", "raise"', _policy, "E009"),
    # At close, sessions at least this many seconds old get their socket polled (one system
    # call) to tell whether the server or a pooler had already ended them. Younger ones rely
    # on the driver's own flag, which any query after such an end sets. 0: poll at every close.
    Setting("SOCKET_CHECK_AFTER_S", 1.0, "a number of seconds between 0 and 86400, e.g. 1.0", _seconds,
            "E010"),
    # connection_held_long: a connection checked out of a pool, or inside a transaction, this long.
    Setting("HELD_WARN_S", 30.0, "a number of seconds between 0 and 86400, e.g. 30.0", _seconds, "E011"),
    # connection_held_long: a transaction with no new cursor for this long (idle in transaction).
    Setting("IDLE_IN_TRANSACTION_WARN_S", 10.0, "a number of seconds between 0 and 86400, e.g. 10.0",
            _seconds, "E012"),
    # How often the watchdog thread looks for held connections; 0 turns it off.
    Setting("WATCHDOG_INTERVAL_S", 5.0, "a number of seconds between 0 and 86400, e.g. 5.0", _seconds,
            "E013"),
    # Record OpenTelemetry metrics (the conntrace[otel] extra) through the application's meter provider.
    Setting("METRICS", False, "True or False", _typed(bool), "E014"),
    # A signal that makes the process log what it holds (conntrace.live()) as one event; None: off.
    Setting("LIVE_SIGNAL", None, 'None, or a signal name such as "SIGUSR2"', _catchable_signal, "E015"),
)
# fmt: on

BY_KEY: dict[str, Setting] = {setting.key: setting for setting in SETTINGS}
DEFAULTS: dict[str, Any] = {setting.key: setting.default for setting in SETTINGS}


def value_problem(key: str, value: Any) -> Optional[str]:
    """Return why ``value`` is not acceptable for ``key``, or None if it is."""
    return BY_KEY[key].problem(value)


def effective(user: Any) -> dict[str, Any]:
    """Return the settings in effect for ``user`` (``CONNTRACE`` as written): bad values fall back."""
    merged = dict(DEFAULTS)
    if isinstance(user, dict):
        for key, value in user.items():
            if key in BY_KEY and value_problem(key, value) is None:
                merged[key] = value
    merged["HIDE_MODULES"] = tuple(merged["HIDE_MODULES"])
    if merged["METRICS"] and not otel_installed():
        merged["METRICS"] = False  # conntrace.E016
    return merged


def otel_installed() -> bool:
    """Return True if ``opentelemetry-api`` (the ``conntrace[otel]`` extra) is importable; import nothing."""
    try:
        return importlib.util.find_spec("opentelemetry.metrics") is not None
    except (ImportError, ValueError):
        return False


# Check ids of the mistakes that are not one key's value (those are in SETTINGS).
NOT_A_DICT = "conntrace.E001"
UNKNOWN_KEY = "conntrace.E002"
METRICS_WITHOUT_OTEL = "conntrace.E016"


@dataclass(frozen=True)
class Problem:
    """One mistake in the ``CONNTRACE`` setting: what the system check and the run-time warning both say."""

    check_id: str
    key: Any  # as written; None when CONNTRACE itself is not a dict
    given: Any  # the value as written
    what: Optional[str]  # what the value is instead ("a str", "'heal'"); None for an unknown key
    used: Any  # in effect instead: the default; an unknown key's guess's value; or all the settings
    guess: Optional[str] = None  # an unknown key's nearest known key ("Did you mean ...")


def closest_key(key: Any) -> Optional[str]:
    """Return the known key that an unknown ``key`` most resembles (a typo, lower case), or None."""
    close = difflib.get_close_matches(str(key).upper(), BY_KEY, n=1)
    return close[0] if close else None


def problems(user: Any) -> list[Problem]:
    """Return every mistake in ``user``, the ``CONNTRACE`` value as written: unknown keys, then bad values."""
    if user is None:
        return []
    used = effective(user)
    if not isinstance(user, dict):
        return [Problem(NOT_A_DICT, None, user, kind_of(user), used)]
    found = []
    for key, value in user.items():
        if key not in BY_KEY:
            guess = closest_key(key)
            found.append(Problem(UNKNOWN_KEY, key, value, None, used[guess] if guess else None, guess))
    for setting in SETTINGS:
        given = user.get(setting.key)
        what = setting.problem(given) if setting.key in user else None
        if what is not None:
            found.append(Problem(setting.check_id, setting.key, given, what, used[setting.key]))
    if user.get("METRICS") is True and not used["METRICS"]:
        found.append(Problem(METRICS_WITHOUT_OTEL, "METRICS", True, "True without opentelemetry-api", False))
    return found


def written() -> Any:
    """Return the ``CONNTRACE`` setting as the project wrote it (None when it is absent)."""
    return getattr(django_settings, "CONNTRACE", None)


_cache: Optional[dict[str, Any]] = None


def get() -> dict[str, Any]:
    """Return the effective settings (defaults overlaid with valid user values)."""
    global _cache
    if _cache is None:
        # Invalid values fall back to the default; checks.py reports them (system check, run-time warning).
        _cache = effective(written())
    return _cache


def use_defaults() -> None:
    """Use the defaults until the next ``reload()``: for tools that start before Django's settings exist."""
    global _cache
    _cache = dict(DEFAULTS)


def reload(**kwargs: Any) -> None:
    """Forget cached settings; connected to Django's ``setting_changed``."""
    global _cache
    if kwargs.get("setting") in (None, "CONNTRACE", "DATABASES"):
        _cache = None
        for listener in _listeners:
            listener()


_listeners: list[Callable[[], None]] = []


def on_reload(listener: Callable[[], None]) -> None:
    """Call ``listener`` whenever the settings are re-read."""
    if listener not in _listeners:
        _listeners.append(listener)
