"""``asgi_persistent_connections``: persistent connections under ASGI, said once per process.

Under ASGI, Django runs the ORM in asgiref's executor threads, and each of them
keeps its own connection: with ``CONN_MAX_AGE != 0`` nothing closes them at the
request's end as WSGI would, and the server's sessions grow with the threads
("too many clients already"). Django's documentation says to use
``CONN_MAX_AGE = 0`` under ASGI, or a connection pool. The first request that
Django's ``ASGIHandler`` serves (a ``request_started`` receiver, which then
disconnects itself) checks every alias once.
"""

from __future__ import annotations

from typing import Any

from django.core.handlers.asgi import ASGIHandler
from django.core.signals import request_started
from django.db import connections

from conntrace import events
from conntrace.names import Event, Level

REQUEST_STARTED_UID = "conntrace.asgi_check"
HINT = (
    "Under ASGI each executor thread keeps its own persistent connection, and nothing closes "
    "it at the request's end: set CONN_MAX_AGE = 0 for these aliases, or use a connection "
    'pool (OPTIONS = {"pool": ...}), as Django\'s documentation advises for ASGI.'
)


# Emptied by the first ASGI request (list.pop is atomic: concurrent first requests check once).
_first: list[bool] = []


def install() -> None:
    """Check the aliases at the first request served by ``ASGIHandler``."""
    _first[:] = [True]
    request_started.connect(on_request_started, dispatch_uid=REQUEST_STARTED_UID, weak=False)


def uninstall() -> None:
    """Stop waiting for the first ASGI request."""
    request_started.disconnect(dispatch_uid=REQUEST_STARTED_UID)


def persistent_aliases() -> dict[str, Any]:
    """Return {alias: CONN_MAX_AGE} for every alias that keeps its connections and has no pool."""
    found = {}
    for alias, settings_dict in connections.settings.items():
        max_age = settings_dict.get("CONN_MAX_AGE", 0)
        pooled = bool((settings_dict.get("OPTIONS") or {}).get("pool"))
        if max_age != 0 and not pooled:
            found[alias] = max_age
    return found


def on_request_started(sender: Any = None, **kwargs: Any) -> None:
    """Warn once if the first ASGI request finds persistent connections (WSGI requests are ignored)."""
    try:
        if not (isinstance(sender, type) and issubclass(sender, ASGIHandler)):
            return
        try:
            _first.pop()
        except IndexError:
            return  # another request is the first
        uninstall()  # once per process: later requests cost nothing
        aliases = persistent_aliases()
        if aliases and events.enabled(Level.WARNING):
            fields = {"aliases": sorted(aliases), "conn_max_age": aliases, "hint": HINT}
            events.emit(Level.WARNING, Event.ASGI_PERSISTENT_CONNECTIONS, fields)
    except Exception as exc:
        events.internal_error("asgi_check", exc)
