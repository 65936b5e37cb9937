"""Install and uninstall conntrace's wrappers on Django's ``BaseDatabaseWrapper``; observers.

``install()`` is idempotent and ``uninstall()`` exact: Django's own methods
come back. The wrappers themselves are in ``wrappers``.
"""

from __future__ import annotations

from django.core.signals import request_started

from conntrace import conf, forking, observers, patching, process, records, wrappers
from conntrace.fields import context_ever_bound
from conntrace.patching import MARK

__all__ = ["MARK", "add_observer", "install", "is_installed", "remove_observer", "uninstall", "watch_uses"]

REQUEST_STARTED_UID = "conntrace.request_started"


def add_observer(observer: observers.Observer) -> None:
    """Call ``observer`` at every open, first use in a request and close attempt (a debugger's hook)."""
    observers.add(observer)
    wrappers.watch_uses()


def remove_observer(observer: observers.Observer) -> None:
    """Stop calling ``observer``."""
    observers.remove(observer)


def watch_uses() -> None:
    """Start seeing each connection's first use in a request and after a fork (idempotent)."""
    wrappers.watch_uses()


def install() -> bool:
    """Instrument Django's database wrappers; a second call is a no-op.

    Returns False when ``CONNTRACE["ENABLED"]`` is false.
    """
    if not conf.get()["ENABLED"]:
        return False
    for name, make in wrappers.ALWAYS.items():
        patching.wrap(name, make)
    records.registry.resize(conf.get()["MAX_RECORDS"])
    request_started.connect(wrappers.on_request_started, dispatch_uid=REQUEST_STARTED_UID)
    forking.register_hooks(watch_uses=wrappers.watch_uses)
    process.active = True
    if process.watch_use or context_ever_bound():
        wrappers.watch_uses()
    return True


def uninstall() -> None:
    """Restore Django's original methods (records already made are kept)."""
    process.active = False
    for name in (*wrappers.ALWAYS, wrappers.USE_METHOD):
        patching.unwrap(name)
    request_started.disconnect(dispatch_uid=REQUEST_STARTED_UID)


def is_installed() -> bool:
    """Return True while conntrace is recording."""
    return process.active
