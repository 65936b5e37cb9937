"""What conntrace says about a bad ``CONNTRACE`` setting: system checks, and the same words at run time.

``conf.problems()`` finds each mistake once; this module words it. ``manage.py
check`` shows it as an error with an id (never reused); ``report_problems()``
sends it as one ``conntrace_settings_invalid`` warning when conntrace is
installed, because gunicorn, uWSGI and Celery run no system checks.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from django.core.checks import Error

from conntrace import conf
from conntrace.names import Event, Level

# events.emit and events.redact: this module sits below events in the import stack.
Emit = Callable[[int, Event, dict[str, Any]], None]
Redact = Callable[[str], str]

SHOWN_CHARS = 200  # of a value as written: enough to recognise it, never a flood


def message(problem: conf.Problem) -> str:
    """Say what is wrong, as the system check's message."""
    if problem.check_id == conf.NOT_A_DICT:
        return f"CONNTRACE must be a dict, not {problem.what}."
    if problem.check_id == conf.UNKNOWN_KEY:
        return f"CONNTRACE has an unknown key {shown(problem.key)}."
    return f"CONNTRACE[{problem.key!r}] is {problem.what}."


def hint(problem: conf.Problem) -> str:
    """Say what to write instead, as the system check's hint."""
    if problem.check_id == conf.NOT_A_DICT:
        return 'Write CONNTRACE = {"FORK_POLICY": "reset"} (or leave it out for the defaults).'
    if problem.check_id == conf.UNKNOWN_KEY:
        guess = f"Did you mean {problem.guess!r}? " if problem.guess else ""
        return f"{guess}Remove it, or use one of: {', '.join(sorted(conf.BY_KEY))}."
    if problem.check_id == conf.METRICS_WITHOUT_OTEL:
        return (
            'Install the extra that brings opentelemetry-api: pip install "conntrace[otel]"; or set it False.'
        )
    setting = conf.BY_KEY[problem.key]
    return f"Write {setting.expected}; the default is {setting.default!r}."


def check_settings(app_configs: Any = None, **kwargs: Any) -> list[Error]:
    """Report a ``CONNTRACE`` setting that is not a dict, unknown keys and bad values."""
    return [
        Error(message(problem), hint=hint(problem), id=problem.check_id)
        for problem in conf.problems(conf.written())
    ]


def shown(value: Any) -> str:
    """Return ``repr(value)`` cut to ``SHOWN_CHARS``, or a placeholder if it cannot be printed."""
    try:
        text = repr(value)
    except Exception:
        return f"<unprintable {type(value).__name__}>"
    return text if len(text) <= SHOWN_CHARS else text[: SHOWN_CHARS - 3] + "..."


def warning_fields(problem: conf.Problem, redact: Redact) -> dict[str, Any]:
    """Return the fields of one ``conntrace_settings_invalid`` warning, every text passed through ``redact``.

    ``given`` and ``used`` are Python reprs, as in the check's message: ``'1'`` and
    ``1`` differ, and a JSON renderer gets a string whatever the value was.
    """
    key = problem.key if problem.key is None or isinstance(problem.key, str) else shown(problem.key)
    # null only for an unknown key nothing resembles; a key whose default is None shows 'None'.
    nothing_used = problem.key not in conf.BY_KEY and problem.used is None
    fields = {
        "check_id": problem.check_id,
        "key": None if key is None else redact(key),
        "problem": redact(message(problem)),
        "given": redact(shown(problem.given)),
        "used": None if nothing_used else redact(shown(problem.used)),
        "hint": redact(hint(problem)),
    }
    if problem.check_id == conf.UNKNOWN_KEY:
        fields["did_you_mean"] = problem.guess
    return fields


_reported: set[tuple[tuple[Any, ...], ...]] = set()


def report_problems(emit: Emit, redact: Redact) -> None:
    """Warn once per process about each distinct set of mistakes in ``CONNTRACE``; quiet when it is valid.

    Called by ``AppConfig.ready()`` and again whenever the settings change, with
    ``events.emit`` and ``events.redact``.
    """
    reports = [warning_fields(problem, redact) for problem in conf.problems(conf.written())]
    signature = tuple(tuple(fields.values()) for fields in reports)
    if not reports or signature in _reported:
        return
    _reported.add(signature)
    for fields in reports:
        emit(Level.WARNING, Event.SETTINGS_INVALID, fields)


def forget_reported() -> None:
    """Let every set of mistakes be reported again (for tests)."""
    _reported.clear()
