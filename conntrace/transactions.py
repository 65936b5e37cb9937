"""When and where a connection's open transaction began, for ``connection_lost`` and the watchdog.

When a session is lost inside ``atomic()`` (an idle-in-transaction timeout,
typically), or holds a transaction open for minutes, the line to fix is the
``with transaction.atomic():`` (or ``transaction.set_autocommit(False)``) that
began the transaction, and no stack at the error shows it. Both begin it the
same way: the outermost ``atomic()`` turns autocommit off through
``BaseDatabaseWrapper.set_autocommit(False)``, and turning it back on ends it.
That method is wrapped while conntrace is installed to keep, on the
connection's record, the time and a few raw frames (code objects and offsets,
never frames): once per transaction, never per query or savepoint.
"""

from __future__ import annotations

import time
from typing import Any, Optional

from conntrace import lifecycle, patching, process, stacks
from conntrace.names import State

# Frames kept per transaction: past set_autocommit's callers in Django (Atomic.__enter__,
# contextlib's ContextDecorator, transaction.set_autocommit), a few more name the caller's callers.
ENTRY_FRAMES = 8


def _wrap(original: Any) -> Any:
    def set_autocommit(self: Any, autocommit: bool, *args: Any, **kwargs: Any) -> Any:
        if not process.active:
            return original(self, autocommit, *args, **kwargs)
        if autocommit:
            try:
                return original(self, autocommit, *args, **kwargs)
            finally:
                record = lifecycle.record_of(self)
                if record is not None:
                    record.transaction_mono = None
                    record.transaction_stack = ()
        result = original(self, autocommit, *args, **kwargs)
        try:
            # After the original: it may have opened the session (and its record) first.
            record = lifecycle.record_of(self)
            if record is not None and record.state is State.OPEN and record.transaction_mono is None:
                record.transaction_stack = stacks.capture(ENTRY_FRAMES, skip=1)
                record.transaction_mono = time.monotonic()
        except Exception:
            pass
        return result

    return set_autocommit


def install() -> None:
    """Wrap ``BaseDatabaseWrapper.set_autocommit`` once."""
    patching.wrap("set_autocommit", _wrap)


def uninstall() -> None:
    """Restore Django's own ``set_autocommit``."""
    patching.unwrap("set_autocommit")


def started_in(wrapper: Any) -> Optional[str]:
    """Return the user's line that began the transaction open on ``wrapper``, or None outside one."""
    record = lifecycle.record_of(wrapper)
    return record.transaction_started_in() if record is not None else None
