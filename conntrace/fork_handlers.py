"""Who else makes a forked child's inherited connections safe, so that crossing the fork is no problem.

* Django's parallel test runner (``manage.py test --parallel``): each worker
  closes its copy, and under ``reset`` conntrace discards it first;
* Celery's Django fixup: in every prefork pool child, ``worker_process_init``
  closes the inherited sockets with ``os.close()`` (no bytes sent) and then the
  wrappers, so the child opens its own sessions.

A fork is only attributed to them when their own code is forking: a plain
``multiprocessing`` or billiard fork elsewhere is as dangerous as any other.
Called from the before-fork hook: reads only, takes no lock.
"""

from __future__ import annotations

import os
import sys
import threading
import weakref
from collections.abc import Iterable
from types import CodeType
from typing import Any, Optional

from conntrace import stacks
from conntrace.names import HandledBy

MAIN_THREAD_DEPTH = 40

_TEST_RUNNER_FILE = os.path.join("django", "test", "runner.py")
# billiard's prefork pool creates its worker processes here (Celery's pool is billiard's).
_BILLIARD_POOL_FILE = os.path.join("billiard", "pool.py")


def handled_by(stack: stacks.RawStack) -> Optional[HandledBy]:
    """Return who makes the children of the fork being made now safe, given the forking stack."""
    codes = stacks.codes(stack)
    if _runs(codes, _TEST_RUNNER_FILE) or _main_thread_runs(_TEST_RUNNER_FILE):
        return HandledBy.DJANGO_TEST_RUNNER
    if _runs(codes, _BILLIARD_POOL_FILE) and celery_fixup_installed():
        return HandledBy.CELERY_DJANGO_FIXUP
    return None


def celery_fixup_installed() -> bool:
    """Return True when Celery's Django fixup listens to ``worker_process_init`` in this process."""
    fixup = sys.modules.get("celery.fixups.django")
    signals = sys.modules.get("celery.signals")
    fixup_class = getattr(fixup, "DjangoWorkerFixup", None)
    signal = getattr(signals, "worker_process_init", None)
    if fixup_class is None or signal is None:
        return False
    try:
        receivers = list(getattr(signal, "receivers", ()))
    except Exception:
        return False
    for entry in receivers:
        try:
            receiver: Any = entry[1]
            if isinstance(receiver, weakref.ReferenceType):
                receiver = receiver()
            if isinstance(getattr(receiver, "__self__", None), fixup_class):
                return True
        except Exception:
            continue
    return False


def _runs(codes: Iterable[CodeType], filename: str) -> bool:
    return any(code.co_filename.endswith(filename) for code in codes)


def _main_thread_runs(filename: str) -> bool:
    """multiprocessing.Pool re-populates its workers from a handler thread: look at the main thread."""
    main = threading.main_thread()
    if threading.current_thread() is main:
        return False
    frame = sys._current_frames().get(main.ident or 0)
    codes = []
    while frame is not None and len(codes) < MAIN_THREAD_DEPTH:
        codes.append(frame.f_code)
        frame = frame.f_back
    del frame
    return _runs(codes, filename)
