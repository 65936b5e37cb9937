"""Turn ``DATABASE_URL`` into Django's ``DATABASES`` entry, without a dependency.

Accepted: ``postgres://user:password@host:port/name?option=value`` (also
``postgresql://``; ``?host=/run/postgresql`` for a unix socket) and
``sqlite:////absolute/path.sqlite3``. The password is never printed: use
:func:`describe` to show where the demo connects.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

POSTGRES_SCHEMES = ("postgres", "postgresql", "pgsql")


def parse(url: str) -> dict[str, Any]:
    """Return the ``DATABASES`` entry that ``url`` describes."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme == "sqlite":
        # sqlite:///relative.sqlite3 and sqlite:////absolute/path.sqlite3, as dj-database-url reads them.
        return {"ENGINE": "django.db.backends.sqlite3", "NAME": unquote(parts.path[1:]) or ":memory:"}
    if scheme not in POSTGRES_SCHEMES:
        raise ValueError(f"DATABASE_URL: unsupported scheme {scheme!r}; use postgres:// or sqlite:////")
    options = dict(parse_qsl(parts.query))
    host = unquote(parts.hostname or "") or options.pop("host", "")
    return {
        "ENGINE": "django.db.backends.postgresql",
        "NAME": unquote(parts.path.lstrip("/")),
        "USER": unquote(parts.username or ""),
        "PASSWORD": unquote(parts.password or ""),
        "HOST": host,
        "PORT": str(parts.port or ""),
        "OPTIONS": options,
    }


def describe(entry: dict[str, Any]) -> str:
    """Return where ``entry`` connects, for people to read: never the password."""
    if entry["ENGINE"].endswith("sqlite3"):
        return f"SQLite database {entry['NAME']}"
    where = entry["HOST"] or "the default socket"
    if entry["PORT"]:
        where += f":{entry['PORT']}"
    return f"PostgreSQL database {entry['NAME']!r} on {where} as {entry['USER'] or 'the current user'!r}"
