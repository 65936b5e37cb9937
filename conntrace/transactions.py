"""The line that began a connection's open transaction, for ``connection_lost``.

When a session is lost inside ``atomic()`` (an idle-in-transaction timeout,
typically), the line to fix is the ``with transaction.atomic():`` that began
the transaction, and no stack at the error shows it. ``Atomic.__enter__`` is
wrapped while conntrace is installed to keep a few raw frames (code objects
and offsets, never frames) on the ``Atomic`` object itself, which Django
keeps in ``connection.atomic_blocks`` while the block runs: once per
transaction or savepoint, never per query.
"""

from __future__ import annotations

from typing import Any, Optional

from django.db.transaction import Atomic

from conntrace import patching, process, stacks

STACK_ATTR = "_conntrace_entered"
# Frames kept per atomic entry: the with statement's line is the first or, through
# a decorator (contextlib's ContextDecorator), the second; a few more name its caller.
ENTRY_FRAMES = 6


def _wrap(original: Any) -> Any:
    def __enter__(self: Any) -> None:
        if process.active:
            try:
                self.__dict__[STACK_ATTR] = stacks.capture(ENTRY_FRAMES, skip=1)
            except Exception:
                pass
        return original(self)

    return __enter__


def install() -> None:
    """Wrap ``Atomic.__enter__`` once."""
    patching.wrap("__enter__", _wrap, Atomic)


def uninstall() -> None:
    """Restore Django's own ``Atomic.__enter__``."""
    patching.unwrap("__enter__", Atomic)


def started_in(wrapper: Any) -> Optional[str]:
    """Return the user's line of the outermost ``atomic()`` open on ``wrapper``, or None outside one."""
    blocks = getattr(wrapper, "atomic_blocks", None)
    if not blocks:
        return None
    stack = blocks[0].__dict__.get(STACK_ATTR)
    if not stack:
        return None
    return stacks.frame_filter().first_user_frame(stack)
