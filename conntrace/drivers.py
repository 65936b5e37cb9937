"""What conntrace asks of DB-API drivers, without ever sending a query.

Django's backends share one base class, so the only per-driver knowledge
conntrace needs is here: the server's id for a session, whether the driver
already considers a connection closed, and how to discard an inherited
connection without touching the socket it shares with another process.
"""

from __future__ import annotations

import ctypes
import os
import select
import socket
from typing import Any, Optional

from conntrace.names import ClosedBy, Discard


def _family(conn: Any) -> str:
    module = type(conn).__module__ or ""
    if module.startswith("psycopg2"):
        return "psycopg2"
    if module.startswith("psycopg"):
        return "psycopg"
    if module.startswith("sqlite3"):
        return "sqlite3"
    if module.startswith(("MySQLdb", "_mysql")):
        return "mysqlclient"
    return "other"


_families: dict[type, str] = {}


def family(conn: Any) -> str:
    """Return the driver family of a DB-API connection (cached by type)."""
    kind = type(conn)
    fam = _families.get(kind)
    if fam is None:
        fam = _families[kind] = _family(conn)
    return fam


def backend_pid(conn: Any) -> Optional[int]:
    """Return the server's id for this session when the driver knows it locally.

    PostgreSQL: the backend PID libpq received at connect time (behind
    pgbouncer, the pooler's cancel key instead). MySQL: the thread id.
    """
    fam = family(conn)
    try:
        if fam == "psycopg2":
            return conn.get_backend_pid()
        if fam == "psycopg":
            return conn.info.backend_pid
        if fam == "mysqlclient":
            return conn.thread_id()
    except Exception:
        return None
    return None


def fileno(conn: Any) -> Optional[int]:
    """Return the socket descriptor of a connection, or None."""
    get = getattr(conn, "fileno", None)
    if get is None:
        return None
    try:
        fd = get()
    except Exception:
        return None
    return fd if isinstance(fd, int) and fd >= 0 else None


def closed_state(conn: Any, poll_socket: bool = True) -> Optional[ClosedBy]:
    """Return who already closed ``conn`` (``application``/``server``), or None if open.

    Runs before every close. The driver's own flag is always read; with
    ``poll_socket`` the socket is polled once too (no helper calls, see
    docs/performance.md), which sees a server end the driver has not read yet.
    """
    fam = _families.get(type(conn)) or family(conn)
    if fam == "psycopg2":
        closed = conn.closed
        if closed:
            return ClosedBy.APPLICATION if closed == 1 else ClosedBy.SERVER
    elif fam == "psycopg":
        if conn.closed:
            return ClosedBy.SERVER if conn.broken else ClosedBy.APPLICATION
    elif fam == "sqlite3":
        try:
            conn.total_changes  # noqa: B018 - raises once the connection is closed
        except Exception:
            return ClosedBy.APPLICATION
        return None
    elif fam == "mysqlclient":
        if not getattr(conn, "open", 1):
            return ClosedBy.APPLICATION
    else:
        return None
    if not poll_socket:
        return None
    try:
        fd = conn.fileno()
        poller = select.poll()
        poller.register(fd, select.POLLIN)
        ready = poller.poll(0)
    except Exception:
        return None
    if ready and _peer_hung_up(fd, ready[0][1]):
        return ClosedBy.SERVER
    return None


def _peer_hung_up(fd: int, revents: int) -> bool:
    """Return True if the server has ended the session on this readable socket.

    An idle client socket that is readable holds either the server's
    goodbye (an ErrorResponse, ``E``, before the FIN) or end-of-file.
    Peeks only: nothing is consumed or sent.
    """
    if revents & (select.POLLHUP | select.POLLERR):
        return True
    try:
        sock = socket.socket(fileno=fd)
    except OSError:
        return False
    try:
        first = sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT)
    except BlockingIOError:
        return False
    except OSError:
        return True
    finally:
        sock.detach()
    return first in (b"", b"E")


# Objects that must never be finalised in this process (see discard()).
_quarantine: list[Any] = []


def discard(conn: Any) -> Discard:
    """Drop an inherited connection without sending anything on its shared socket.

    Returns how it was done. The socket descriptor, where the driver has
    one, is pointed at /dev/null (``dup2``), so this process no longer holds
    the shared session and nothing it does later can reach it; the descriptor
    number stays occupied, so no unrelated file can take it. The driver
    object is then kept alive forever and never closed or finalised here:
    closing takes driver locks another thread may have held at fork time, and
    sqlite3 could roll back a transaction the parent still owns.
    """
    fd = fileno(conn)
    if fd is not None:
        devnull = os.open(os.devnull, os.O_RDWR)
        try:
            os.dup2(devnull, fd, inheritable=False)
        finally:
            os.close(devnull)
    _quarantine.append(conn)
    try:
        ctypes.pythonapi.Py_IncRef(ctypes.py_object(conn))
    except Exception:
        pass
    return Discard.SOCKET_DETACHED if fd is not None else Discard.KEPT_UNCLOSED


def sqlstate(exc: BaseException) -> Optional[str]:
    """Return the SQLSTATE the server sent with ``exc`` (psycopg 3 ``sqlstate``, psycopg2 ``pgcode``)."""
    for cause in (exc, exc.__cause__):
        if cause is None:
            continue
        code = getattr(cause, "sqlstate", None) or getattr(cause, "pgcode", None)
        if isinstance(code, str) and code:
            return code
    return None


def server_message(conn: Any) -> str:
    """Return the driver's last error message from the server, read locally (nothing is sent).

    psycopg2 reports a session the server ended as "server closed the connection
    unexpectedly" only; libpq's own message still holds the server's FATAL line.
    """
    if family(conn) != "psycopg2":
        return ""
    try:
        return conn.info.error_message or ""
    except Exception:
        return ""
