"""Read conntrace's events from log files: JSON lines among any other lines, plain or gzip.

Takes files, directories (every file below, in sorted order) and ``-`` (stdin);
gzip is told by its magic bytes, not by the name. A line is parsed only when
it holds one of conntrace's event names: other lines are counted and skipped
for the price of a substring search, lines that look like an event but do not
parse (truncated, corrupt) are counted as corrupt. A damaged gzip file gives
the lines before the damage and one line saying where it broke. Streaming: one
line in memory at a time. Nothing here knows what is made of the events.
"""

from __future__ import annotations

import gzip
import io
import json
import os
import re
import sys
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import IO, Any

from conntrace.names import Event

GZIP_MAGIC = b"\x1f\x8b"
STDIN = "-"
# logrotate's names: web.log.1 / web.log.2.gz (larger: older), web.log-20261128(.gz) (dated).
_ROTATED = re.compile(r"^(?P<base>.+?)(?:\.(?P<number>\d{1,4})|-(?P<date>\d{8}(?:\d{2,6})?))$")
_COMPRESSED = (".gz", ".bz2", ".xz", ".zst")


def oldest_first(name: str) -> tuple[str, int, int, str]:
    """Sort key for the files of one directory: a log's rotated files oldest first, the live one last.

    Read in name order, ``web.log`` (the newest) would come before ``web.log.1``: a process's
    events would go back in time and its ``seq`` restart, which reads as a new process.
    """
    stem = name
    for suffix in _COMPRESSED:
        if stem.endswith(suffix):
            stem = stem[: -len(suffix)]
            break
    rotated = _ROTATED.match(stem)
    if rotated is None:
        return (stem, 1, 0, "")  # the live file: after its rotated ones
    if rotated["number"] is not None:
        return (rotated["base"], 0, -int(rotated["number"]), "")
    return (rotated["base"], 0, 0, rotated["date"])


EVENT_NAMES = frozenset(event.value for event in Event)
_decode = json.JSONDecoder().decode


class UnreadableInput(Exception):
    """A path given that does not exist or cannot be read: the message is one line."""


@dataclass
class ReadStats:
    """What was read: counts of lines by kind, and one line per damaged file."""

    files: int = 0
    lines: int = 0
    events: int = 0
    other: int = 0  # not conntrace's: skipped
    corrupt: int = 0  # looked like conntrace's but did not parse as one JSON object
    damaged: list[str] = field(default_factory=list)


def expand(paths: list[str]) -> list[tuple[str, bool]]:
    """Return ``(file, given)`` for the files ``paths`` name, directories walked in order (``oldest_first``).

    A path given that cannot be read raises ``UnreadableInput``; what a walk finds is read if it
    can be (``given`` False: a failure is one ``damaged`` line). Only regular files are walked
    into: a FIFO or a socket in a log directory would block the reader.
    """
    files: list[tuple[str, bool]] = []
    for path in paths:
        if path == STDIN:
            files.append((path, True))
        elif os.path.isdir(path):
            if not os.access(path, os.R_OK | os.X_OK):
                raise UnreadableInput(f"cannot read directory {path}")
            for directory, subdirectories, names in os.walk(path):
                subdirectories.sort()
                found = (os.path.join(directory, name) for name in sorted(names, key=oldest_first))
                files.extend((file, False) for file in found if os.path.isfile(file) or os.path.islink(file))
        elif not os.path.exists(path):
            raise UnreadableInput(f"no such file or directory: {path}")
        elif not os.access(path, os.R_OK):
            raise UnreadableInput(f"cannot read {path}: permission denied")
        else:
            files.append((path, True))
    # Files named one by one (a shell's web.log* gives web.log first) get the same order, in their slots.
    slots = [index for index, (file, given) in enumerate(files) if given and file != STDIN]
    ordered = sorted((files[index][0] for index in slots), key=_in_directory_oldest_first)
    for index, file in zip(slots, ordered, strict=True):
        files[index] = (file, True)
    return files


def _in_directory_oldest_first(path: str) -> tuple[str, tuple[str, int, int, str]]:
    return os.path.dirname(path), oldest_first(os.path.basename(path))


def _open(path: str) -> IO[bytes]:
    raw: IO[bytes] = sys.stdin.buffer if path == STDIN else open(path, "rb")  # noqa: SIM115
    buffered = raw if isinstance(raw, io.BufferedReader) else io.BufferedReader(raw)  # type: ignore[arg-type]
    if buffered.peek(2)[:2] == GZIP_MAGIC:
        return gzip.GzipFile(fileobj=buffered)  # type: ignore[return-value]
    return buffered


def is_candidate(raw: bytes) -> bool:
    """Return True if ``raw`` may be a conntrace event: every event name starts with one of these."""
    return (
        b'"connection_' in raw
        or b'"conntrace_' in raw
        or b'"pool_exhausted"' in raw
        or b'"asgi_persistent_connections"' in raw
    )


def parse(raw: bytes) -> Any:
    """Return the JSON object of one line, the JSON possibly after a prefix (a timestamp, a level)."""
    start = raw.find(b"{")
    return _decode((raw if start == 0 else raw[start:]).decode("utf-8"))


def events(paths: list[str], stats: ReadStats) -> Iterator[tuple[str, dict[str, Any]]]:
    """Yield ``(source, event)`` for every conntrace event in ``paths``, counting the rest in ``stats``."""
    for path, given in expand(paths):
        source = "<stdin>" if path == STDIN else path
        try:
            stream = _open(path)
        except OSError as exc:
            if given:
                raise UnreadableInput(f"cannot read {path}: {exc.strerror or exc}") from None
            stats.damaged.append(f"{source}: cannot read ({exc.strerror or exc}); left out")
            continue
        stats.files += 1
        number = 0
        try:
            for raw in stream:
                number += 1
                # A substring search spares json most other lines (see benchmarks/log_report.py).
                if not (b'"connection_' in raw or b'"conntrace_' in raw or is_candidate(raw)):
                    stats.other += 1
                    continue
                try:
                    event = parse(raw)
                except (ValueError, RecursionError):
                    stats.corrupt += 1
                    continue
                if type(event) is not dict or event.get("event") not in EVENT_NAMES:
                    stats.other += 1
                    continue
                stats.events += 1
                yield source, event
        except (OSError, EOFError, zlib.error) as exc:
            stats.damaged.append(
                f"{source}: damaged after line {number} ({exc}); the lines before it were read"
            )
        finally:
            stats.lines += number
            if path != STDIN:
                stream.close()
