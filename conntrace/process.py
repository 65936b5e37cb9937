"""Facts about the current process that conntrace reads on every connect.

Kept in module globals so that the hot paths read them without a system
call: the pid is cached and refreshed by the at-fork hook, and the fork
generation counter tells a record made before the last fork from one made
after it.
"""

from __future__ import annotations

import os
import threading
from collections import deque
from collections.abc import Callable
from typing import Any

from conntrace.events import internal_error

pid: int = os.getpid()
parent_pid: int = os.getppid()
# Bumped in every forked child; records remember the value they were opened with.
fork_gen: int = 0
# Bumped at every request_started; lets a record snapshot a request's context once.
request_gen: int = 0
# True between install() and uninstall().
active: bool = False
# Reports recorded where emitting is unsafe (fork hooks, GC callbacks), emitted later.
pending: deque[Callable[[], Any]] = deque()

_tls = threading.local()


def thread_name() -> str:
    """Return the current thread's name, cached per thread."""
    try:
        return _tls.name
    except AttributeError:
        name = _tls.name = threading.current_thread().name
        return name


def after_fork_in_child() -> None:
    """Refresh the cached facts in a new child process."""
    global pid, parent_pid, fork_gen
    pid = os.getpid()
    parent_pid = os.getppid()
    fork_gen += 1


def flush_pending() -> None:
    """Emit the reports recorded where emitting was unsafe."""
    while pending:
        try:
            report = pending.popleft()
        except IndexError:
            return
        try:
            report()
        except Exception as exc:
            internal_error("pending_report", exc)
