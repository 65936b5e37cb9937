"""Wrap a method of Django's ``BaseDatabaseWrapper`` once, behind a marker that keeps the original.

A second wrap is a no-op, and so is wrapping when another library (or Django's
``SimpleTestCase``) has wrapped ours: that library's layer calls ours, which
reactivates. ``unwrap`` restores the original exactly.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from django.db.backends.base.base import BaseDatabaseWrapper

MARK = "_conntrace_original"


def wrap(name: str, make: Callable[[Any], Any], owner: type = BaseDatabaseWrapper) -> None:
    """Put ``make(original)`` on ``owner.name`` unless a wrapper of ours is there already.

    ``owner`` is Django's ``BaseDatabaseWrapper`` unless said (``Atomic``, psycopg's ``Connection``).
    """
    current = owner.__dict__[name]
    if getattr(current, MARK, None) is not None or find_ours(current):
        return
    wrapper = make(current)
    wrapper.__name__ = current.__name__
    wrapper.__qualname__ = current.__qualname__
    wrapper.__doc__ = current.__doc__
    setattr(wrapper, MARK, current)
    setattr(owner, name, wrapper)


def unwrap(name: str, owner: type = BaseDatabaseWrapper) -> None:
    """Restore the original ``owner.name`` if our wrapper is the outermost layer."""
    original = getattr(owner.__dict__.get(name), MARK, None)
    # Where another library wrapped ours, the chain stays intact and ours is inert.
    if original is not None:
        setattr(owner, name, original)


def find_ours(func: Any, depth: int = 4) -> list[Any]:
    """Return the wrappers of ours that ``func`` (another library's wrapper) closes over, at any depth."""
    seen = []
    closure = getattr(func, "__closure__", None) or ()
    for cell in closure:
        try:
            value = cell.cell_contents
        except ValueError:
            continue
        if getattr(value, MARK, None) is not None:
            seen.append(value)
        elif depth > 1 and callable(value) and getattr(value, "__closure__", None):
            seen.extend(find_ours(value, depth - 1))
    return seen
