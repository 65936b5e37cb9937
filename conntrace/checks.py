"""System checks for the ``CONNTRACE`` setting. Ids are never reused."""

from __future__ import annotations

import difflib
from typing import Any

from django.conf import settings
from django.core.checks import Error

from conntrace import conf


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
        if key not in conf.BY_KEY:
            known = ", ".join(sorted(conf.BY_KEY))
            close = difflib.get_close_matches(str(key).upper(), conf.BY_KEY, n=1)
            guess = f"Did you mean {close[0]!r}? " if close else ""
            errors.append(
                Error(
                    f"CONNTRACE has an unknown key {key!r}.",
                    hint=f"{guess}Remove it, or use one of: {known}.",
                    id="conntrace.E002",
                )
            )
    for setting in conf.SETTINGS:
        if setting.key in user:
            problem = setting.problem(user[setting.key])
            if problem is not None:
                errors.append(
                    Error(
                        f"CONNTRACE[{setting.key!r}] is {problem}.",
                        hint=f"Write {setting.expected}; the default is {setting.default!r}.",
                        id=setting.check_id,
                    )
                )
    return errors
