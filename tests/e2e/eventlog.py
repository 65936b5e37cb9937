"""structlog to one JSON-lines file per process, each opened at that process's first event.

Opening lazily is what ``logging.FileHandler(delay=True)`` and many loggers do: in a
forked child the file then takes the lowest free descriptor at the moment of the
first event, which may be one that something else closed a moment before.
"""

from __future__ import annotations

import logging
import os
from typing import Any, TextIO

import structlog


class PerProcessFile:
    """A structlog logger that appends to ``<directory>/events-<pid>.jsonl``, opened at the first event."""

    def __init__(self, directory: str) -> None:
        self._directory = directory
        self._pid = 0
        self._file: TextIO | None = None

    def msg(self, message: str) -> None:
        if self._pid != os.getpid():
            self._pid = os.getpid()
            path = os.path.join(self._directory, f"events-{self._pid}.jsonl")
            self._file = open(path, "a", buffering=1)  # noqa: SIM115 (kept open for the process)
        assert self._file is not None
        self._file.write(message + "\n")

    debug = info = warning = warn = error = critical = exception = fatal = log = msg


def configure(directory: str, level: int = logging.INFO) -> None:
    """Have structlog render JSON lines (level, timestamp) from ``level`` up, one lazy file per process."""
    logger = PerProcessFile(directory)

    def factory(*args: Any) -> PerProcessFile:
        return logger

    structlog.configure(
        processors=[
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso"),
            structlog.processors.JSONRenderer(),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=factory,
        cache_logger_on_first_use=False,
    )
