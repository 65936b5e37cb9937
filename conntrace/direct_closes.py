"""Closes of a driver connection made behind Django's back, remembered so that they can be named later.

psycopg 3's ``Connection.close`` is a Python method: while conntrace is
installed it is wrapped to remember, for a close that Django's wrapper did
not make, the application's stack, pid, thread and time (raw code objects and
offsets only, never frames). The double close and the ``connection_lost``
that follow then name that line. psycopg2 and sqlite3 connections are C
objects whose ``close`` cannot be wrapped: there the direct close is bounded
by the connection's last use instead (see ``lifecycle`` and ``losses``).
"""

from __future__ import annotations

import sys
import time
import weakref
from dataclasses import dataclass
from typing import Any, Optional

from conntrace import conf, patching, process, records, stacks
from conntrace.names import ClosedBy, Outcome

# The method of Django's wrappers that closes the driver connection: a close made there is Django's.
DJANGO_CLOSE = "_close"


@dataclass(slots=True)
class DirectClose:
    """A close of the driver connection that did not go through Django's wrapper."""

    at: float
    pid: int
    thread: str
    stack: stacks.RawStack


# driver connection -> its direct close; weak, so that a closed connection takes its entry with it.
_closes: weakref.WeakKeyDictionary[Any, DirectClose] = weakref.WeakKeyDictionary()


def of(conn: Any) -> Optional[DirectClose]:
    """Return the direct close remembered for driver connection ``conn``, if any."""
    try:
        return _closes.get(conn)
    except TypeError:  # a driver connection that takes no weak reference
        return None


def wall_time(mono: float) -> float:
    """Return the wall-clock time of a ``time.monotonic()`` reading."""
    return time.time() - (time.monotonic() - mono)


def fields(
    conn: Any,
    last_use: tuple[Optional[float], stacks.RawStack],
    record: records.ConnectionRecord,
    until: str,
) -> dict[str, Any]:
    """Name the direct close of ``conn`` (psycopg 3) or bound it between its last use and ``until``.

    ``last_use`` is the time and stack of the use before what found it closed
    (the record's opening when never used); ``until`` says what found it, and where.
    """
    ff = stacks.frame_filter()
    direct = of(conn)
    if direct is not None:
        return {
            "driver_closed_in": ff.first_user_frame(direct.stack),
            "driver_closed_stack": ff.visible_stack(direct.stack),
            "driver_closed_at": records.iso_time(direct.at),
        }
    used_mono, used_stack = last_use
    if used_mono is None:
        since = f"its opening {stacks.in_place(record.opened_in())} at {records.iso_time(record.opened_at)}"
    else:
        used_at = records.iso_time(wall_time(used_mono))
        since = f"its last use at {used_at}"
        if used_stack:  # uses are watched
            first_in = ff.first_user_frame(used_stack)
            since += f" (in a request first using it {stacks.in_place(first_in)})"
    return {"driver_closed_between": f"closed outside Django's wrapper between {since} and {until}"}


def _made_by_django(caller: Any) -> bool:
    code = caller.f_code
    return code.co_name == DJANGO_CLOSE and "django" in code.co_filename


def _wrap(original: Any) -> Any:
    def close(self: Any) -> None:
        if process.active and not self.closed:
            try:
                caller = sys._getframe(1)
                try:
                    if not _made_by_django(caller):
                        _remember(self, stacks.capture(conf.get()["STACK_DEPTH"], skip=1))
                finally:
                    del caller
            except Exception:
                pass  # remembering is a nicety: the close itself always runs
        return original(self)

    return close


def _remember(conn: Any, stack: stacks.RawStack) -> None:
    """Remember a direct close, and count it as a close attempt of the Django session holding ``conn``."""
    direct = _closes[conn] = DirectClose(time.time(), process.pid, process.thread_name(), stack)
    for record in records.registry.open_records():
        wrapper = record.wrapper_ref() if record.wrapper_ref is not None else None
        if wrapper is not None and wrapper.connection is conn:
            record.add_close(
                records.CloseAttempt(
                    direct.at, direct.pid, direct.thread, stack, Outcome.CLOSED, ClosedBy.APPLICATION
                )
            )
            return


def install() -> None:
    """Wrap ``psycopg.Connection.close`` once, when psycopg 3 is importable and Django uses PostgreSQL."""
    connection_class = _psycopg_connection_class()
    if connection_class is not None and "close" in connection_class.__dict__:
        patching.wrap("close", _wrap, connection_class)


def uninstall() -> None:
    """Restore psycopg's own ``Connection.close``."""
    connection_class = getattr(sys.modules.get("psycopg"), "Connection", None)
    if connection_class is not None:
        patching.unwrap("close", connection_class)


def _psycopg_connection_class() -> Any:
    psycopg = sys.modules.get("psycopg", False)
    if psycopg is None:  # hidden on purpose (Django then uses psycopg2)
        return None
    if psycopg is False:
        if not _uses_postgresql():
            return None  # importing psycopg for nothing would only slow the start-up
        try:
            import psycopg
        except Exception:
            return None
    return getattr(psycopg, "Connection", None)


def _uses_postgresql() -> bool:
    try:
        from django.conf import settings

        return any("postgresql" in str(db.get("ENGINE", "")) for db in settings.DATABASES.values())
    except Exception:
        return False
