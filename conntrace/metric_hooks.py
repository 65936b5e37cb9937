"""Where the metrics recorder plugs in: the modules that decide what happened tell it, when one is set.

``recorder`` is None unless ``CONNTRACE["METRICS"]`` is on (``metrics`` sets
it): the modules below ``metrics`` in the import stack call up through it,
each at a point that already runs once per connect, close, checkout or
anomaly, never per query. With metrics off each of those points pays one
global read.
"""

from __future__ import annotations

from typing import Any, Optional, Protocol

from conntrace.names import Event
from conntrace.records import ConnectionRecord


class Recorder(Protocol):
    """What ``metrics`` is told; every call comes from a point where taking a lock is safe."""

    def connected(self, wrapper: Any, record: ConnectionRecord, seconds: float) -> None:
        """A connect made a session (or a pool lent one) after ``seconds``."""

    def ended(self, record: ConnectionRecord) -> None:
        """A session opened in this process ended: closed, returned to its pool, or abandoned."""

    def anomaly(self, event: Event, alias: str) -> None:
        """Something conntrace reports as a warning or worse happened, shown or not."""

    def timed_out(self, alias: str) -> None:
        """A checkout from ``alias``'s pool timed out."""


recorder: Optional[Recorder] = None


def count_anomaly(event: Event, alias: str) -> None:
    """Count an anomaly for the metrics, before (and whatever) the log level decides about its event."""
    if recorder is not None:
        recorder.anomaly(event, alias)
