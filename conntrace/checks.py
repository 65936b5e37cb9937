"""System checks for the ``CONNTRACE`` setting. Ids are never reused."""

from __future__ import annotations

import difflib
from typing import Any

from django.conf import settings
from django.core.checks import Error

from conntrace import conf

# One id per key, so that a message's id says which setting is wrong.
KEY_IDS = {
    "ENABLED": "conntrace.E003",
    "STACK_DEPTH": "conntrace.E004",
    "HIDE_MODULES": "conntrace.E005",
    "LOGGER_NAME": "conntrace.E006",
    "DOWNGRADE_CLOSE_ERRORS": "conntrace.E007",
    "MAX_RECORDS": "conntrace.E008",
    "FORK_POLICY": "conntrace.E009",
    "SOCKET_CHECK_AFTER_S": "conntrace.E010",
}


def check_settings(app_configs: Any = None, **kwargs: Any) -> list[Error]:
    """Report a ``CONNTRACE`` setting that is not a dict, unknown keys and bad values."""
    user = getattr(settings, "CONNTRACE", None)
    if user is None:
        return []
    if not isinstance(user, dict):
        return [
            Error(
                f"CONNTRACE must be a dict, not {conf.kind_of(user)}.",
                hint='Write CONNTRACE = {"FORK_POLICY": "reset"} (or leave it out for the defaults).',
                id="conntrace.E001",
            )
        ]
    errors = []
    for key in user:
        if key not in conf.DEFAULTS:
            known = ", ".join(sorted(conf.DEFAULTS))
            close = difflib.get_close_matches(str(key).upper(), conf.DEFAULTS, n=1)
            guess = f"Did you mean {close[0]!r}? " if close else ""
            errors.append(
                Error(
                    f"CONNTRACE has an unknown key {key!r}.",
                    hint=f"{guess}Remove it, or use one of: {known}.",
                    id="conntrace.E002",
                )
            )
    for key, id_ in KEY_IDS.items():
        if key in user:
            problem = conf.value_problem(key, user[key])
            if problem is not None:
                _, expected = conf.EXPECTED[key]
                errors.append(
                    Error(
                        f"CONNTRACE[{key!r}] is {problem}.",
                        hint=f"Write {expected}; the default is {conf.DEFAULTS[key]!r}.",
                        id=id_,
                    )
                )
    return errors
