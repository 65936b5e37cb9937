"""The coroutines awaiting a sync function that asgiref runs in a worker thread.

Async code reaches the database through ``sync_to_async`` (every async ORM
method: ``acount()``, ``acreate()``, ``aget()``...), which runs the sync ORM in an
executor thread. That thread's stack holds asgiref, Django and the executor,
never the application: its ``await`` line is in the coroutine of the task that
awaits the call, suspended on the event loop's thread. This module finds it.

asgiref's ``SyncToAsync.thread_handler`` runs the sync function in the worker
with a ``task_context`` list that is also a local of the ``SyncToAsync.__call__``
coroutine awaiting it. That identity tells the awaiting task from every other
one: a thread-sensitive worker serves many tasks (one call at a time), so a map
from thread to task would name the wrong one.
"""

from __future__ import annotations

import asyncio
import time
from types import CodeType, FrameType
from typing import Any, Optional

from asgiref.sync import SyncToAsync

# The worker-side frame where a thread's own stack stops being the caller's.
HANDLER_CODE: CodeType = SyncToAsync.thread_handler.__code__
# The coroutine that awaits the worker's result.
AWAITING_CODE: CodeType = SyncToAsync.__call__.__code__
# Longest wait for the awaiting coroutine to reach its ``await`` (it is a few instructions away).
MAX_WAIT_S = 0.01
# Longest await chain walked (a coroutine awaiting a coroutine...), whatever the application does.
MAX_CHAIN = 256

_worker_marks = SyncToAsync.threadlocal


def ran_sync_to_async() -> bool:
    """Return True if this thread ever ran a function for ``sync_to_async``.

    asgiref's handler sets attributes of its thread-local in such a thread. The
    only cost capture pays on the plain sync path: reading the thread's own
    ``__dict__`` of it (20 ns, where ``getattr`` of a missing name raises
    inside and costs 300 ns).
    """
    return bool(_worker_marks.__dict__)


def awaiting_frames(handler: FrameType, depth: int) -> list[CodeType | int]:
    """Return the frames of the coroutines awaiting the call ``handler`` runs.

    Flat ``code, offset, code, offset...``, innermost first, at most ``depth``
    frames; none when the awaiting task is not found (a chain through an async
    generator, which shows no frame of what it awaits).
    """
    handler_locals = handler.f_locals
    loop, call = handler_locals.get("loop"), handler_locals.get("task_context")
    del handler_locals
    if not isinstance(loop, asyncio.AbstractEventLoop) or call is None:
        return []
    # The worker can start before the awaiting coroutine reaches its ``await``: then that
    # task is the one running on the loop's thread, and it suspends a few instructions later.
    running = asyncio.current_task(loop)
    for task in asyncio.all_tasks(loop):
        chain = _chain_to_call(task.get_coro(), call)
        if chain:
            return _innermost_first(chain, depth)
    if running is None:
        return []
    return _innermost_first(_chain_to_call(_once_suspended(running.get_coro()), call) or [], depth)


def _once_suspended(coro: Any) -> Any:
    """Return ``coro`` once it is suspended, or after ``MAX_WAIT_S``: the loop's thread needs the GIL."""
    deadline = time.monotonic() + MAX_WAIT_S
    while getattr(coro, "cr_running", False) and time.monotonic() < deadline:
        time.sleep(0)
    return coro


def _innermost_first(chain: list[tuple[CodeType, int]], depth: int) -> list[CodeType | int]:
    flat: list[CodeType | int] = []
    for code, offset in reversed(chain[-depth:] if depth > 0 else []):
        flat += (code, offset)
    return flat


def _chain_to_call(awaitable: Any, call: object) -> Optional[list[tuple[CodeType, int]]]:
    """Return ``(code, offset)`` from ``awaitable`` down to the ``SyncToAsync.__call__`` awaiting ``call``.

    Outermost first; None if this chain awaits something else. A running
    coroutine is skipped without reading its locals: the awaiting one is suspended.
    """
    chain: list[tuple[CodeType, int]] = []
    while awaitable is not None and len(chain) < MAX_CHAIN:
        if hasattr(awaitable, "cr_frame"):
            frame, running, awaited = awaitable.cr_frame, awaitable.cr_running, awaitable.cr_await
        elif hasattr(awaitable, "gi_frame"):  # a generator-based coroutine (@types.coroutine)
            frame, running, awaited = awaitable.gi_frame, awaitable.gi_running, awaitable.gi_yieldfrom
        else:
            return None  # a future, or an awaitable that is neither
        if frame is None or running:
            return None
        code = frame.f_code
        chain.append((code, frame.f_lasti))
        if code is AWAITING_CODE:
            return chain if frame.f_locals.get("task_context") is call else None
        del frame
        awaitable = awaited
    return None
