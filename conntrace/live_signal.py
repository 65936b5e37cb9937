"""``CONNTRACE["LIVE_SIGNAL"]``: an operator asks a running process what it holds, and it logs it.

With ``"SIGURG"`` set, ``kill -URG <pid>`` makes the process emit one
``connections_live`` event (info; warning when the application keeps only
warnings, since an operator asked): ``conntrace.live()`` as ``connections``, and
``conntrace.pools()`` as ``pools`` when the process has any. Installed at
``install()`` (``AppConfig.ready()``), removed at ``uninstall()``, again when
the setting changes; installing twice is a no-op.

The handler only puts the signal number on a ``queue.SimpleQueue``, and a
daemon thread started at install builds and emits the event. A signal handler
runs in the main thread between two bytecodes of whatever it was doing: if that
code held the logging pipeline's lock (structlog's ``WriteLogger`` and
``PrintLogger`` take a plain ``threading.Lock`` per file), emitting from the
handler would wait for it forever. Starting a thread from the handler is not
safe either: ``Thread.start()`` takes threading's own plain lock, which the
interrupted code may hold while starting a thread. ``SimpleQueue.put`` is
reentrant C code, documented as safe where an interrupted call may be in
progress.

A handler the application installed is never replaced: the signal means what
the application said it means. conntrace then leaves it alone and says so once
(``conntrace_live_signal_refused``, warning, with the reason), as it does when
``install()`` runs outside the main thread, where Python cannot set a handler.
"""

from __future__ import annotations

import os
import queue
import signal
import threading
from typing import Any

from conntrace import conf, events, pool_forensics, process, records
from conntrace.names import Event, Level

THREAD_NAME = "conntrace-live-signal"
_STOP = -1  # put on the queue to end the thread


class _State:
    def __init__(self) -> None:
        self.signum: int | None = None  # the signal our handler is installed for
        self.queue: queue.SimpleQueue[int] = queue.SimpleQueue()
        self.thread: threading.Thread | None = None
        self.refused: set[tuple[int, str]] = set()


_state = _State()


def apply() -> None:
    """Install or remove the handler so that it matches the settings and ``install()`` state."""
    name = conf.get()["LIVE_SIGNAL"] if process.active else None
    signum = int(signal.Signals[name]) if name else None
    if signum == _state.signum:
        return
    remove()
    if signum is not None:
        _install(signum)


def installed_signal() -> int | None:
    """Return the signal the handler is installed for, or None."""
    return _state.signum


def _install(signum: int) -> None:
    if threading.current_thread() is not threading.main_thread():
        _refuse(signum, "install() ran outside the main thread, where Python cannot set a signal handler")
        return
    current = signal.getsignal(signum)
    if current is not signal.SIG_DFL:
        _refuse(signum, f"the application already handles it ({_describe(current)}): choose another signal")
        return
    _start_thread()
    signal.signal(signum, _on_signal)
    _state.signum = signum


def remove() -> None:
    """Put the default handler back (if ours is still there) and end the thread."""
    if _state.signum is None:
        return
    if threading.current_thread() is not threading.main_thread():
        return  # Python can change a handler from the main thread only: ours stays, harmless
    if signal.getsignal(_state.signum) is _on_signal:
        signal.signal(_state.signum, signal.SIG_DFL)
    _state.signum = None
    if _state.thread is not None:
        _state.queue.put(_STOP)
        _state.thread = None


def after_fork_in_child() -> None:
    """Start a thread in the child (the parent's is gone) at its first safe point.

    Called from the child's at-fork hook, which must take no lock: the start is
    queued with the deferred reports. A signal that comes before waits in the queue.
    """
    if _state.thread is None:
        return
    _state.thread = None
    _state.queue = queue.SimpleQueue()
    process.pending.append(_start_thread)


def _on_signal(signum: int, frame: Any) -> None:
    _state.queue.put(signum)


def _start_thread() -> None:
    if _state.thread is not None and _state.thread.is_alive():
        return
    _state.thread = threading.Thread(target=_serve, args=(_state.queue,), name=THREAD_NAME, daemon=True)
    _state.thread.start()


def _serve(requests: queue.SimpleQueue[int]) -> None:
    while True:
        signum = requests.get()
        if signum == _STOP:
            return
        try:
            # Info, or warning where the application keeps only warnings (production): an
            # operator who asked must get an answer. Nobody else ever causes this event.
            level = Level.INFO if events.enabled(Level.INFO) else Level.WARNING
            events.emit(level, Event.CONNECTIONS_LIVE, snapshot(signum))
        except Exception as exc:
            events.internal_error("live_signal", exc)


def snapshot(signum: int) -> dict[str, Any]:
    """Return what ``connections_live`` says: this process's open connections, and its pools if any."""
    if process.pending:
        process.flush_pending()
    connections = [record.as_dict() for record in records.registry.open_records()]
    fields: dict[str, Any] = {
        "pid": os.getpid(),
        "signal": signal.Signals(signum).name,
        "count": len(connections),
        "connections": connections,
    }
    pools = pool_forensics.all_pools()
    if pools:
        fields["pools"] = pools
    return fields


def _refuse(signum: int, reason: str) -> None:
    if (signum, reason) in _state.refused:
        return
    _state.refused.add((signum, reason))
    events.emit(
        Level.WARNING, Event.LIVE_SIGNAL_REFUSED, {"signal": signal.Signals(signum).name, "reason": reason}
    )


def _describe(handler: Any) -> str:
    if handler is signal.SIG_IGN:
        return "ignored"
    if handler is None:
        return "a handler installed outside Python"
    return getattr(handler, "__qualname__", type(handler).__name__)
