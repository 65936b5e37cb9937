"""Fault injection shared by the tests, for faults a real driver cannot produce on demand."""

from __future__ import annotations

from typing import Any


class FailingClose:
    """A driver connection whose close() closes the real one, then raises ``error``.

    No driver raises on close on demand (old psycopg2 behind pgbouncer did, once the
    server had gone); everything else is delegated to the real connection.
    """

    def __init__(self, real: Any, error: BaseException) -> None:
        self._real = real
        self._error = error

    def close(self) -> None:
        self._real.close()
        raise self._error

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real, name)
